"""``DescriptorNet``: what every network offers the pipeline (extraction, locate, training).

A classic network (``vprkit.models.network.VPRModel``: a backbone, then an aggregation) and a
model of the zoo (``vprkit.models.zoo.ZooNetwork``) both implement it, so that no caller asks
which one it holds: the descriptor dimension, a forward pass with the per-image statistics of
its pyramid rule (none where it has no rule), the preprocessing it needs (``InputRule``), and
the record of itself that a descriptor file's header keeps (``describe``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from typing_extensions import Self

from vprkit.data.images import MEAN, STD

if TYPE_CHECKING:
    from vprkit.models.config import ModelConfig


@dataclass(frozen=True)
class InputRule:
    """The preprocessing a network needs.

    Attributes:
        resize: the (H, W) it is evaluated at upstream (None: no size of its own; the
            benchmark's 480 x 640 or the images' native size, as asked).
        multiple_of: image sides must be multiples of this (14 for DINOv2's patches).
        mean, std: the input normalisation, per RGB channel.
    """

    resize: tuple[int, int] | None = None
    multiple_of: int = 1
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD


class DescriptorNet(Protocol):
    """A network that maps a normalised image batch (N, 3, H, W) to descriptors (N, D).

    Attributes:
        config: the ``ModelConfig`` it was built from.
        backbone: the part whose BatchNorm layers inference folds and whose fingerprint a
            descriptor file records (a zoo model: the whole network).
    """

    config: ModelConfig
    backbone: nn.Module

    @property
    def label(self) -> str:
        """What error lines call it (a classic network's backbone, a zoo model's name)."""
        ...

    @property
    def output_dim(self) -> int:
        """The descriptor dimension D."""
        ...

    @property
    def input_rule(self) -> InputRule:
        """The preprocessing it needs."""
        ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors (N, D) of a batch (N, 3, H, W)."""
        ...

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Descriptors and the per-image statistics of its pyramid rule (empty: no rule)."""
        ...

    def stats_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Statistic -> (per-row shape, dtype) of what ``forward_with_stats`` returns."""
        ...

    def pyramid_params(self) -> dict:
        """Its pyramid rule (``type``, ``vprkit.descriptors.pyramid``) and its parameters, as a
        descriptor file's ``aggregation`` header records them."""
        ...

    def describe(self) -> dict:
        """The record of the network in a descriptor file's ``model`` header: its config
        (``ModelConfig.to_dict``), a zoo model's parts for tables, ``output_dim``,
        ``fingerprint`` and ``backbone_fingerprint``."""
        ...

    # the nn.Module methods the pipeline calls
    def eval(self) -> Self: ...

    def to(self, *args: Any, **kwargs: Any) -> Self: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> Any: ...


def fingerprint(model: nn.Module | DescriptorNet) -> str:
    """SHA-256 of every tensor of the state dict (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def record(net: DescriptorNet, parts: dict | None = None) -> dict:
    """``describe()`` of ``net``: its config (a weights file by its absolute path), ``parts``
    (a zoo model's backbone and aggregation, for tables), its dimension and fingerprints."""
    config = net.config.to_dict()
    if config["weights"] not in ("imagenet", "none"):
        config["weights"] = str(Path(config["weights"]).resolve())
    return {
        **config,
        **(parts or {}),
        "output_dim": net.output_dim,
        "fingerprint": fingerprint(net),
        "backbone_fingerprint": fingerprint(net.backbone),
    }
