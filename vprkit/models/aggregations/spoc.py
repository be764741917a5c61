"""SPoC: average pooling (benchmark ``spoc``). Pyramid: the location-weighted mean of the scales,
the power-mean rule with p = 1."""

from __future__ import annotations

import torch
from torch import nn

from vprkit.models.aggregations.base import ShallowAggregation, register


class _MeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


@register("spoc")
class SPoC(ShallowAggregation):
    """Average pooling (benchmark ``spoc``)."""

    help = "average pooling"
    pyramid_rule = "power_mean"

    def __init__(self, l2: str = "before_pool"):
        super().__init__(_MeanPool(), l2)

    def rule_params(self) -> dict:
        return {"p": 1.0}
