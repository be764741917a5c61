"""The classic place-recognition network: a backbone followed by an aggregation layer, one
``DescriptorNet`` (``vprkit.models.protocol``)."""

from __future__ import annotations

import torch
from torch import nn

from vprkit.models.aggregations import build_aggregation
from vprkit.models.backbones import backbone_channels, build_backbone
from vprkit.models.config import ModelConfig, check_sizes
from vprkit.models.protocol import InputRule, fingerprint, record

__all__ = ["ModelConfig", "VPRModel", "fingerprint"]


class VPRModel(nn.Module):
    """``backbone`` -> local features (N, C, H, W) -> ``aggregation`` -> descriptors (N, D)."""

    def __init__(self, config: ModelConfig):
        check_sizes(config)  # before any layer is built: no huge allocation
        super().__init__()
        self.config = config
        weights = "none" if config.checkpoint else config.weights
        self.backbone: nn.Module = build_backbone(config.backbone, weights, config.backbone_options)
        self.channels = backbone_channels(config.backbone)
        self.aggregation = build_aggregation(
            config.aggregation,
            self.channels,
            config.clusters,
            config.l2,
            config.fc_output_dim,
            options=config.aggregation_options,
        )

    @property
    def label(self) -> str:
        """Its backbone's name (what fails on images too small for it)."""
        return self.config.backbone

    @property
    def output_dim(self) -> int:
        return self.aggregation.output_dim(self.channels)

    @property
    def input_rule(self) -> InputRule:
        """The benchmark's preprocessing: ImageNet's normalisation, any size."""
        return InputRule()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone(x))

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Descriptors plus the per-image statistics that the stored pyramid needs."""
        return self.aggregation.forward_with_stats(self.backbone(x))

    def stats_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return self.aggregation.stats_spec()

    def pyramid_params(self) -> dict:
        return self.aggregation.pyramid_params()

    def describe(self) -> dict:
        return record(self)

    def forward_pyramid(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The paper's multi-scale pyramid computed by the network itself: the local features of
        every scale, flattened and concatenated along locations, aggregated once."""
        feats = [self.backbone(x) for x in images]
        joined = torch.cat([f.flatten(2) for f in feats], dim=2).unsqueeze(-1)
        return self.aggregation(joined)
