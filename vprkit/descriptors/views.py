"""Query views and the benchmark's test-time query methods, computed from stored descriptors.

The Deep Visual Geo-localization Benchmark evaluates queries in six ways (its ``--test_method``).
Four of them need their own query images, which ``vprkit extract --views`` runs through the
network once and stores (``VIEWS``, defined relative to the extraction's ``--resize`` (H, W)):

- ``hard_resize``: the image resized to H x W (always stored: the database and the default
  method use it);
- ``single_query``: the shorter side resized to min(H, W), keeping the aspect ratio;
- ``central_crop``: scaled (nearest neighbour, by the factor that makes it cover H x W) and the
  central H x W crop taken;
- ``five_crops``: the shorter side resized to min(H, W), then five square crops of that side in
  torchvision's ``five_crop`` order (top-left, top-right, bottom-left, bottom-right, centre):
  five stored rows per query, row ``5 * q + c``.

The six methods (``TEST_METHODS``) then work from the file alone, at any scale or pyramid:
``hard_resize``, ``single_query`` and ``central_crop`` search their view's rows;
``five_crops`` searches the mean of the five crop descriptors (not normalised again);
``nearest_crop`` searches every crop and merges the candidates by distance, keeping each
database image once, at its closest; ``maj_voting`` first lowers the distance of database images
that several crops retrieve (the benchmark's ``top_n_voting`` at top-1, top-5 and top-10, by
``majority_weight * count / n``), then merges as ``nearest_crop``. Each crop keeps ``k =
max(recalls)`` candidates (the benchmark keeps 20, the largest of its default recalls).

This module is numpy only; the image side of the views is ``vprkit.data.images.view_images``.
"""

from __future__ import annotations

import numpy as np

from vprkit.choices import DEFAULT_MAJORITY_WEIGHT, TEST_METHODS, VIEWS
from vprkit.errors import VprkitError

__all__ = [
    "DEFAULT_MAJORITY_WEIGHT",
    "HARD_RESIZE",
    "TEST_METHODS",
    "VIEWS",
    "check_method",
    "crops_per_query",
    "merge_maj_voting",
    "merge_nearest_crop",
    "merge_results",
    "parse_views",
    "query_rows_for",
    "top_n_voting",
]

HARD_RESIZE = "hard_resize"
VOTING_DEPTHS = (1, 5, 10)  # top_n_voting at top-1, top-5 and top-10


def parse_views(text: str) -> tuple[str, ...]:
    """``"central_crop,five_crops"`` -> ``("hard_resize", "central_crop", "five_crops")``: the
    views to extract, ``hard_resize`` always first."""
    names = [v.strip() for v in str(text).split(",") if v.strip()]
    unknown = [v for v in names if v not in VIEWS]
    if not names or unknown:
        raise VprkitError(
            f"unknown view {(unknown or [text])[0]!r}; choose from {', '.join(VIEWS)} (comma-separated)"
        )
    return (HARD_RESIZE, *dict.fromkeys(v for v in names if v != HARD_RESIZE))


def check_method(method: str) -> str:
    """``method`` when it is a test method, else one clear error listing them."""
    if method not in TEST_METHODS:
        raise VprkitError(f"unknown test method {method!r}; choose one of {', '.join(TEST_METHODS)}")
    return method


def crops_per_query(method: str) -> int:
    """Rows the search runs per query: 5 for ``nearest_crop`` and ``maj_voting``, else 1."""
    return 5 if method in ("nearest_crop", "maj_voting") else 1


def query_rows_for(method: str, view_rows: np.ndarray) -> np.ndarray:
    """The rows searched for ``method``, from its view's stored rows (``five_crops``: the mean
    of each query's five crops, not normalised again; otherwise the rows themselves)."""
    if method != "five_crops":
        return view_rows
    n = len(view_rows) // 5
    return view_rows.reshape(n, 5, -1).mean(axis=1, dtype=np.float64).astype(np.float32)


def _merge(distances: np.ndarray, predictions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One query's candidates of all crops, by distance, each database image once (at its
    closest), the first k; padded with -1 / inf where fewer remain."""
    order = np.argsort(distances, kind="stable")  # ties keep the crops' order
    preds, dists = predictions[order], distances[order]
    valid = preds >= 0
    preds, dists = preds[valid], dists[valid]
    _, first = np.unique(preds, return_index=True)
    keep = np.sort(first)[:k]
    out_p = np.full(k, -1, dtype=np.int64)
    out_d = np.full(k, np.inf, dtype=np.float32)
    out_p[: len(keep)], out_d[: len(keep)] = preds[keep], dists[keep]
    return out_d, out_p


def _reshaped(distances: np.ndarray, predictions: np.ndarray, k: int):
    if (
        distances.shape != predictions.shape
        or distances.ndim != 2
        or distances.shape[1] != k
        or len(distances) % 5
    ):
        raise ValueError(f"expected (5 x queries, {k}) search results, got {distances.shape}")
    n = len(distances) // 5
    return distances.reshape(n, 5, k).astype(np.float32), predictions.reshape(n, 5, k)


def merge_nearest_crop(
    distances: np.ndarray, predictions: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_crop``: the (5 N, k) search results of the crops (row ``5 q + c``) merged into
    (N, k) distances and predictions."""
    d, p = _reshaped(distances, predictions, k)
    merged = [_merge(d[q].ravel(), p[q].ravel(), k) for q in range(len(d))]
    return _stack(merged, k)


def top_n_voting(predictions: np.ndarray, distances: np.ndarray, n: int, weight: float) -> None:
    """The benchmark's vote of one query, in place: among the first ``n`` candidates of its five
    crops (``predictions``, ``distances`` of shape (5, k)), each database image that appears
    ``count > 1`` times has its distance lowered by ``weight * count / n`` where it appears."""
    columns = slice(0, 1) if n == 1 else slice(0, n)
    window = predictions[:, columns]
    values, counts = np.unique(window[window >= 0], return_counts=True)
    for value, count in zip(values[counts > 1], counts[counts > 1], strict=True):
        distances[:, columns][window == value] -= weight * count / n


def merge_maj_voting(
    distances: np.ndarray, predictions: np.ndarray, k: int, weight: float = DEFAULT_MAJORITY_WEIGHT
) -> tuple[np.ndarray, np.ndarray]:
    """``maj_voting``: the crops' (5 N, k) results voted on (``top_n_voting`` at top-1, top-5
    and top-10), then merged as ``merge_nearest_crop``; the distances returned are the voted
    ones."""
    d, p = _reshaped(distances, predictions, k)
    merged = []
    for q in range(len(d)):
        dq = d[q].copy()
        for depth in VOTING_DEPTHS:
            top_n_voting(p[q], dq, depth, weight)
        merged.append(_merge(dq.ravel(), p[q].ravel(), k))
    return _stack(merged, k)


def _stack(merged, k: int) -> tuple[np.ndarray, np.ndarray]:
    if not merged:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    return np.stack([m[0] for m in merged]), np.stack([m[1] for m in merged])


def merge_results(
    method: str,
    distances: np.ndarray,
    predictions: np.ndarray,
    k: int,
    majority_weight: float = DEFAULT_MAJORITY_WEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """The per-query (N, k) results of ``method`` from the search of its rows."""
    if method == "nearest_crop":
        return merge_nearest_crop(distances, predictions, k)
    if method == "maj_voting":
        return merge_maj_voting(distances, predictions, k, majority_weight)
    return distances, predictions
