"""Exact k-nearest-neighbour search (squared L2) streamed over database blocks.

Two implementations with the same results, chosen by ``device``:

- ``faiss_blocked_search`` (CPU, the default there): faiss searches each block in place and keeps
  a running top-k across blocks (``faiss.ResultHeap``);
- ``torch_blocked_search`` (any torch device, used on CUDA): each block is moved to the device
  and searched in tiles, ``||q||^2 + ||d||^2 - 2 q.d`` (clamped at 0, as faiss does) by a matmul,
  ``torch.topk`` per tile, merged into the running top-k.

Memory is bounded by a block (and, on the device, a tile of distances) plus the query set, not by
the database. Order: ascending distance, equal distances by ascending database index, in both
implementations (exact ties, e.g. duplicate rows, are ranked alike; distances that differ by
float round-off only may be ranked differently by the two, as by any two BLAS libraries).
Where the database has fewer than k rows the missing entries are -1 with infinite distance.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

TILE_ELEMENTS = 1 << 24  # distances computed at a time by the torch path (64 MiB of float32)
QUERY_CHUNK = 4096  # queries per tile of the torch path


def search_device(device: Any = "auto") -> Any:
    """``"cpu"`` (faiss) or the ``torch.device`` that exact search runs on for ``device``:
    ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.

    ``"cpu"`` is answered without importing torch; a CUDA device without CUDA is a
    ``VprkitError``.
    """
    if str(device) == "cpu":
        return "cpu"
    from vprkit.devices import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else device
    return "cpu" if dev.type == "cpu" else dev


def blocked_search(
    queries: np.ndarray, blocks: Iterable[tuple[int, Any]], k: int, device: Any = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (distances, database indices) of each query over ``blocks`` of (start, rows).

    Indices are global row numbers; where the database has fewer than k rows the missing
    entries are -1 with infinite distance. ``device`` (see ``search_device``): faiss on a CPU,
    ``torch_blocked_search`` on a GPU.
    """
    dev = search_device(device)
    if dev == "cpu":
        return faiss_blocked_search(queries, blocks, k)
    return torch_blocked_search(queries, blocks, k, dev)


def faiss_blocked_search(
    queries: np.ndarray, blocks: Iterable[tuple[int, Any]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``blocked_search`` with faiss on the CPU."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k)
    dim = queries.shape[1]
    for start, rows in blocks:
        rows = np.ascontiguousarray(_numpy(rows), dtype=np.float32)
        if rows.shape[1] != dim:
            raise ValueError(f"database rows have {rows.shape[1]} dimensions, queries {dim}")
        # faiss.knn searches the block in place (an IndexFlatL2 would copy it)
        dist, ids = faiss.knn(queries, rows, min(k, len(rows)))
        ids = np.where(ids >= 0, ids + start, -1)
        heap.add_result(dist, ids)
        del rows  # release this block before the next one is read
    heap.finalize()
    dist, ids = heap.D, heap.I
    dist = np.where(ids < 0, np.inf, dist)
    return dist, ids


def torch_blocked_search(
    queries: np.ndarray,
    blocks: Iterable[tuple[int, Any]],
    k: int,
    device: Any = "cpu",
    tile_elements: int = TILE_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray]:
    """``blocked_search`` with torch on ``device`` (a name or ``torch.device``).

    Blocks may be numpy arrays (of any float dtype: float16 rows travel as float16 and are
    widened on the device) or tensors, e.g. a database kept on the device. At most
    ``tile_elements`` distances are held at a time.
    """
    import torch

    dev = torch.device(device)
    q_all = _tensor(np.asarray(queries, dtype=np.float32)).to(dev)
    n_q, dim = q_all.shape
    best_d = torch.full((n_q, k), float("inf"), device=dev)
    best_i = torch.full((n_q, k), -1, dtype=torch.int64, device=dev)
    chunk = max(1, min(n_q, QUERY_CHUNK))
    with full_fp32_matmul(), torch.no_grad():
        q_norms = (q_all * q_all).sum(1)
        for start, rows in blocks:
            block = (rows if isinstance(rows, torch.Tensor) else _tensor(rows)).to(dev).float()
            if block.shape[1] != dim:
                raise ValueError(f"database rows have {block.shape[1]} dimensions, queries {dim}")
            d_norms = (block * block).sum(1)
            step = max(1, tile_elements // chunk)
            for s in range(0, len(block), step):
                tile, tile_norms = block[s : s + step], d_norms[s : s + step]
                for a in range(0, n_q, chunk):
                    top_d, top_i = _tile_top_k(
                        q_all[a : a + chunk], q_norms[a : a + chunk], tile, tile_norms, k
                    )
                    best_d[a : a + chunk], best_i[a : a + chunk] = _merge(
                        best_d[a : a + chunk], best_i[a : a + chunk], top_d, top_i + (start + s), k
                    )
            del block, d_norms  # release this block before the next one is read
    ids = best_i.cpu().numpy()
    dist = np.where(ids < 0, np.inf, best_d.cpu().numpy()).astype(np.float32)
    return dist, ids


def _tile_top_k(q, q_norms, tile, tile_norms, k: int):
    """The k smallest squared distances of each query to ``tile`` and their local indices (in
    no order; of several distances equal to the k-th, those of the lowest indices)."""
    import torch

    dist = torch.addmm(tile_norms.unsqueeze(0), q, tile.T, alpha=-2.0)
    dist.add_(q_norms.unsqueeze(1)).clamp_(min=0.0)
    kt = min(k, dist.shape[1])
    top_d, top_i = torch.topk(dist, kt, dim=1, largest=False, sorted=False)
    # topk picks any of several distances equal to the k-th; rows with such a tie at the cut are
    # redone with a stable sort, which keeps the lowest indices
    cut = top_d.max(dim=1).values
    tied = ((dist <= cut.unsqueeze(1)).sum(dim=1) > kt).nonzero().squeeze(1)
    if len(tied):
        sorted_d, sorted_i = torch.sort(dist[tied], dim=1, stable=True)
        top_d[tied], top_i[tied] = sorted_d[:, :kt], sorted_i[:, :kt]
    return top_d, top_i


def _merge(best_d, best_i, new_d, new_i, k: int):
    """The first k by (distance, index) of the running top-k and a tile's candidates."""
    import torch

    ids, order = torch.sort(torch.cat([best_i, new_i], dim=1), dim=1)
    dist = torch.cat([best_d, new_d], dim=1).gather(1, order)
    dist, order = torch.sort(dist, dim=1, stable=True)  # equal distances stay by index
    return dist[:, :k], ids.gather(1, order[:, :k])


def _tensor(rows: np.ndarray):
    """A CPU tensor sharing ``rows`` where it can (a read-only array is copied first)."""
    import torch

    rows = np.ascontiguousarray(rows)
    return torch.from_numpy(rows if rows.flags.writeable else rows.copy())


def _numpy(rows: Any) -> np.ndarray:
    """Rows as a numpy array (tensors, e.g. a database kept on a device, are copied back)."""
    if isinstance(rows, np.ndarray):
        return rows
    return rows.detach().cpu().numpy() if hasattr(rows, "detach") else np.asarray(rows)


@contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """Float32 matmuls in full precision (no TF32 or bfloat16) inside; the setting is restored."""
    import torch

    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def exact_search(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One-shot exact search over an in-memory database (reference for tests and benchmarks)."""
    index = faiss.IndexFlatL2(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
