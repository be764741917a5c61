"""R-MAC: max pooling over a multi-scale grid of square regions (Tolias et al.), each region's
vector L2-normalised, summed with the global MAC vector (benchmark ``rmac``, L = 3 levels,
40% overlap). No pyramid rule: the region grid depends on the feature map, so the regions of
several scales joined are not the regions of each scale."""

from __future__ import annotations

import math

import torch
from torch import nn

from vprkit.models.aggregations.base import ShallowAggregation, register

OVERLAP = 0.4  # wanted overlap of neighbouring regions
STEPS = (2, 3, 4, 5, 6, 7)  # candidate numbers of regions along the long side


def _unit_max(x: torch.Tensor, eps: float) -> torch.Tensor:
    v = x.amax(dim=(-2, -1), keepdim=True)
    return v / (v.norm(p=2, dim=1, keepdim=True) + eps)


def _starts(size: int, side: int, count: int) -> list[int]:
    """``count`` region starts of width ``side`` spread over ``size`` locations."""
    step = 0.0 if count == 1 else (size - side) / (count - 1)
    half = math.floor(side / 2 - 1)
    centres = torch.floor(half + torch.arange(count, dtype=torch.float32) * step) - half
    return [int(c) for c in centres.tolist()]


def regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int]]:
    """(top, left, side) of every region of the grid, level by level."""
    short = min(height, width)
    extra_h = extra_w = 0
    if height != width:  # in float32 as the benchmark: it decides ties such as 5 x 9
        gaps = (max(height, width) - short) / (torch.tensor(STEPS, dtype=torch.float32) - 1)
        costs = ((short**2 - short * gaps) / short**2 - OVERLAP).abs()
        extra = int(torch.min(costs, 0).indices) + 1
        extra_h, extra_w = (extra, 0) if height > width else (0, extra)
    out = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        for top in _starts(height, side, level + extra_h):
            for left in _starts(width, side, level + extra_w):
                out.append((top, left, side))
    return out


class _RegionMaxPool(nn.Module):
    def __init__(self, levels: int = 3, eps: float = 1e-6):
        super().__init__()
        self.levels = levels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = _unit_max(x, self.eps)
        for top, left, side in regions(x.shape[-2], x.shape[-1], self.levels):
            v = v + _unit_max(x[:, :, top : top + side, left : left + side], self.eps)
        return v


@register("rmac")
class RMAC(ShallowAggregation):
    """Regional max pooling (benchmark ``rmac``); no pyramid rule."""

    help = "regional max pooling (no pyramid)"
    pyramid_rule = None

    def __init__(self, l2: str = "before_pool"):
        super().__init__(_RegionMaxPool(), l2)
