"""The backbone registry: one module of this package per backbone, named as the backbone.

To add a backbone ``foo``, write ``vprkit/models/backbones/foo.py`` whose builder
``build(weights, options) -> nn.Sequential`` is decorated with
``@base.register("foo", channels=..., stride=..., recognise=..., help=...)`` (and
``options=Options``, a frozen dataclass of typed defaults, where it takes options: they are set
by ``ModelConfig.backbone_options`` or ``--set backbone.NAME=VALUE``). The command line's
choices (``vprkit.choices.BACKBONES``) are the module names, listed without importing torch;
nothing else changes. Families share a private module (``_resnet.py``).

Each backbone is an ``nn.Sequential`` whose child indices match the Deep Visual
Geo-localization Benchmark's (``backbone.0.weight`` is ResNet's ``conv1``), so the benchmark's
checkpoints load as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from vprkit.models.backbones.base import REGISTRY, BackboneSpec, register
from vprkit.models.options import make_options

# name -> (channels, stride) of every backbone of this package
BACKBONES: dict[str, tuple[int, int]] = {
    name: (spec.channels, spec.stride) for name, spec in REGISTRY.items()
}


def get_backbone(name: str) -> BackboneSpec:
    """The registered backbone ``name``, or one clear error listing them."""
    return REGISTRY.get(name)


def check_backbone(name: str) -> str:
    """``name`` when it is a registered backbone, else one clear error."""
    return get_backbone(name).name


def backbone_channels(name: str) -> int:
    """The channels of the local features that backbone ``name`` outputs."""
    return get_backbone(name).channels


def build_backbone(name: str, weights: str = "imagenet", options: dict | None = None) -> nn.Sequential:
    """Build a backbone; ``weights`` is ``imagenet``, ``none`` or a path to a state dict file,
    ``options`` its options by name (None: the defaults; see ``BackboneSpec.options``)."""
    spec = get_backbone(name)
    return spec.build(weights, make_options(spec.options, options or {}, f"backbone {name}"))


def recognise_backbone(state: dict[str, torch.Tensor]) -> list[str]:
    """The backbones whose key signature the ``backbone.*`` entries of a state dict fit."""
    state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return [name for name, spec in REGISTRY.items() if spec.recognise(state)]


__all__ = [
    "BACKBONES",
    "REGISTRY",
    "BackboneSpec",
    "backbone_channels",
    "build_backbone",
    "check_backbone",
    "get_backbone",
    "recognise_backbone",
    "register",
]
