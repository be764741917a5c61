"""The aggregation registry: one module per aggregation, named as the aggregation.

To add an aggregation ``foo``, write ``vprkit/models/aggregations/foo.py`` holding one subclass
of ``base.Aggregation`` (or ``base.ShallowAggregation`` for a pooling layer that takes the
benchmark's ``--l2``) decorated with ``@base.register("foo")``; it declares its options (a
frozen dataclass ``Options`` extending its base's, with typed defaults, e.g. ``scale: float =
2.0``), its output dimension, its pyramid rule (a rule of ``vprkit.descriptors.pyramid`` and its
parameters, or none), how its checkpoint keys are recognised, and ``build(channels, options)``.
``build_aggregation``, ``ModelConfig`` (``aggregation_options``, ``--set aggregation.scale=3``),
checkpoint loading, extraction and the command line read everything from here
(``vprkit.choices`` lists the module names without importing torch).

Every layer computes exactly what the Deep Visual Geo-localization Benchmark computes and uses
its parameter names (``aggregation.1.p`` for GeM, ``aggregation.centroids`` and
``aggregation.conv.weight`` for NetVLAD; ``--fc_output_dim`` adds ``aggregation.1.weight``).

The multi-scale pyramid: each layer's ``forward_with_stats`` returns, besides the descriptor, the
small per-image statistics its pyramid rule needs, so that the pyramid of ANY subset of stored
scales can later be formed from descriptors alone (``vprkit.descriptors.pyramid``), without the network.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from vprkit.descriptors.pyramid import pyramid, stat_names  # noqa: F401  (re-exported)
from vprkit.errors import VprkitError
from vprkit.models.aggregations.base import (
    L2_PLACEMENTS,
    REGISTRY,
    Aggregation,
    Flatten,
    L2Norm,
    ShallowAggregation,
    WithFC,
    register,
)
from vprkit.models.options import declared, make_options

# the aggregations of this package (one module each), in their order
AGGREGATIONS: tuple[str, ...] = REGISTRY.names()


def get_aggregation(name: str) -> type[Aggregation]:
    """The aggregation class registered as ``name`` (its module is imported on first use), or
    one clear error listing them."""
    return REGISTRY.get(name)


def aggregation_options(
    name: str,
    options: Mapping[str, Any] | None = None,
    clusters: int | None = None,
    l2: str | None = None,
    fc_output_dim: int | None = None,
) -> Any:
    """The ``Options`` of aggregation ``name`` from ``options`` by name, and the benchmark's
    flat ``clusters``, ``l2`` and ``fc_output_dim`` where it declares them (``options`` wins);
    a flat ``clusters`` it does not declare is ignored, as configs always recorded one."""
    cls = get_aggregation(name)
    if l2 is not None and l2 != L2_PLACEMENTS[0] and not cls.uses_l2:
        users = ", ".join(n for n in REGISTRY.names() if get_aggregation(n).uses_l2)
        raise VprkitError(f"--l2 {l2} applies to {users}, not to {name}")
    values = dict(options or {})
    kinds = declared(cls.Options)
    for key, value in (("clusters", clusters), ("l2", l2), ("fc_output_dim", fc_output_dim)):
        if value is not None and key in kinds:
            values.setdefault(key, value)
    return make_options(cls.Options, values, f"aggregation {name}")


def build_aggregation(
    name: str,
    channels: int,
    clusters: int = 64,
    l2: str | None = None,
    fc_output_dim: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Aggregation:
    """The layer ``name`` for ``channels`` input channels; ``l2`` is the benchmark's placement
    of the L2 norm (None: ``before_pool``), ``fc_output_dim`` its fully connected head,
    ``options`` any of the layer's options by name (see ``aggregation_options``)."""
    cls = get_aggregation(name)
    settings = aggregation_options(name, options, clusters, l2, fc_output_dim)
    layer = cls.build(channels, settings)
    if settings.fc_output_dim is not None:
        if settings.fc_output_dim < 1:
            raise VprkitError(f"--fc-output-dim must be at least 1, got {settings.fc_output_dim}")
        layer = WithFC(layer, layer.output_dim(channels), settings.fc_output_dim)
    return layer


def recognise_aggregation(state: dict[str, torch.Tensor]) -> list[dict]:
    """Every aggregation layout that a layer's state dict (keys without ``aggregation.``) fits:
    ``{"aggregation": name, **options}``, options such as ``clusters``, ``l2``, ``fc_output_dim``."""
    fc = {}
    if (
        {"1.weight", "1.bias"} <= set(state)
        and state["1.weight"].ndim == 2
        and all(k.startswith("0.") or k in ("1.weight", "1.bias") for k in state)
    ):
        fc = {"fc_output_dim": int(state["1.weight"].shape[0])}
        state = {k[2:]: v for k, v in state.items() if k.startswith("0.")}
    found = []
    for name in REGISTRY.names():
        for options in get_aggregation(name).recognise(state) or []:
            found.append({"aggregation": name, **options, **fc})
    return found


def _export(name: str, attr: str):
    return getattr(importlib.import_module(f"{__name__}.{name}"), attr)


GeM = _export("gem", "GeM")
NetVLAD = _export("netvlad", "NetVLAD")

__all__ = [
    "AGGREGATIONS",
    "L2_PLACEMENTS",
    "REGISTRY",
    "Aggregation",
    "Flatten",
    "GeM",
    "L2Norm",
    "NetVLAD",
    "ShallowAggregation",
    "WithFC",
    "aggregation_options",
    "build_aggregation",
    "get_aggregation",
    "pyramid",
    "recognise_aggregation",
    "register",
    "stat_names",
]
