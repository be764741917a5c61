"""AlexNet's convolutional part without its last ReLU and max-pool (ends at conv5, 256 channels),
its first five layers (conv1, conv2 and their ReLU/max-pool) frozen, as in the benchmark.
Its stride is about 16 (no padding to a multiple: 480 x 640 gives 29 x 39 locations)."""

from __future__ import annotations

from torch import nn

from vprkit.models.backbones.base import freeze, register, torchvision_model
from vprkit.models.options import NoOptions


def _recognise(state) -> bool:
    first = state.get("0.weight")
    return first is not None and tuple(first.shape) == (64, 3, 11, 11) and "10.weight" in state


@register("alexnet", channels=256, stride=16, recognise=_recognise, help="AlexNet conv5")
def build(weights: str, options: NoOptions) -> nn.Sequential:
    """The cut AlexNet with ``weights``."""
    features = torchvision_model("alexnet", weights).features
    assert isinstance(features, nn.Module)
    layers = list(features.children())[:-2]
    freeze(layers[:5])
    return nn.Sequential(*layers)
