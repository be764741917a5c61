"""Exact k-nearest-neighbour search (squared L2) streamed over database blocks.

faiss searches each block with a flat index and keeps a running top-k across blocks
(``faiss.ResultHeap``), so memory is bounded by the block and the query set, not the database.
"""

from __future__ import annotations

from collections.abc import Iterable

import faiss
import numpy as np


def blocked_search(
    queries: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (distances, database indices) of each query over ``blocks`` of (start, rows).

    Indices are global row numbers; where the database has fewer than k rows the missing
    entries are -1 with infinite distance.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k)
    dim = queries.shape[1]
    for start, rows in blocks:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
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


def exact_search(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One-shot exact search over an in-memory database (reference for tests and benchmarks)."""
    index = faiss.IndexFlatL2(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
