"""The aggregation registry: one module per aggregation, found by its name.

To add an aggregation ``foo``, write ``vprkit/models/aggregations/foo.py`` holding one subclass
of ``base.Aggregation`` (or ``base.ShallowAggregation`` for a pooling layer that takes the
benchmark's ``--l2``) whose ``name = "foo"``; it declares its output dimension, its pyramid rule
(a rule of ``vprkit.descriptors.pyramid`` and its parameters, or none), how its checkpoint keys are
recognised, and how it is built. ``build_aggregation``, checkpoint loading, extraction and the
command line read everything from here (``vprkit.choices`` mirrors the names, checked by tests).

Every layer computes exactly what the Deep Visual Geo-localization Benchmark computes and uses
its parameter names (``aggregation.1.p`` for GeM, ``aggregation.centroids`` and
``aggregation.conv.weight`` for NetVLAD; ``--fc_output_dim`` adds ``aggregation.1.weight``).

The multi-scale pyramid: each layer's ``forward_with_stats`` returns, besides the descriptor, the
small per-image statistics its pyramid rule needs, so that the pyramid of ANY subset of stored
scales can later be formed from descriptors alone (``vprkit.descriptors.pyramid``), without the network.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import torch

from vprkit.descriptors.pyramid import pyramid, stat_names  # noqa: F401  (re-exported)
from vprkit.errors import VprkitError
from vprkit.models.aggregations.base import (
    L2_PLACEMENTS,
    Aggregation,
    Flatten,
    L2Norm,
    ShallowAggregation,
    WithFC,
)

_SKIP = {"base"}
AGGREGATIONS: tuple[str, ...] = tuple(sorted(
    m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in _SKIP))


def get_aggregation(name: str) -> type[Aggregation]:
    """The aggregation class registered as ``name`` (its module is imported on first use)."""
    if name not in AGGREGATIONS:
        raise VprkitError(f"unknown aggregation {name!r}; choose one of {', '.join(AGGREGATIONS)}")
    module = importlib.import_module(f"{__name__}.{name}")
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, Aggregation) and c.__module__ == module.__name__ and c.name == name]
    if len(found) != 1:
        raise VprkitError(f"module {module.__name__} must define one Aggregation named {name!r}")
    return found[0]


def build_aggregation(name: str, channels: int, clusters: int = 64, l2: str | None = None,
                      fc_output_dim: int | None = None) -> Aggregation:
    """The layer ``name`` for ``channels`` input channels; ``l2`` is the benchmark's placement
    of the L2 norm (None: ``before_pool``), ``fc_output_dim`` its fully connected head."""
    cls = get_aggregation(name)
    if l2 is not None and l2 != L2_PLACEMENTS[0] and not cls.uses_l2:
        users = ", ".join(n for n in AGGREGATIONS if get_aggregation(n).uses_l2)
        raise VprkitError(f"--l2 {l2} applies to {users}, not to {name}")
    layer = cls.build(channels, clusters=clusters, l2=l2 or L2_PLACEMENTS[0])
    if fc_output_dim is not None:
        if fc_output_dim < 1:
            raise VprkitError(f"--fc-output-dim must be at least 1, got {fc_output_dim}")
        layer = WithFC(layer, layer.output_dim(channels), fc_output_dim)
    return layer


def recognise_aggregation(state: dict[str, torch.Tensor]) -> list[dict]:
    """Every aggregation layout that a layer's state dict (keys without ``aggregation.``) fits:
    ``{"aggregation": name, **options}``, options such as ``clusters``, ``l2``, ``fc_output_dim``."""
    fc = {}
    if {"1.weight", "1.bias"} <= set(state) and state["1.weight"].ndim == 2 and all(
            k.startswith("0.") or k in ("1.weight", "1.bias") for k in state):
        fc = {"fc_output_dim": int(state["1.weight"].shape[0])}
        state = {k[2:]: v for k, v in state.items() if k.startswith("0.")}
    found = []
    for name in AGGREGATIONS:
        for options in get_aggregation(name).recognise(state) or []:
            found.append({"aggregation": name, **options, **fc})
    return found


def _export(name: str, attr: str):
    return getattr(importlib.import_module(f"{__name__}.{name}"), attr)


GeM = _export("gem", "GeM")
NetVLAD = _export("netvlad", "NetVLAD")

__all__ = ["AGGREGATIONS", "L2_PLACEMENTS", "Aggregation", "Flatten", "GeM", "L2Norm", "NetVLAD",
           "ShallowAggregation", "WithFC", "build_aggregation", "get_aggregation", "pyramid",
           "recognise_aggregation", "stat_names"]
