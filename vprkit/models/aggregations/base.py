"""What every aggregation shares: the registry (``REGISTRY``, the ``register`` decorator), the
declaration (class attributes and the ``Options`` dataclass), the benchmark's L2 placement
around shallow pooling layers, and its fully connected head.

An aggregation is one module of this package holding one subclass of ``Aggregation``
decorated with ``@register("<the module's name>")`` (see ``Aggregation``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from vprkit.descriptors.pyramid import NO_RULE, stat_spec
from vprkit.errors import VprkitError
from vprkit.models.registry import Registry

L2_PLACEMENTS = ("before_pool", "after_pool", "none")  # the benchmark's --l2; default first


class L2Norm(nn.Module):
    """L2-normalise along ``dim`` (per location across channels for feature maps)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=self.dim)


class Flatten(nn.Module):
    """(N, C, 1, 1) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2:] != (1, 1):
            raise ValueError(f"Flatten expects (N, C, 1, 1), got {tuple(x.shape)}")
        return x[:, :, 0, 0]


class Aggregation(nn.Module):
    """Base of every aggregation layer: ``forward(features (N, C, H, W)) -> (N, D)``.

    Class attributes (the registry entry):
        name: the ``--aggregation`` name, the module's name (set by ``register``).
        help: one line for the documentation.
        uses_l2: the benchmark's ``--l2`` placement applies (shallow pooling layers).
        pyramid_rule: the ``vprkit.descriptors.pyramid`` rule (None: no pyramid of stored scales).
        Options: its options, a frozen dataclass of typed defaults extending the base's (every
            aggregation takes ``fc_output_dim``: the benchmark's fully connected head, which
            ``build_aggregation`` adds); ``build`` receives an instance.

    Subclasses implement ``build``, ``output_dim``, ``recognise`` and, with a pyramid rule,
    ``forward_with_stats`` and ``pyramid_params``.
    """

    @dataclass(frozen=True)
    class Options:
        """Every aggregation's options: ``fc_output_dim``, a Linear layer to this dimension then
        L2 after the layer (None: none)."""

        fc_output_dim: int | None = None

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    uses_l2: ClassVar[bool] = False
    pyramid_rule: ClassVar[str | None] = None

    @classmethod
    def build(cls, channels: int, options: Any) -> Aggregation:
        """The layer for ``channels`` input channels with ``options`` (an ``Options``)."""
        raise NotImplementedError

    @classmethod
    def recognise(cls, state: dict[str, torch.Tensor]) -> list[dict] | None:
        """The options (e.g. ``{"clusters": 64}``) of every layout of this aggregation that the
        state dict of the layer (keys without ``aggregation.``) fits; None where none fits."""
        raise NotImplementedError

    def output_dim(self, channels: int) -> int:
        return channels

    def init_from_descriptors(self, descriptors: Any, seed: int = 0) -> None:
        """Initialise from sampled local features (NetVLAD's k-means); others have nothing to."""
        raise VprkitError(f"the {self.name} aggregation has no initialisation from local features")

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The descriptors and the per-image statistics of ``pyramid_params()``'s rule."""
        return self(x), {}

    def pyramid_params(self) -> dict:
        """The pyramid rule (``type``) and its parameters, stored in descriptor files."""
        return {"type": NO_RULE, "aggregation": self.name}

    def stats_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Per-image statistic -> (per-row shape, dtype), as the pyramid rule needs them."""
        return stat_spec(self.pyramid_params())


A = TypeVar("A", bound=type[Aggregation])

# the aggregations: one module of this package per name (see vprkit.models.registry)
REGISTRY: Registry[type[Aggregation]] = Registry("aggregation", "vprkit.models.aggregations")


def register(name: str) -> Callable[[A], A]:
    """Decorator: register the decorated ``Aggregation`` subclass as ``name`` (the name of the
    module that defines it, for the package's own) and set its ``name``."""

    def add(cls: A) -> A:
        cls.name = name
        REGISTRY.add(name, cls, cls.__module__)
        return cls

    return add


def check_l2(l2: str) -> str:
    """``l2`` when it is one of the benchmark's placements, else one clear error."""
    if l2 not in L2_PLACEMENTS:
        raise VprkitError(f"unknown --l2 {l2!r}; choose one of {', '.join(L2_PLACEMENTS)}")
    return l2


class ShallowAggregation(Aggregation, nn.Sequential):
    """A pooling layer (N, C, H, W) -> (N, C, 1, 1) with the benchmark's L2 placement:
    ``before_pool``: (L2Norm, pool, Flatten); ``after_pool``: (pool, L2Norm, Flatten);
    ``none``: (pool, Flatten). The state dict keys are the benchmark's (GeM: ``1.p`` or ``0.p``).
    """

    uses_l2 = True

    @dataclass(frozen=True)
    class Options(Aggregation.Options):
        """A pooling layer's options: ``l2``, the benchmark's placement of the L2 norm."""

        l2: str = L2_PLACEMENTS[0]

    def __init__(self, pool: nn.Module, l2: str = "before_pool"):
        layers = {
            "before_pool": [L2Norm(dim=1), pool, Flatten()],
            "after_pool": [pool, L2Norm(dim=1), Flatten()],
            "none": [pool, Flatten()],
        }[check_l2(l2)]
        super().__init__(*layers)
        self.l2 = l2

    @property
    def pool(self) -> nn.Module:
        return self[1] if self.l2 == "before_pool" else self[0]

    @classmethod
    def build(cls, channels: int, options: Any) -> Aggregation:
        return cls(l2=options.l2)  # type: ignore[call-arg]  # subclasses take l2 alone

    @classmethod
    def recognise(cls, state: dict[str, torch.Tensor]) -> list[dict] | None:
        """Parameter-free pooling: fits a state dict without keys, with any placement."""
        return None if state else [{"l2": placement} for placement in L2_PLACEMENTS]

    @classmethod
    def placements_of(cls, state: dict[str, torch.Tensor], param: str) -> list[dict] | None:
        """Placements that put the pooling layer's only parameter ``param`` where it is."""
        if set(state) == {f"1.{param}"}:
            return [{"l2": "before_pool"}]
        if set(state) == {f"0.{param}"}:
            return [{"l2": "after_pool"}, {"l2": "none"}]
        return None

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) pooled features before any L2 after pooling."""
        if self.l2 == "before_pool":
            x = self[0](x)
        return self.pool(x)[:, :, 0, 0]

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pooled = self.pooled(x)
        desc = F.normalize(pooled, p=2.0, dim=1) if self.l2 == "after_pool" else pooled
        count = torch.full((x.shape[0],), x.shape[-2] * x.shape[-1], dtype=torch.int64)
        stats = {"count": count, "norm": pooled.norm(p=2, dim=1)}
        return desc, {k: stats[k] for k in self.stats_spec()}

    def rule_params(self) -> dict:
        """The rule's own parameters (e.g. GeM's ``p``); ``l2`` is added for ``after_pool``."""
        return {}

    def pyramid_params(self) -> dict:
        if self.pyramid_rule is None:
            return super().pyramid_params()
        params = {"type": self.pyramid_rule, **self.rule_params()}
        if self.l2 == "after_pool":
            params["l2"] = "after_pool"
        return params


class WithFC(Aggregation, nn.Sequential):
    """The benchmark's ``--fc_output_dim``: (aggregation, Linear, L2Norm). The pyramid is lost (the
    linear layer mixes what the rules combine), so there is no pyramid rule."""

    def __init__(self, inner: Aggregation, in_dim: int, out_dim: int):
        super().__init__(inner, nn.Linear(in_dim, out_dim), L2Norm(dim=1))
        self.name = f"{inner.name}+fc"  # type: ignore[misc]  # per instance: the inner's name
        self.fc_output_dim = out_dim

    @property
    def inner(self) -> Aggregation:
        inner = self[0]
        assert isinstance(inner, Aggregation)
        return inner

    def output_dim(self, channels: int) -> int:
        return self.fc_output_dim

    def init_from_descriptors(self, *args, **kwargs) -> None:
        """The inner layer's initialisation (NetVLAD's k-means); the linear layer keeps its own."""
        self.inner.init_from_descriptors(*args, **kwargs)
