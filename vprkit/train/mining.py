"""Triplet mining as in the Deep Visual Geo-localization Benchmark.

Each triplet group is one query, its best positive (the database image within 10 m that is
nearest in feature space) and ``negs`` hard negatives (the nearest in feature space among
candidates outside 25 m). Candidates per mining method:

- ``partial`` (default): ``neg_samples`` database images drawn at random for each cache refresh;
  features are computed only for those, the positives and the sampled queries.
- ``full``: ``neg_samples`` random database images plus the query's previous negatives, with
  features of the whole database.
- ``random``: random negatives outside 25 m (features only for positives and queries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vprkit.data.datasets import EVAL_POSITIVE_RADIUS, TRAIN_POSITIVE_RADIUS, Split, positives_within
from vprkit.errors import ParameterError, VprkitError
from vprkit.train.neighbours import Shortlists, reference_nearest

MINING = ("partial", "full", "random")
# full mining computes fast distances query by query, for its own candidates only, when the
# database has more than this many times its --neg-samples (a matrix product with every row
# costs less below)
PER_QUERY = 16


@dataclass
class TripletSource:
    """The training split with its positives; queries without a 10 m positive are left out."""

    split: Split
    queries: np.ndarray  # indices of usable queries
    hard: list[np.ndarray]  # per query (all queries): database within 10 m
    soft: list[np.ndarray]  # per query: database within 25 m (never negatives)

    @classmethod
    def from_split(
        cls,
        split: Split,
        hard_radius: float = TRAIN_POSITIVE_RADIUS,
        soft_radius: float = EVAL_POSITIVE_RADIUS,
    ) -> TripletSource:
        hard = positives_within(split.database.utm, split.queries.utm, hard_radius)
        soft = positives_within(split.database.utm, split.queries.utm, soft_radius)
        usable = np.array([i for i, h in enumerate(hard) if len(h)], dtype=np.int64)
        if len(usable) == 0:
            raise VprkitError(
                f"no {split.name} query has a database image within {hard_radius:g} m: nothing to train on"
            )
        return cls(split, usable, hard, soft)

    @property
    def dropped(self) -> int:
        return len(self.split.queries) - len(self.queries)


def _rows(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in the sorted array ``sorted_ids`` (which holds them all)."""
    return np.searchsorted(sorted_ids, ids)


def mine(
    source: TripletSource,
    query_ids: np.ndarray,
    features,
    method: str,
    negs: int,
    neg_samples: int,
    rng: np.random.Generator,
    neg_cache: dict[int, np.ndarray] | None = None,
    device: torch.device | None = None,
) -> np.ndarray:
    """Triplet groups (n, 2 + negs) of [query, positive, negative...] indices.

    ``features(db_indices, query_indices) -> (db_feats, query_feats)`` computes descriptors with
    the current model; it is called once, for exactly the images this method needs. The nearest
    neighbours are those of a stable sort of float32 squared distances, found by
    ``vprkit.train.neighbours.Shortlists`` (faiss, or torch on a CUDA ``device``).
    """
    if method not in MINING:
        raise VprkitError(f"unknown mining {method!r}; choose one of {', '.join(MINING)}")
    n_db = len(source.split.database)
    neg_samples = min(neg_samples, n_db)
    positives = np.unique(np.concatenate([source.hard[q] for q in query_ids]))
    if method == "partial":
        sampled = rng.choice(n_db, size=neg_samples, replace=False)
        needed = np.union1d(sampled, positives)
    elif method == "full":
        needed = np.arange(n_db)
    else:
        needed = positives
    db_feats, q_feats = features(needed, query_ids)
    columns = np.sort(sampled) if method == "partial" else needed  # negative candidates
    search = None
    if method == "partial":
        search = Shortlists(q_feats, db_feats[_rows(needed, columns)], device)
    elif method == "full":  # each query its own candidates: pair by pair on a large database
        search = Shortlists(q_feats, db_feats, device, per_query=n_db > PER_QUERY * neg_samples)
    groups = []
    for qi, q in enumerate(query_ids):
        hard = source.hard[q]
        pos = hard[reference_nearest(q_feats[qi], db_feats[_rows(needed, hard)], 1)[0]]
        if method == "partial":
            candidates = sampled
        elif method == "full":
            candidates = rng.choice(n_db, size=neg_samples, replace=False)
            if neg_cache is not None and q in neg_cache:
                candidates = np.union1d(candidates, neg_cache[q])
        else:
            candidates = np.arange(n_db)
        candidates = np.setdiff1d(candidates, source.soft[q])
        if len(candidates) < negs:
            raise ParameterError(
                "negatives",
                f"query {source.split.queries.names[q]} has only "
                f"{len(candidates)} negative candidates (outside 25 m) for "
                f"negatives={negs}; use fewer negatives or more neg_samples / "
                "database images",
                "neg_samples",
            )
        if search is None:
            chosen = rng.choice(candidates, size=negs, replace=False)
        else:
            chosen = candidates[search.nearest(qi, _rows(columns, candidates), negs)]
            if method == "full" and neg_cache is not None:
                neg_cache[int(q)] = chosen
        groups.append(np.concatenate([[q, pos], chosen]))
    return np.asarray(groups, dtype=np.int64)
