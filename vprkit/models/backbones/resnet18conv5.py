"""ResNet-18 up to ``layer4`` (``conv5``), the layers before ``layer3`` frozen (the benchmark's cut)."""

from __future__ import annotations

from torch import nn

from vprkit.models.backbones._resnet import build as build_resnet
from vprkit.models.backbones._resnet import register_resnet
from vprkit.models.options import NoOptions


@register_resnet("resnet18conv5")
def build(weights: str, options: NoOptions) -> nn.Sequential:
    """ResNet-18 up to layer4 with ``weights``."""
    return build_resnet("resnet18", "conv5", weights)
