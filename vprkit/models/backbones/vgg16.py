"""VGG-16's convolutional part without its last ReLU and max-pool, all but the last five layers
frozen, as in the benchmark."""

from __future__ import annotations

from torch import nn

from vprkit.models.backbones.base import freeze, register, torchvision_model
from vprkit.models.options import NoOptions


def _recognise(state) -> bool:
    first = state.get("0.weight")
    return first is not None and tuple(first.shape) == (64, 3, 3, 3) and "28.weight" in state


@register("vgg16", channels=512, stride=16, recognise=_recognise, help="VGG-16 conv5_3")
def build(weights: str, options: NoOptions) -> nn.Sequential:
    """The cut VGG-16 with ``weights``."""
    features = torchvision_model("vgg16", weights).features
    assert isinstance(features, nn.Module)
    layers = list(features.children())[:-2]
    freeze(layers[:-5])
    return nn.Sequential(*layers)
