"""Independent oracle of the Deep Visual Geo-localization Benchmark's six test-time query methods.

This is a re-implementation, written for the tests, of what ``--test_method`` does in
gmberton/deep-visual-geo-localization-benchmark (``datasets_ws.BaseDataset.__getitem__`` /
``_test_query_transform`` and ``test.test`` / ``test.top_n_voting``): ``hard_resize``,
``single_query``, ``central_crop``, ``five_crops``, ``nearest_crop`` and ``maj_voting``.
It imports nothing from ``vprkit`` on purpose, so that vprkit can be compared against it.

Semantics reproduced (and deliberately kept, even where they look odd):

* Every image goes through ToTensor + ImageNet Normalize first; the resize / crop is applied to
  the *normalised* tensor, with torchvision's tensor defaults (bilinear; ``antialias`` is left
  at the installed torchvision's default - True since torchvision 0.17, effectively False in
  the torchvision versions the benchmark was written for).
* ``central_crop`` rescales with ``torch.nn.functional.interpolate(scale_factor=...)`` in its
  default ``nearest`` mode.  The output size is ``floor(side * scale)``, which for some sizes
  (e.g. a 94-pixel-high query with a 96-pixel target) is one pixel short; ``center_crop`` then
  pads with zeros, so the crop has a zero row / column.
* The database always uses ``hard_resize``; ``single_query`` extracts queries one at a time.
* ``five_crops`` averages the five crop descriptors (no re-normalisation); ``nearest_crop`` and
  ``maj_voting`` keep all five (row ``5 * i + c``) and merge the faiss results per query.
* The merges use ``np.argsort`` with its default (unstable) kind, so the order of exact ties
  between different database images is whatever numpy's default sort gives on this machine.
* ``top_n_voting`` subtracts ``majority_weight * count / n`` through the chained expression
  ``distances[:, selected][mask] -= ...``.  ``distances[:, selected]`` is basic indexing (a view)
  both for ``selected = 0`` and for a slice, so the edit really lands in ``distances``.  The
  subtrahend is a *numpy* float64 scalar (``count`` comes from ``np.unique``); under numpy >= 2
  (NEP 50) the float32 distances are therefore updated as ``float32(float64(d) - delta)``,
  whereas numpy 1.x did the arithmetic in float32.  This module does exactly what the
  benchmark's expression does under the installed numpy.
* ``n`` stays 1 / 5 / 10 for the three votes even when k is smaller than the vote window.

Generalisations (the benchmark hard-codes 20 = max of its default recall values and would fail
otherwise): the merges work for any ``k = max(recall_values)``, and where fewer than ``k``
distinct predictions remain (database smaller than ``k``) the row is padded with ``-1``.  Faiss
itself returns label ``-1`` (distance ``float32`` max) when the database has fewer than ``k``
rows; such ``-1`` labels take part in the merge like any other label, as in the benchmark.
Other small modernisations: ``np.isin`` instead of the removed ``np.in1d``, float64 instead of
the removed ``np.float``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import faiss
import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from sklearn.neighbors import NearestNeighbors

METHODS = ("hard_resize", "single_query", "central_crop", "five_crops", "nearest_crop", "maj_voting")
CROP_METHODS = ("five_crops", "nearest_crop", "maj_voting")
MULTI_CROP_METHODS = ("nearest_crop", "maj_voting")
POSITIVE_DIST_THRESHOLD = 25.0  # the benchmark's --val_positive_dist_threshold default (metres)

_BASE_TRANSFORM = T.Compose(
    [
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


def load_normalized(path: str | os.PathLike) -> torch.Tensor:
    """Open an image with PIL, convert to RGB, apply ToTensor and ImageNet Normalize: (3, H, W)."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    return _BASE_TRANSFORM(rgb)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown test method {method!r}; expected one of {METHODS}")


def query_transform(img: torch.Tensor, method: str, resize: tuple[int, int]) -> torch.Tensor:
    """Apply ``method`` to a normalised (3, H, W) tensor.

    Returns (3, h, w) for hard_resize / single_query / central_crop and (5, 3, s, s) with
    s = min(resize), crops in torchvision's order (tl, tr, bl, br, center), for the crop methods.
    """
    _check_method(method)
    target = [int(resize[0]), int(resize[1])]
    if method == "hard_resize":
        return TF.resize(img, target)
    if method == "single_query":
        return TF.resize(img, min(target))
    if method == "central_crop":
        height, width = img.shape[-2:]
        scale = max(target[0] / height, target[1] / width)
        scaled = torch.nn.functional.interpolate(img.unsqueeze(0), scale_factor=scale).squeeze(0)
        return TF.center_crop(scaled, target)
    side = min(target)
    square = TF.resize(img, side)
    return torch.stack(list(TF.five_crop(square, side)))


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _describe(model: torch.nn.Module, batch: list[torch.Tensor], device: torch.device) -> np.ndarray:
    return model(torch.stack(batch).to(device)).cpu().numpy()


