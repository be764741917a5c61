"""The place-recognition network: a backbone followed by an aggregation layer."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vprkit.models.aggregations import build_aggregation
from vprkit.models.backbones import backbone_channels, build_backbone


@dataclass
class ModelConfig:
    """Everything that defines a network's architecture and where its weights came from.

    The descriptor dimension D is the backbone's channels C for GeM and ``clusters x C`` for
    NetVLAD (ResNet-18 conv4: C = 256, so GeM 256-D and NetVLAD with 64 clusters 16384-D).

    Attributes:
        backbone: ``"resnet18conv4"`` (256 channels, stride 16), ``"resnet18conv5"`` (512),
            ``"resnet50conv4"`` (1024), ``"resnet50conv5"`` (2048), ``"vgg16"`` (512) or
            ``"efficientnet_lite0"`` (112; extra ``vprkit[efficientnet]``).
            Also ``"resnet101conv4"`` (1024), ``"resnet101conv5"`` (2048), ``"alexnet"`` (256).
            The registry: ``vprkit.models.backbones``.
        aggregation: ``"gem"``, ``"netvlad"``, ``"mac"``, ``"spoc"`` or ``"rmac"`` (the registry:
            ``vprkit.models.aggregations``).
        clusters: NetVLAD clusters K (unused by the others).
        l2: the benchmark's ``--l2`` for gem, mac, spoc and rmac: ``"before_pool"`` (per location,
            the default; None means it too), ``"after_pool"`` or ``"none"``.
        fc_output_dim: the benchmark's ``--fc_output_dim``: a Linear layer to this dimension, then
            L2, after the aggregation (None: no such layer).
        weights: ``"imagenet"`` (torchvision's pretrained weights), ``"none"`` (random, seeded)
            or the path of a torchvision state dict of the backbone.
        checkpoint: a benchmark or vprkit checkpoint; when set, its weights (and the
            architecture it holds) are used instead of ``weights``. With ``model``, the
            upstream release's own weight file.
        model: a model of the zoo (``vprkit.models.zoo``, ``vprkit models``: CosPlace,
            EigenPlaces, MixVPR, ...), built whole; ``backbone``, ``aggregation``, ``clusters``,
            ``l2`` and ``fc_output_dim`` are then not used.
    """

    backbone: str = "resnet18conv4"
    aggregation: str = "gem"
    clusters: int = 64
    weights: str = "imagenet"  # imagenet | none | path to a backbone state dict
    checkpoint: str | None = None  # a benchmark or vprkit checkpoint (overrides weights)
    l2: str | None = None  # before_pool (None) | after_pool | none
    fc_output_dim: int | None = None
    model: str | None = None  # a zoo model (vprkit models); backbone and aggregation unused

    def to_dict(self) -> dict:
        """The fields; ``l2`` and ``fc_output_dim`` only where they are not the defaults, so that
        configs (and descriptor file headers) made before these options existed are unchanged."""
        data = asdict(self)
        if data["l2"] in (None, "before_pool"):
            del data["l2"]
        if data["fc_output_dim"] is None:
            del data["fc_output_dim"]
        if data["model"] is None:
            del data["model"]
        else:  # a zoo model is its name: the composable fields do not apply
            for key in ("backbone", "aggregation", "clusters"):
                del data[key]
        return data


class VPRModel(nn.Module):
    """``backbone`` -> local features (N, C, H, W) -> ``aggregation`` -> descriptors (N, D)."""

    def __init__(self, config: ModelConfig):
        from vprkit.models.validation import check_sizes
        check_sizes(config)  # before any layer is built: no huge allocation
        super().__init__()
        self.config = config
        weights = "none" if config.checkpoint else config.weights
        self.backbone = build_backbone(config.backbone, weights)
        self.channels = backbone_channels(config.backbone)
        self.aggregation = build_aggregation(config.aggregation, self.channels, config.clusters,
                                             config.l2, config.fc_output_dim)

    @property
    def output_dim(self) -> int:
        return self.aggregation.output_dim(self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone(x))

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Descriptors plus the per-image statistics that the stored pyramid needs."""
        return self.aggregation.forward_with_stats(self.backbone(x))

    def forward_pyramid(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The paper's multi-scale pyramid computed by the network itself: the local features of
        every scale, flattened and concatenated along locations, aggregated once."""
        feats = [self.backbone(x) for x in images]
        joined = torch.cat([f.flatten(2) for f in feats], dim=2).unsqueeze(-1)
        return self.aggregation(joined)


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of every tensor of the state dict (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
