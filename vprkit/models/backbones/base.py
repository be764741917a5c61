"""What backbone families share: the registry entry and weight loading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.serialization import load_safely


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    Attributes:
        name: the ``--backbone`` name.
        channels: channels C of its local features.
        stride: pixels per feature location (the map is about H/stride x W/stride).
        build: ``build(weights)`` -> ``nn.Sequential`` whose child indices are the benchmark's;
            ``weights`` is ``"imagenet"``, ``"none"`` or the path of a state dict file.
        recognise: whether a state dict's backbone keys (without ``backbone.``) are this one's.
        help: one line for the documentation.
    """

    name: str
    channels: int
    stride: int
    build: Callable[[str], nn.Sequential] = field(compare=False)
    recognise: Callable[[dict[str, torch.Tensor]], bool] = field(compare=False)
    help: str = ""


REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry (its name must be new); returns it."""
    if spec.name in REGISTRY:
        raise ValueError(f"backbone {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def torchvision_model(arch: str, weights: str) -> nn.Module:
    """A torchvision classification model: ImageNet weights (torchvision's weights API, the
    ``IMAGENET1K_V1`` the benchmark's ``pretrained=True`` loads), random, or a state dict file."""
    import torchvision

    factory = getattr(torchvision.models, arch)
    if weights == "imagenet":
        try:
            return factory(weights=torchvision.models.get_model_weights(arch).IMAGENET1K_V1)
        except Exception as err:  # no internet, proxy, corrupt cache ...
            raise VprkitError(
                f"cannot load torchvision's ImageNet weights for {arch} ({type(err).__name__}: "
                f"{err}); on a machine without internet use --weights none or --weights PATH"
            ) from None
    model = factory(weights=None)
    if weights != "none":
        load_weights_file(model, weights, f"a torchvision {arch}")
    return model


def load_weights_file(model: nn.Module, path: str, what: str) -> None:
    """Load a state dict file into ``model``, or one clear error naming the file."""
    try:
        model.load_state_dict(_load_state_dict_file(path))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise VprkitError(f"{path} is not {what} state dict: {first}") from None


def _load_state_dict_file(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise VprkitError(f"weights file {file} does not exist (use imagenet, none or a path)")
    state = load_safely(file, "weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise VprkitError(f"weights file {file} does not hold a state dict")
    return state


def freeze(modules) -> None:
    """No gradients for the parameters of ``modules`` (the benchmark's frozen layers)."""
    for module in modules:
        for param in module.parameters():
            param.requires_grad = False
