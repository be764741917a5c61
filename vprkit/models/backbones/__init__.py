"""The backbone registry: each module of this package registers its family's backbones.

To add a backbone, write ``vprkit/models/backbones/foo.py`` calling ``base.register`` with a
``base.BackboneSpec`` (name, channels, stride, builder, checkpoint key signature) and declaring,
at top level, the literal tuple ``NAMES = ("foo",)`` of the names it registers: the command
line's choices (``vprkit.choices.BACKBONES``) read it from the source, without importing torch,
and ``tests/test_registry.py`` checks that it is what the module registers. Nothing else
changes. Each backbone is an ``nn.Sequential`` whose child indices match the Deep Visual
Geo-localization Benchmark's (``backbone.0.weight`` is ResNet's ``conv1``), so the benchmark's
checkpoints load as they are.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.backbones.base import REGISTRY, BackboneSpec, register

# module name -> the backbones it registered (in order), which its NAMES must declare
REGISTERED_BY: dict[str, tuple[str, ...]] = {}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_") and _module != "base":
        _before = set(REGISTRY)
        importlib.import_module(f"{__name__}.{_module}")
        REGISTERED_BY[_module] = tuple(name for name in REGISTRY if name not in _before)

BACKBONES: dict[str, tuple[int, int]] = {name: (spec.channels, spec.stride)
                                         for name, spec in REGISTRY.items()}  # (channels, stride)


def get_backbone(name: str) -> BackboneSpec:
    """The registered backbone ``name``, or one clear error listing them."""
    if name not in REGISTRY:
        raise VprkitError(f"unknown backbone {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_backbone(name: str) -> str:
    """``name`` when it is a registered backbone, else one clear error."""
    return get_backbone(name).name


def backbone_channels(name: str) -> int:
    """The channels of the local features that backbone ``name`` outputs."""
    return get_backbone(name).channels


def build_backbone(name: str, weights: str = "imagenet") -> nn.Sequential:
    """Build a backbone; ``weights`` is ``imagenet``, ``none`` or a path to a state dict file."""
    return get_backbone(name).build(weights)


def recognise_backbone(state: dict[str, torch.Tensor]) -> list[str]:
    """The backbones whose key signature the ``backbone.*`` entries of a state dict fit."""
    state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return [name for name, spec in REGISTRY.items() if spec.recognise(state)]


__all__ = ["BACKBONES", "BackboneSpec", "backbone_channels", "build_backbone", "check_backbone",
           "get_backbone", "recognise_backbone", "register"]
