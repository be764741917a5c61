"""The multi-scale pyramid formed from stored descriptors and per-image statistics.

Pure numpy (no torch import), so that reading and evaluating descriptor files stays light.
See ``vprkit.models.aggregations`` for what each aggregation stores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import VprkitError


def stat_names(params: dict) -> tuple[str, ...]:
    return {"gem": ("count",), "netvlad": ("cluster_norms",)}.get(params["type"], ())


def pyramid(
    params: dict, descriptors: Sequence[np.ndarray], stats: Sequence[dict[str, np.ndarray]]
) -> np.ndarray:
    """Aggregate several scales' local features together, from stored descriptors and stats.

    ``descriptors[i]`` is (N, D) for scale i, ``stats[i]`` its statistics. Returns (N, D) float32.
    With a single scale this returns that scale's descriptors unchanged.
    """
    if len(descriptors) == 1:
        return np.asarray(descriptors[0], dtype=np.float32)
    kind = params["type"]
    if kind == "gem":
        p = float(params["p"])
        total = np.zeros(descriptors[0].shape, dtype=np.float64)
        counts = np.zeros((descriptors[0].shape[0], 1), dtype=np.float64)
        for desc, stat in zip(descriptors, stats, strict=True):
            count = np.asarray(stat["count"], dtype=np.float64)[:, None]
            total += count * np.power(np.asarray(desc, dtype=np.float64), p)
            counts += count
        return np.power(total / counts, 1.0 / p).astype(np.float32)
    if kind == "netvlad":
        k = int(params["clusters"])
        n = descriptors[0].shape[0]
        vlad = np.zeros((n, k, descriptors[0].shape[1] // k), dtype=np.float64)
        for desc, stat in zip(descriptors, stats, strict=True):
            blocks = np.asarray(desc, dtype=np.float64).reshape(n, k, -1)
            block_norms = np.linalg.norm(blocks, axis=2, keepdims=True)
            units = np.divide(blocks, block_norms, out=np.zeros_like(blocks), where=block_norms > 0)
            vlad += units * np.asarray(stat["cluster_norms"], dtype=np.float64)[:, :, None]
        vlad /= np.maximum(np.linalg.norm(vlad, axis=2, keepdims=True), 1e-12)
        flat = vlad.reshape(n, -1)
        flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        return flat.astype(np.float32)
    raise VprkitError(f"no pyramid rule for aggregation {kind!r}")
