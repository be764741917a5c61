"""Nearest neighbours for triplet mining: the reference ranking's exact picks, found fast.

The reference ranking (``reference_nearest``) orders candidates by the float32 squared distance
``((c - q) ** 2).sum()`` as numpy computes it, ties kept in candidate order (a stable sort).
Computing that for every query and every candidate is slow for wide descriptors (NetVLAD's
16384 dimensions), so ``Shortlists`` first computes fast distances, which round differently:

- by matrix product (``|q|^2 + |c|^2 - 2 q.c``) of a block of queries with all the candidate
  columns (faiss on a CPU, torch on the training device for CUDA), when the queries share their
  candidates (partial mining) or the columns are few;
- or, for candidates of each query's own (full mining on a large database), pair by pair with
  faiss's direct ``(c - q)^2`` sums over those candidates only.

For each query it keeps every candidate whose fast distance lies within a proven error bound of
the k-th smallest one, a shortlist that always holds the reference's k picks, and ranks only those
with the reference formula. The picks are therefore the reference's, ties included; float32
features are required (others, and non-finite values, go through the reference ranking directly).

Bounds: with float32 unit roundoff u and g(n) = n u / (1 - n u), a sum of n terms is within
g(n) times the sum of their magnitudes of the exact value in any order. The reference and the
pairwise distances are then within A t of the exact distance t, A = g(D + 3); the matrix-product
distance within B = g(D + 2) (|q| + max |c|)^2. A candidate the reference ranks among its k
nearest has a fast distance of at most F (d_k + B) + B, with d_k the k-th smallest fast distance,
F = (1 + A) / (1 - A) for the matrix product (B = 0 and F = ((1 + A) / (1 - A))^2 pair by pair).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

BLOCK_ENTRIES = 1 << 23  # fast distances held at a time (32 MiB of float32)
_U = 2.0**-24  # unit roundoff of float32


def reference_nearest(query: np.ndarray, feats: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` rows of ``feats`` nearest to ``query`` (the reference ranking)."""
    dist = ((feats - query) ** 2).sum(axis=1)
    return np.argsort(dist, kind="stable")[:k]


def _gamma(n: int) -> float:
    return n * _U / (1 - n * _U)


@contextmanager
def _ieee_float32():
    """Matrix products in full float32 (no TF32 or bfloat16 passes), as the bound assumes."""
    precision, tf32 = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = tf32


class Shortlists:
    """The reference's nearest columns for each query of ``queries`` among ``columns`` (rows of
    database features).

    ``per_query``: fast distances for each query's own candidates (faiss, pair by pair) instead
    of a matrix product of blocks of queries with every column; ``engine`` of the matrix
    product: ``"faiss"`` or ``"torch"`` (on ``device``), None: torch on a CUDA device, else faiss.
    """

    def __init__(
        self,
        queries: np.ndarray,
        columns: np.ndarray,
        device: torch.device | None = None,
        engine: str | None = None,
        per_query: bool = False,
    ):
        self.queries, self.columns = np.ascontiguousarray(queries), np.ascontiguousarray(columns)
        queries, columns = self.queries, self.columns
        self.device = device if device is not None else torch.device("cpu")
        if engine is None:
            engine = "torch" if self.device.type == "cuda" else "faiss"
        self.per_query = per_query
        self.fast = (
            queries.dtype == np.float32
            and columns.dtype == np.float32
            and len(columns) > 0
            and bool(np.isfinite(queries).all())
            and bool(np.isfinite(columns).all())
        )
        self.block = max(1, BLOCK_ENTRIES // max(1, len(columns)))
        self._start, self._rows = -1, np.empty((0, len(columns)), dtype=np.float32)
        self._on_device: torch.Tensor | None = None
        if not self.fast:
            return
        dim = queries.shape[1]
        relative = _gamma(dim + 3)  # A
        self._factor = (1 + relative) / (1 - relative) * (1 + 1e-9)
        if per_query:
            self._factor *= self._factor
            self._absolute = np.zeros(len(queries))
        else:
            q_norms = np.linalg.norm(queries.astype(np.float64), axis=1)
            c_max = float(np.linalg.norm(columns.astype(np.float64), axis=1).max())
            self._absolute = _gamma(dim + 2) * (q_norms + c_max) ** 2  # B per query
            if engine == "torch":
                self._on_device = torch.from_numpy(columns).to(self.device)

    def _fast(self, qi: int, candidates: np.ndarray) -> np.ndarray:
        """Fast squared distances of query ``qi`` to the ``candidates`` columns."""
        if self.per_query:
            import faiss

            out = np.empty(len(candidates), dtype=np.float32)
            at = np.full(len(candidates), qi, dtype=np.int64)
            cols = np.ascontiguousarray(candidates, dtype=np.int64)
            faiss.pairwise_indexed_L2sqr(  # type: ignore[attr-defined]
                self.queries.shape[1],
                len(cols),
                faiss.swig_ptr(self.queries),
                faiss.swig_ptr(at),
                faiss.swig_ptr(self.columns),
                faiss.swig_ptr(cols),
                faiss.swig_ptr(out),
            )
            return out
        if not self._start <= qi < self._start + len(self._rows):
            self._start = qi - qi % self.block
            block = np.ascontiguousarray(self.queries[self._start : self._start + self.block])
            self._rows = self._distances(block)
        return self._rows[qi - self._start][candidates]

    def _distances(self, block: np.ndarray) -> np.ndarray:
        if self._on_device is None:
            import faiss

            return faiss.pairwise_distances(block, self.columns)
        with torch.no_grad(), _ieee_float32():
            q = torch.from_numpy(block).to(self.device)
            c = self._on_device
            d = (q * q).sum(1, keepdim=True) + (c * c).sum(1)[None] - 2 * (q @ c.T)
            return d.cpu().numpy()

    def nearest(self, qi: int, candidates: np.ndarray, k: int) -> np.ndarray:
        """Positions in ``candidates`` (column indices, in the reference's candidate order) of
        the ``k`` columns nearest to query ``qi``, nearest first, as the reference ranks them."""
        query = self.queries[qi]
        if not self.fast or len(candidates) <= 2 * k + 8:
            return reference_nearest(query, self.columns[candidates], k)
        fast = self._fast(qi, candidates)
        kth = np.float64(np.partition(fast, k - 1)[k - 1])
        limit = self._factor * (kth + self._absolute[qi]) + self._absolute[qi]  # float64
        if not (np.isfinite(limit) and np.isfinite(fast).all()):  # overflow: rank them all
            return reference_nearest(query, self.columns[candidates], k)
        keep = np.flatnonzero(fast <= limit)  # ascending: the candidates' order is kept
        return keep[reference_nearest(query, self.columns[candidates[keep]], k)]
