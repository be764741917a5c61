"""What every model of the zoo declares: ``ZooSpec``, registered by name with ``register``.

A zoo model is a published VPR network (CosPlace, EigenPlaces, MixVPR, BoQ, SALAD, MegaLoc...)
whose architecture lives in vprkit and whose released weight file loads unchanged from a local
path (``--checkpoint``); ``--weights none`` builds it with random weights. Each family is one
module of this package, named as the family, calling ``register`` once per released variant
named ``<family>_...`` (``REGISTRY`` finds a name's module by that prefix).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ZooSpec:
    """One released model.

    Attributes:
        name: the ``--model`` name, e.g. ``"cosplace_resnet50_2048"`` (lower case, ``_``).
        family: e.g. ``"cosplace"``; the module that registers it.
        backbone: what the features come from, for tables (e.g. ``"ResNet-50"``).
        aggregation: the head, for tables (e.g. ``"GeM + FC + L2"``).
        output_dim: the descriptor dimension D.
        build: returns the architecture with random weights, an ``nn.Module`` whose ``forward``
            maps a normalised (B, 3, H, W) batch to (B, D) descriptors.
        load_state_dict: puts an upstream release's own state dict (as its published file
            holds it, after ``vprkit.models.serialization.load_safely``) into that module;
            raises ``VprkitError`` with one line where the keys or shapes do not fit.
        resize: the (H, W) the model is evaluated at upstream (None: each image's own size).
        multiple_of: image sides must be multiples of this (14 for DINOv2's patches).
        mean, std: the input normalisation.
        weights: where the upstream weights are published and the expected file name.
        requires: optional Python packages the architecture needs (e.g. ``("timm",)``), with
            the vprkit extra that installs them.
        notes: anything a user must know (e.g. how the upstream code evaluates).
    """

    name: str
    family: str
    backbone: str
    aggregation: str
    output_dim: int
    build: Callable[[], nn.Module]
    load_state_dict: Callable[[nn.Module, Mapping[str, torch.Tensor]], None]
    resize: tuple[int, int] | None
    weights: str
    multiple_of: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    requires: tuple[str, ...] = field(default_factory=tuple)
    notes: str = ""


def family_of(name: str) -> str:
    """The family (module of this package) of the zoo model ``name``: its prefix before ``_``."""
    return name.split("_")[0]


# the zoo: one module of this package per family (see vprkit.models.registry)
REGISTRY: Registry[ZooSpec] = Registry(
    "model", "vprkit.models.zoo", family_of=family_of, hint="vprkit models lists them"
)


def register(spec: ZooSpec) -> ZooSpec:
    """Add ``spec`` to the zoo (its name must be new and start with its family, ``<family>_``)."""
    return REGISTRY.add(spec.name, spec, f"{REGISTRY.package}.{spec.family}")


def strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state)`` where every key and shape must match; one clear line
    naming the first missing, unexpected or misshapen key otherwise."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = (
            (f"missing {missing[0]!r}" if missing else "")
            + (", " if missing and unexpected else "")
            + (f"unexpected {unexpected[0]!r}" if unexpected else "")
        )
        raise VprkitError(
            f"this is not a {what} state dict ({detail}; {len(missing)} missing, "
            f"{len(unexpected)} unexpected keys)"
        )
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise VprkitError(
                f"this is not a {what} state dict: {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(value.shape)}"
            )
    module.load_state_dict(dict(state), strict=True)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict:
    """The state dict without a ``prefix`` that every key has (``nn.DataParallel``'s)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)
