"""The model zoo: today's published VPR networks, each family one module of this package.

``get_zoo_model(name)`` is the registered ``ZooSpec`` (``REGISTRY``, a
``vprkit.models.registry.Registry``, imports the family's module on first use);
``ZooNetwork(config)`` builds it as a ``vprkit.models.protocol.DescriptorNet``, with random
weights (``weights="none"``) or an upstream release's own file (``checkpoint=PATH``). To add a
model, write ``vprkit/models/zoo/<family>.py`` calling ``base.register`` (see ``base.ZooSpec``)
for each variant, named ``<family>_<variant>``; nothing else changes.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from vprkit.descriptors.pyramid import NO_RULE
from vprkit.errors import VprkitError
from vprkit.models.config import ModelConfig
from vprkit.models.protocol import InputRule, record
from vprkit.models.zoo.base import REGISTRY, ZooSpec, register

ZOO = REGISTRY  # the zoo's registry


def zoo_models() -> dict[str, ZooSpec]:
    """Every registered zoo model, by name."""
    return dict(sorted(REGISTRY.items()))


def get_zoo_model(name: str) -> ZooSpec:
    """The zoo model ``name``, or one clear error pointing to ``vprkit models``."""
    if name not in REGISTRY:
        close = [n for n in REGISTRY if n.split("_")[0] == str(name).split("_")[0]][:6]
        hint = f" (e.g. {', '.join(close)})" if close else ""
        raise VprkitError(f"unknown model {name!r}{hint}; vprkit models lists them all")
    return REGISTRY.get(name)


class ZooNetwork(nn.Module):
    """A zoo model as a ``DescriptorNet``; ``backbone`` is the whole upstream network (so that
    BatchNorm folding and fingerprints cover it). Its heads end in layers after the pooling
    (FC, optimal transport...), so stored scales form no pyramid: no statistics."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not config.model:
            raise VprkitError("a zoo network needs the config's model (a name of vprkit models)")
        self.config = config
        self.spec = get_zoo_model(config.model)
        for package in self.spec.requires:
            if importlib.util.find_spec(package) is None:
                raise VprkitError(
                    f"model {self.spec.name} needs the {package} package: pip install 'vprkit[dinov2]'"
                )
        if not config.checkpoint and config.weights != "none":
            raise VprkitError(
                f"model {self.spec.name} takes --checkpoint FILE (its published "
                f"weights: {self.spec.weights}) or --weights none (random), not "
                f"--weights {config.weights}"
            )
        self.backbone: nn.Module = self.spec.build()
        if config.checkpoint:
            from vprkit.models.serialization import load_safely

            state = load_safely(config.checkpoint, "checkpoint")
            try:
                self.spec.load_state_dict(self.backbone, state)
            except VprkitError as err:
                raise VprkitError(f"{config.checkpoint}: {err}") from None

    @property
    def label(self) -> str:
        return self.spec.name

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim

    @property
    def input_rule(self) -> InputRule:
        """The release's: its evaluation size, side multiple and normalisation."""
        return InputRule(self.spec.resize, self.spec.multiple_of, self.spec.mean, self.spec.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The descriptors; no statistics (no pyramid of stored scales)."""
        return self.backbone(x), {}

    def stats_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {}

    def pyramid_params(self) -> dict:
        return {"type": NO_RULE, "aggregation": self.spec.name}

    def describe(self) -> dict:
        """Its config, then its parts (backbone and head, for tables)."""
        return record(self, {"backbone": self.spec.backbone, "aggregation": self.spec.aggregation})


__all__ = ["ZOO", "ZooNetwork", "ZooSpec", "get_zoo_model", "register", "zoo_models"]
