"""MAC: global max pooling (benchmark ``mac``). Pyramid: the element-wise max of the scales."""

from __future__ import annotations

import torch
from torch import nn

from vprkit.models.aggregations.base import ShallowAggregation, register


class _MaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1), keepdim=True)


@register("mac")
class MAC(ShallowAggregation):
    """Max pooling (benchmark ``mac``)."""

    help = "global max pooling"
    pyramid_rule = "max"

    def __init__(self, l2: str = "before_pool"):
        super().__init__(_MaxPool(), l2)
