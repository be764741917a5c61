"""The model zoo: today's published VPR networks, each family one module of this package.

``get_zoo_model(name)`` is the registered ``ZooSpec``; ``ZooNetwork(config)`` builds it behind
the interface extraction expects (``forward_with_stats``, ``output_dim``, ``backbone``,
``aggregation``), with random weights (``weights="none"``) or an upstream release's own file
(``checkpoint=PATH``). To add a model, write ``vprkit/models/zoo/<family>.py`` calling
``base.register`` (see ``base.ZooSpec``); nothing else changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import torch
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.zoo.base import REGISTRY, ZooSpec, register

_LOADED = False


def _load_all() -> None:
    """Import every family module once (each registers its variants)."""
    global _LOADED
    if _LOADED:
        return
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if not module.startswith("_") and module not in ("base",):
            importlib.import_module(f"{__name__}.{module}")
    _LOADED = True


def zoo_models() -> dict[str, ZooSpec]:
    """Every registered zoo model, by name."""
    _load_all()
    return dict(sorted(REGISTRY.items()))


def get_zoo_model(name: str) -> ZooSpec:
    """The zoo model ``name``, or one clear error pointing to ``vprkit models``."""
    models = zoo_models()
    if name not in models:
        close = [n for n in models if n.split("_")[0] == name.split("_")[0]][:6]
        hint = f" (e.g. {', '.join(close)})" if close else ""
        raise VprkitError(f"unknown model {name!r}{hint}; vprkit models lists them all")
    return models[name]


class _NoPyramid(nn.Module):
    """The ``aggregation`` of a zoo network for extraction: its heads end in layers after the
    pooling (FC, optimal transport...), so stored scales cannot form a pyramid."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def pyramid_params(self) -> dict:
        return {"type": "none", "aggregation": self.name}

    def stats_spec(self) -> dict:
        return {}


class ZooNetwork(nn.Module):
    """A zoo model behind extraction's interface; ``backbone`` is the whole upstream network
    (so that BatchNorm folding and fingerprints cover it)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.spec = get_zoo_model(config.model)
        for package in self.spec.requires:
            if importlib.util.find_spec(package) is None:
                raise VprkitError(f"model {self.spec.name} needs the {package} package: "
                                  "pip install 'vprkit[dinov2]'")
        if not config.checkpoint and config.weights != "none":
            raise VprkitError(f"model {self.spec.name} takes --checkpoint FILE (its published "
                              f"weights: {self.spec.weights}) or --weights none (random), not "
                              f"--weights {config.weights}")
        self.backbone = self.spec.build()
        self.aggregation = _NoPyramid(self.spec.name)
        if config.checkpoint:
            from vprkit.models.serialization import load_safely
            state = load_safely(config.checkpoint, "checkpoint")
            try:
                self.spec.load_state_dict(self.backbone, state)
            except VprkitError as err:
                raise VprkitError(f"{config.checkpoint}: {err}") from None

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The descriptors; no statistics (no pyramid of stored scales)."""
        return self.backbone(x), {}


__all__ = ["ZooNetwork", "ZooSpec", "get_zoo_model", "register", "zoo_models"]
