"""k-means (squared L2) with faiss on a CPU or with torch on any device, to the same recipe.

``kmeans(x, k, niter, seed, device)`` runs ``faiss.Kmeans`` on a CPU (the default there) and
``torch_kmeans`` on a GPU. The torch path follows faiss's ``Clustering`` step for step, so that
the same data and seed give the same centroids to float round-off:

- more than ``k * max_points_per_centroid`` points: a seeded subsample (the first points of
  faiss's permutation with ``seed``);
- initial centroids: the first ``k`` points of the permutation with ``seed + 1`` (or ``init``);
- ``niter`` Lloyd iterations: each point to its nearest centroid (the lowest centroid index on
  ties), each centroid to the mean of its points (summed in float64);
- an empty cluster takes a copy of a populated cluster chosen at random with probability
  growing with its size (faiss's generator, seed 1234, drawn afresh at every iteration), and the
  two are pushed apart by a relative 1/1024 along alternate coordinates.

faiss's permutations come from a Mersenne Twister (``std::mt19937``) seeded with the integer
seed, which numpy's legacy ``RandomState`` seeding reproduces; ``faiss_permutation`` draws them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vprkit.search.exact import full_fp32_matmul

MAX_POINTS_PER_CENTROID = 256  # faiss's ClusteringParameters default
SPLIT_SEED = 1234  # the seed of faiss's empty-cluster generator
SPLIT_EPS = 1.0 / 1024.0


def _twister(seed: int) -> np.random.MT19937:
    """``std::mt19937(seed)``: numpy's legacy seeding is the same ``init_genrand``."""
    state: Any = np.random.RandomState(seed & 0xFFFFFFFF).get_state(legacy=False)
    twister = np.random.MT19937()
    twister.state = state
    return twister


