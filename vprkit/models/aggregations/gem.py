"""GeM: local features (L2-normalised per location by default), generalised-mean pooled with a
learned exponent ``p`` (benchmark ``gem``; its key ``aggregation.1.p``). Pyramid: the power mean
of the scales weighted by their location counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vprkit.models.aggregations.base import ShallowAggregation, register


class GeMPool(nn.Module):
    """Generalised-mean pooling with a learned exponent ``p`` (init 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / self.p)


@register("gem")
class GeM(ShallowAggregation):
    """Generalised-mean pooling with a learned exponent (benchmark ``gem``)."""

    help = "generalised-mean pooling, learned p"
    pyramid_rule = "gem"

    @dataclass(frozen=True)
    class Options(ShallowAggregation.Options):
        """GeM's options: ``p``, the exponent it starts from (then learned)."""

        p: float = 3.0

    def __init__(self, p: float = 3.0, eps: float = 1e-6, l2: str = "before_pool"):
        super().__init__(GeMPool(p=p, eps=eps), l2)

    @classmethod
    def build(cls, channels: int, options: Any) -> GeM:
        return cls(p=options.p, l2=options.l2)

    @classmethod
    def recognise(cls, state):
        return cls.placements_of(state, "p")

    def rule_params(self) -> dict:
        p, eps = self.pool.p, self.pool.eps
        assert isinstance(p, torch.Tensor)
        return {"p": float(p.detach().cpu().item()), "eps": eps}