def _database_features(model, db_paths, resize, batch_size, device) -> list[np.ndarray]:
    chunks = []
    for start in range(0, len(db_paths), batch_size):
        batch = [
            query_transform(load_normalized(p), "hard_resize", resize)
            for p in db_paths[start : start + batch_size]
        ]
        chunks.append(_describe(model, batch, device))
    return chunks


def _query_features(model, q_paths, method, resize, batch_size, device) -> list[np.ndarray]:
    step = 1 if method == "single_query" else batch_size
    chunks = []
    for start in range(0, len(q_paths), step):
        batch = [query_transform(load_normalized(p), method, resize) for p in q_paths[start : start + step]]
        if method in CROP_METHODS:
            # (bs, 5, 3, s, s) -> (5 * bs, 3, s, s): query i's crops are rows 5 * i .. 5 * i + 4
            crops = torch.cat(batch)
            features = model(crops.to(device))
            if method == "five_crops":
                features = features.reshape(len(batch), 5, features.shape[-1]).mean(1)
            chunks.append(features.cpu().numpy())
        else:
            chunks.append(_describe(model, batch, device))
    return chunks


def _stack(chunks: list[np.ndarray]) -> np.ndarray:
    if not chunks:
        raise ValueError("no images found")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def benchmark_features(
    model: torch.nn.Module,
    db_paths: Sequence[str | os.PathLike],
    q_paths: Sequence[str | os.PathLike],
    method: str,
    resize: tuple[int, int],
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors as the benchmark's ``test`` computes them (model in eval mode, no grad).

    Returns ``(database, queries)``, float32: database (Ndb, D), always hard_resize in batches of
    ``batch_size``; queries (Nq, D) for hard_resize / single_query (batch 1) / central_crop /
    five_crops (mean of the 5 crops), or (5 * Nq, D) for nearest_crop / maj_voting.
    """
    _check_method(method)
    model = model.eval()
    device = _model_device(model)
    db_paths, q_paths = list(db_paths), list(q_paths)
    with torch.no_grad():
        database = _stack(_database_features(model, db_paths, resize, batch_size, device))
        queries = _stack(_query_features(model, q_paths, method, resize, batch_size, device))
    return database, queries


def _dedup_closest(dists: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """Sort one query's candidates by distance, keep the first (closest) copy of each, first k."""
    order = np.argsort(dists)  # default kind (quicksort / SIMD), not stable, as in the benchmark
    ranked = preds[order]
    _, first = np.unique(ranked, return_index=True)
    kept = ranked[np.sort(first)][:k]
    out = np.full(k, -1, dtype=preds.dtype)
    out[: len(kept)] = kept
    return out


def _as_crops(distances: np.ndarray, predictions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances, predictions = np.asarray(distances), np.asarray(predictions)
    if distances.shape != predictions.shape or distances.ndim != 2 or distances.shape[0] % 5:
        raise ValueError(
            f"expected matching (5 * Nq, k) arrays, got {distances.shape} and {predictions.shape}"
        )
    if distances.shape[1] != k:
        raise ValueError(f"arrays have {distances.shape[1]} columns but k = {k}")
    nq = distances.shape[0] // 5
    return distances.reshape(nq, 5, k), predictions.reshape(nq, 5, k)


def merge_nearest_crop(distances: np.ndarray, predictions: np.ndarray, k: int) -> np.ndarray:
    """Merge faiss results of the 5 crops per query (rows 5 * i + c) as the benchmark's nearest_crop.

    For each query the 5k (distance, label) pairs are sorted by distance with ``np.argsort``
    (default kind), duplicates dropped keeping the closest, and the first k kept; rows with fewer
    than k distinct labels are padded with -1.  Returns (Nq, k).
    """
    dist, pred = _as_crops(distances, predictions, k)
    out = np.full((dist.shape[0], k), -1, dtype=pred.dtype)
    for q in range(dist.shape[0]):
        out[q] = _dedup_closest(dist[q].reshape(-1), pred[q].reshape(-1), k)
    return out


def top_n_voting(predictions: np.ndarray, distances: np.ndarray, topn: str, majority_weight: float) -> None:
    """One majority vote on one query's (5, k) arrays, editing ``distances`` in place.

    ``topn`` is "top1" (column 0, n = 1), "top5" (columns :5, n = 5) or "top10" (columns :10,
    n = 10).  Every label seen more than once in the window gets ``majority_weight * count / n``
    subtracted from its distances inside the window.
    """
    windows = {"top1": (1, 0), "top5": (5, slice(0, 5)), "top10": (10, slice(0, 10))}
    n, window = windows[topn]
    labels = predictions[:, window]
    values, counts = np.unique(labels, return_counts=True)
    repeated = counts > 1
    # A view for the integer and the slice window alike; ``view[mask] -= x`` therefore edits
    # ``distances``.  ``count`` is a numpy integer, so ``delta`` is a numpy float64 scalar, as in
    # the benchmark (this decides float32 vs float64 arithmetic under NEP 50).
    view = distances[:, window]
    for value, count in zip(values[repeated], counts[repeated], strict=True):
        delta = majority_weight * count / n
        view[labels == value] -= delta


def merge_maj_voting(
    distances: np.ndarray, predictions: np.ndarray, k: int, majority_weight: float = 0.01
) -> np.ndarray:
    """Merge the 5 crops' faiss results per query as the benchmark's maj_voting; returns (Nq, k).

    Per query: top1, top5 and top10 votes lower the distances of labels that several crops agree
    on (on a copy; the caller's array is untouched), then the 5k candidates are merged as in
    :func:`merge_nearest_crop`.
    """
    dist, pred = _as_crops(distances, predictions, k)
    dist = dist.copy()
    out = np.full((dist.shape[0], k), -1, dtype=pred.dtype)
    for q in range(dist.shape[0]):
        for topn in ("top1", "top5", "top10"):
            top_n_voting(pred[q], dist[q], topn, majority_weight)
        out[q] = _dedup_closest(dist[q].reshape(-1), pred[q].reshape(-1), k)
    return out


def _image_paths(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Folder {folder} does not exist")
    return sorted(glob.glob(os.path.join(folder, "**", "*.jpg"), recursive=True))


def _utms(paths: list[str]) -> np.ndarray:
    # like the benchmark: split the whole path on "@", fields 1 and 2 are east / north
    return np.array([(p.split("@")[1], p.split("@")[2]) for p in paths], dtype=np.float64).reshape(-1, 2)


def positives(
    db_paths: list[str], q_paths: list[str], threshold: float = POSITIVE_DIST_THRESHOLD
) -> np.ndarray:
    """Database indices within ``threshold`` metres of each query (sklearn radius_neighbors)."""
    knn = NearestNeighbors(n_jobs=-1)
    knn.fit(_utms(db_paths))
    return knn.radius_neighbors(_utms(q_paths), radius=threshold, return_distance=False)


def recalls_at(
    predictions: np.ndarray, positives_per_query: Sequence[np.ndarray], recall_values: Sequence[int]
) -> np.ndarray:
    """The benchmark's Recall@N loop, in percent."""
    recalls = np.zeros(len(recall_values))
    for pred, pos in zip(predictions, positives_per_query, strict=True):
        for i, n in enumerate(recall_values):
            if np.any(np.isin(pred[:n], pos)):
                recalls[i:] += 1
                break
    return recalls / len(predictions) * 100


def benchmark_test(
    model: torch.nn.Module,
    root: str | os.PathLike,
    method: str,
    resize: tuple[int, int],
    recall_values: Sequence[int] = (1, 5, 10, 20),
    majority_weight: float = 0.01,
    batch_size: int = 4,
) -> dict:
    """Run the benchmark's ``test`` with ``method`` on ``root/images/test/{database,queries}``.

    Returns a dict with ``recalls`` (percent, one per recall value), ``predictions`` (Nq, k) with
    k = max(recall_values), and the ``database`` / ``queries`` features of
    :func:`benchmark_features`.
    """
    _check_method(method)
    split = os.path.join(os.fspath(root), "images", "test")
    db_paths = _image_paths(os.path.join(split, "database"))
    q_paths = _image_paths(os.path.join(split, "queries"))
    database, queries = benchmark_features(model, db_paths, q_paths, method, resize, batch_size)
    k = max(recall_values)
    index = faiss.IndexFlatL2(database.shape[1])
    index.add(database)
    distances, predictions = index.search(queries, k)
    if method == "nearest_crop":
        predictions = merge_nearest_crop(distances, predictions, k)
    elif method == "maj_voting":
        predictions = merge_maj_voting(distances, predictions, k, majority_weight)
    recalls = recalls_at(predictions, positives(db_paths, q_paths), recall_values)
    return {"recalls": recalls, "predictions": predictions, "database": database, "queries": queries}