def faiss_permutation(n: int, seed: int) -> np.ndarray:
    """faiss's ``rand_perm(n, seed)``: a Fisher-Yates shuffle drawing ``mt() % (n - i)``."""
    perm = np.arange(n, dtype=np.int64)
    draws = _twister(seed).random_raw(max(n - 1, 0)).astype(np.int64).tolist()
    for i, raw in enumerate(draws):
        j = i + raw % (n - i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _check(x: np.ndarray, k: int, init: np.ndarray | None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or k < 1:
        raise ValueError(f"k-means needs (n, d) points and k >= 1, got {x.shape} and k={k}")
    if len(x) < k:
        raise ValueError(f"k-means of {len(x)} points into {k} clusters: need at least {k}")
    if init is not None and np.shape(init) != (k, x.shape[1]):
        raise ValueError(f"init centroids have shape {np.shape(init)}, expected {(k, x.shape[1])}")
    return x


def kmeans(
    x: np.ndarray,
    k: int,
    niter: int = 25,
    seed: int = 1234,
    device: Any = "cpu",
    init: np.ndarray | None = None,
    max_points_per_centroid: int = MAX_POINTS_PER_CENTROID,
) -> np.ndarray:
    """(k, d) float32 centroids: faiss where ``device`` is a CPU, torch on any other device.

    ``device`` is ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
    ``torch.device``.
    """
    if str(device) == "cpu":
        return faiss_kmeans(x, k, niter, seed, init, max_points_per_centroid)
    from vprkit.devices import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else device
    if dev.type == "cpu":
        return faiss_kmeans(x, k, niter, seed, init, max_points_per_centroid)
    return torch_kmeans(x, k, niter, seed, dev, init, max_points_per_centroid)


def faiss_kmeans(
    x: np.ndarray,
    k: int,
    niter: int = 25,
    seed: int = 1234,
    init: np.ndarray | None = None,
    max_points_per_centroid: int = MAX_POINTS_PER_CENTROID,
) -> np.ndarray:
    """``faiss.Kmeans(d, k, niter=niter, seed=seed).train(x)``'s centroids."""
    import faiss

    x = _check(x, k, init)
    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=seed, verbose=False, max_points_per_centroid=max_points_per_centroid
    )
    km.train(x, init_centroids=None if init is None else np.ascontiguousarray(init, np.float32))
    assert km.centroids is not None  # set by train
    return np.asarray(km.centroids, dtype=np.float32)


def torch_kmeans(
    x: np.ndarray,
    k: int,
    niter: int = 25,
    seed: int = 1234,
    device: Any = "cpu",
    init: np.ndarray | None = None,
    max_points_per_centroid: int = MAX_POINTS_PER_CENTROID,
    chunk: int = 1 << 16,
) -> np.ndarray:
    """faiss's k-means recipe (see the module docstring) with torch on ``device``.

    ``chunk`` points are assigned at a time, bounding the (chunk, k) distance matrix.
    """
    import torch

    x = _check(x, k, init)
    if len(x) > k * max_points_per_centroid:
        x = x[faiss_permutation(len(x), seed)[: k * max_points_per_centroid]]
    if len(x) == k:  # faiss's corner case: the points themselves, in order
        return x.copy()
    if init is None:
        init = x[faiss_permutation(len(x), seed + 1)[:k]]
    dev = torch.device(device)
    with full_fp32_matmul():
        points = torch.from_numpy(x).to(dev)
        centroids = torch.from_numpy(np.array(init, dtype=np.float32)).to(dev)
        norms, wide = (points * points).sum(1), points.double()
        for _ in range(niter):
            assign = torch.cat(
                [
                    _nearest(points[s : s + chunk], norms[s : s + chunk], centroids)
                    for s in range(0, len(points), chunk)
                ]
            )
            counts = torch.bincount(assign, minlength=k)
            means = (_cluster_sums(wide, assign, counts) / counts.clamp_min(1).unsqueeze(1)).float()
            if bool((counts == 0).any()):
                means = torch.from_numpy(_split_empty(means.cpu().numpy(), counts.cpu().numpy(), len(x))).to(
                    dev
                )
            centroids = means
        return centroids.cpu().numpy()


def _cluster_sums(points, assign, counts):
    """(k, d) sums of the points of each cluster, in float64 and in a fixed order (a cumulative
    sum over the points sorted by cluster: no atomics, the same result every run)."""
    import torch

    ordered = points[torch.argsort(assign, stable=True)]
    running = torch.cat([ordered.new_zeros((1, points.shape[1])), torch.cumsum(ordered, dim=0)])
    ends = torch.cumsum(counts, dim=0)
    return running[ends] - running[ends - counts]


def _nearest(points, norms, centroids):
    """Index of each point's nearest centroid (``||x||^2 + ||c||^2 - 2 x.c``, first on ties)."""
    c_norms = (centroids * centroids).sum(1)
    dist = norms.unsqueeze(1) + c_norms.unsqueeze(0) - 2.0 * (points @ centroids.T)
    return dist.argmin(dim=1)


def _split_empty(centroids: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """faiss's treatment of empty clusters (an empty centroid is all zeros before it)."""
    k = len(centroids)
    centroids[counts == 0] = 0.0
    sizes = counts.astype(np.float32)
    twister = _twister(SPLIT_SEED)
    even = np.arange(centroids.shape[1]) % 2 == 0
    grow = np.where(even, 1 + SPLIT_EPS, 1 - SPLIT_EPS).astype(np.float32)
    shrink = np.where(even, 1 - SPLIT_EPS, 1 + SPLIT_EPS).astype(np.float32)
    scale = np.float32(4294967295.0)  # float(mt.max()), rounded to float as faiss does
    for empty in np.flatnonzero(sizes == 0):
        donor = 0
        while True:  # faiss's walk over the clusters until a draw picks one
            p = np.float32((float(sizes[donor]) - 1.0) / float(np.float32(n - k)))
            r = np.float32(np.float32(twister.random_raw()) / scale)
            if r < p:
                break
            donor = (donor + 1) % k
        centroids[empty] = centroids[donor] * grow
        centroids[donor] = centroids[donor] * shrink
        sizes[empty] = sizes[donor] / 2
        sizes[donor] -= sizes[empty]
    return centroids
