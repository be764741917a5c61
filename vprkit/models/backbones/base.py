"""What backbones share: the registry entry (``BackboneSpec``, added by the ``register``
decorator on the module's builder) and weight loading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.options import NoOptions
from vprkit.models.registry import Registry
from vprkit.models.serialization import load_safely


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    Attributes:
        name: the ``--backbone`` name (its module's name).
        channels: channels C of its local features.
        stride: pixels per feature location (the map is about H/stride x W/stride).
        builder: ``builder(weights, options)`` -> ``nn.Sequential`` whose child indices are the
            benchmark's; ``weights`` is ``"imagenet"``, ``"none"`` or the path of a state dict
            file, ``options`` an instance of ``options``.
        recognise: whether a state dict's backbone keys (without ``backbone.``) are this one's.
        help: one line for the documentation.
        options: its options, a frozen dataclass with typed defaults (``NoOptions``: none).
    """

    name: str
    channels: int
    stride: int
    builder: Callable[[str, Any], nn.Sequential] = field(compare=False)
    recognise: Callable[[dict[str, torch.Tensor]], bool] = field(compare=False)
    help: str = ""
    options: type = NoOptions

    def build(self, weights: str = "imagenet", options: Any = None) -> nn.Sequential:
        """The backbone with ``weights`` (``imagenet``, ``none`` or a state dict file) and
        ``options`` (None: the defaults)."""
        return self.builder(weights, self.options() if options is None else options)


# the backbones: one module of this package per name (see vprkit.models.registry)
REGISTRY: Registry[BackboneSpec] = Registry("backbone", "vprkit.models.backbones")


def register(
    name: str,
    *,
    channels: int,
    stride: int,
    recognise: Callable[[dict[str, torch.Tensor]], bool],
    help: str = "",
    options: type = NoOptions,
) -> Callable[[Callable], Callable]:
    """Decorator: register the decorated ``builder(weights, options)`` as backbone ``name``
    (which must be the name of the module that defines it); the attributes are
    ``BackboneSpec``'s."""

    def add(builder: Callable[[str, Any], nn.Sequential]) -> Callable:
        spec = BackboneSpec(name, channels, stride, builder, recognise, help, options)
        REGISTRY.add(name, spec, builder.__module__)
        return builder

    return add


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
