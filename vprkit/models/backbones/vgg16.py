"""VGG-16's convolutional part without its last ReLU and max-pool, all but the last five layers
frozen, as in the benchmark."""

from __future__ import annotations

from torch import nn

from vprkit.models.backbones.base import BackboneSpec, freeze, register, torchvision_model

NAMES = ("vgg16",)  # what this module registers (vprkit.choices reads it without importing)


def _build(weights: str) -> nn.Sequential:
    features = torchvision_model("vgg16", weights).features
    assert isinstance(features, nn.Module)
    layers = list(features.children())[:-2]
    freeze(layers[:-5])
    return nn.Sequential(*layers)


def _recognise(state) -> bool:
    first = state.get("0.weight")
    return first is not None and tuple(first.shape) == (64, 3, 3, 3) and "28.weight" in state


register(BackboneSpec(NAMES[0], 512, 16, _build, _recognise, "VGG-16 conv5_3"))
