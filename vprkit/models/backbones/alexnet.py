"""AlexNet's convolutional part without its last ReLU and max-pool (ends at conv5, 256 channels),
its first five layers (conv1, conv2 and their ReLU/max-pool) frozen, as in the benchmark.
Its stride is about 16 (no padding to a multiple: 480 x 640 gives 29 x 39 locations)."""

from __future__ import annotations

from torch import nn

from vprkit.models.backbones.base import BackboneSpec, freeze, register, torchvision_model

NAMES = ("alexnet",)  # what this module registers (vprkit.choices reads it without importing)


def _build(weights: str) -> nn.Sequential:
    features = torchvision_model("alexnet", weights).features
    assert isinstance(features, nn.Module)
    layers = list(features.children())[:-2]
    freeze(layers[:5])
    return nn.Sequential(*layers)


def _recognise(state) -> bool:
    first = state.get("0.weight")
    return first is not None and tuple(first.shape) == (64, 3, 11, 11) and "10.weight" in state


register(BackboneSpec(NAMES[0], 256, 16, _build, _recognise, "AlexNet conv5"))
