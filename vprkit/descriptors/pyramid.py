"""The multi-scale pyramid formed from stored descriptors and per-image statistics.

Pure numpy (no torch import), so that reading and evaluating descriptor files stays light.
Each rule is keyed by the name that a file's ``aggregation`` attribute stores (``type``); the
aggregations (``vprkit.models.aggregations``) say which rule they use and with which parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vprkit.errors import VprkitError


@dataclass(frozen=True)
class Rule:
    """A torch-free pyramid rule: the per-image statistics it needs and how it combines scales.

    ``stats(params)`` maps each statistic's name to its per-row shape and dtype; ``combine(params,
    descriptors, stats)`` returns the pyramid's (N, D) float64 rows. An aggregation names its rule
    in ``pyramid_params()["type"]``, which descriptor files store as their ``aggregation``."""

    stats: Callable[[dict], dict[str, tuple[tuple[int, ...], str]]]
    combine: Callable[[dict, Sequence[np.ndarray], Sequence[dict[str, np.ndarray]]], np.ndarray]


RULES: dict[str, Rule] = {}
NO_RULE = "none"  # pyramid_params()["type"] of an aggregation without a pyramid rule


def _scaled(params: dict) -> bool:
    """L2 after pooling: the stored descriptor lost its norm, kept as the ``norm`` statistic."""
    return params.get("l2") == "after_pool"


def _norm_stat(params: dict) -> dict:
    return {"norm": ((), "float32")} if _scaled(params) else {}


def _unscaled(params: dict, desc: np.ndarray, stat: dict) -> np.ndarray:
    desc = np.asarray(desc, dtype=np.float64)
    if _scaled(params):
        desc = desc * np.asarray(stat["norm"], dtype=np.float64)[:, None]
    return desc


def _l2(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _power_mean(params, descriptors, stats):
    """GeM (``p``) and SPoC (``p = 1``): the pooled mean of ``x^p`` is ``desc^p``, so the pyramid
    is ``(sum_s count_s desc_s^p / sum_s count_s)^(1/p)``."""
    p = float(params["p"])
    total = np.zeros(descriptors[0].shape, dtype=np.float64)
    counts = np.zeros((descriptors[0].shape[0], 1), dtype=np.float64)
    for desc, stat in zip(descriptors, stats, strict=True):
        count = np.asarray(stat["count"], dtype=np.float64)[:, None]
        total += count * np.power(_unscaled(params, desc, stat), p)
        counts += count
    rows = np.power(total / counts, 1.0 / p)
    return _l2(rows) if _scaled(params) else rows


def _max(params, descriptors, stats):
    """MAC: the maximum over every location of every scale is the maximum of the scales' maxima."""
    rows = np.max([_unscaled(params, d, s) for d, s in zip(descriptors, stats, strict=True)], axis=0)
    return _l2(rows) if _scaled(params) else rows


def _netvlad(params, descriptors, stats):
    """NetVLAD: residual sums are additive over locations; ``cluster_norms`` restores each
    cluster's sum from its intra-normalised block, then intra- and L2-normalise again."""
    k = int(params["clusters"])
    n = descriptors[0].shape[0]
    vlad = np.zeros((n, k, descriptors[0].shape[1] // k), dtype=np.float64)
    for desc, stat in zip(descriptors, stats, strict=True):
        blocks = np.asarray(desc, dtype=np.float64).reshape(n, k, -1)
        block_norms = np.linalg.norm(blocks, axis=2, keepdims=True)
        units = np.divide(blocks, block_norms, out=np.zeros_like(blocks), where=block_norms > 0)
        vlad += units * np.asarray(stat["cluster_norms"], dtype=np.float64)[:, :, None]
    vlad /= np.maximum(np.linalg.norm(vlad, axis=2, keepdims=True), 1e-12)
    return _l2(vlad.reshape(n, -1))


_COUNT = {"count": ((), "int64")}
RULES["gem"] = Rule(lambda params: {**_COUNT, **_norm_stat(params)}, _power_mean)
RULES["power_mean"] = RULES["gem"]  # SPoC's name for the same rule (files say "gem" for GeM)
RULES["max"] = Rule(_norm_stat, _max)
RULES["netvlad"] = Rule(lambda params: {"cluster_norms": ((int(params["clusters"]),), "float32")}, _netvlad)


def stat_spec(params: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """The per-image statistics (name -> per-row shape, dtype) that ``params``' rule needs."""
    rule = RULES.get(str(params.get("type")))
    return rule.stats(params) if rule else {}


def stat_names(params: dict) -> tuple[str, ...]:
    """The names of the per-image statistics that ``params``' rule needs."""
    return tuple(stat_spec(params))


def pyramid(
    params: dict, descriptors: Sequence[np.ndarray], stats: Sequence[dict[str, np.ndarray]]
) -> np.ndarray:
    """Aggregate several scales' local features together, from stored descriptors and stats.

    ``descriptors[i]`` is (N, D) for scale i, ``stats[i]`` its statistics. Returns (N, D) float32.
    With a single scale this returns that scale's descriptors unchanged.
    """
    if len(descriptors) == 1:
        return np.asarray(descriptors[0], dtype=np.float32)
    kind = str(params.get("type"))
    rule = RULES.get(kind)
    if rule is None:
        name = params.get("aggregation", kind) if kind == NO_RULE else kind
        raise VprkitError(
            f"the {name} aggregation has no pyramid rule: evaluate one scale "
            "(such as --scale 1), not a pyramid of several"
        )
    return rule.combine(params, descriptors, stats).astype(np.float32)
