"""MegaLoc (Berton & Masone, 2025): DINOv2 ViT-B/14 + SALAD + a linear projection to 8448.

Released variant (``gmberton/MegaLoc``, ``hubconf.get_trained_model``): ``megaloc_dinov2_8448``.
Its ``MegaLocModel``:

- ``backbone``: DINOv2 ViT-B/14 (``torch.hub`` ``dinov2_vitb14``), last 4 blocks trained,
  final norm applied, patch map and class token returned (SALAD's wrapper);
- ``aggregator.agg``: SALAD with 64 clusters of **256** dimensions, a 256-dimensional token and
  hidden width 512 (64 * 256 + 256 = 16640; the Sinkhorn step is OpenGlue's formulation of
  the same 3 log-domain iterations, with the same masses and dustbin);
- ``aggregator.linear``: Linear 16640 -> 8448, then ``l2norm`` (L2 over dim 1).

Its ``forward`` first resizes images whose sides are not multiples of 14 to the nearest ones
(``round(side / 14) * 14``, bilinear with antialiasing, as torchvision's tensor ``resize``);
vprkit keeps that step inside the network, so the spec's ``multiple_of`` is 1: any size is
taken, as upstream takes it (a side already a multiple of 14 is left alone).

The released file, ``megaloc.torch`` (GitHub release v1.0; ``hubconf.py`` loads it with
``torch.hub.load_state_dict_from_url`` into the model strictly), is a plain state dict:
``backbone.model.*`` (facebookresearch DINOv2 keys, ``mask_token`` included),
``aggregator.agg.{token_features.0, token_features.2, cluster_features.0, cluster_features.3,
score.0, score.3}.{weight, bias}``, ``aggregator.agg.dust_bin`` and
``aggregator.linear.{weight, bias}``.

Resolution: upstream's model takes each image at its own size (only rounding the sides to
multiples of 14), and its evaluation code (``VPR-methods-evaluation``, ``--image_size``
default None) does not resize: ``resize=None``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.zoo.base import ZooSpec, register
from vprkit.models.zoo.dinov2 import PATCH_SIZE, DinoV2Backbone, build_dinov2_vitb14
from vprkit.models.zoo.salad import SaladAggregator, load_backbone_and_head


class MegaLocAggregator(nn.Module):
    """``agg`` (SALAD, 64 x 256 + 256) then ``linear`` (16640 -> ``feat_dim``)."""

    def __init__(
        self,
        feat_dim: int = 8448,
        num_clusters: int = 64,
        cluster_dim: int = 256,
        token_dim: int = 256,
        mlp_dim: int = 512,
    ):
        super().__init__()
        self.agg = SaladAggregator(
            num_channels=768,
            num_clusters=num_clusters,
            cluster_dim=cluster_dim,
            token_dim=token_dim,
            mlp_dim=mlp_dim,
        )
        self.linear = nn.Linear(self.agg.output_dim, feat_dim)

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.linear(self.agg(features))


class MegaLoc(nn.Module):
    """Upstream's ``MegaLocModel`` at inference: (B, 3, H, W) normalised -> (B, 8448), L2."""

    def __init__(self, backbone: DinoV2Backbone, aggregator: MegaLocAggregator):
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise VprkitError(f"MegaLoc takes (B, 3, H, W) images, not {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % PATCH_SIZE or w % PATCH_SIZE:
            h, w = round(h / PATCH_SIZE) * PATCH_SIZE, round(w / PATCH_SIZE) * PATCH_SIZE
            if h == 0 or w == 0:
                raise VprkitError(
                    f"MegaLoc needs images of at least {PATCH_SIZE // 2 + 1} "
                    f"pixels a side, not {tuple(images.shape[-2:])}"
                )
            images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        patches = (h // PATCH_SIZE) * (w // PATCH_SIZE)
        if patches <= self.aggregator.agg.num_clusters:  # upstream: math.log(n - m) fails
            raise VprkitError(
                f"MegaLoc needs more than {self.aggregator.agg.num_clusters} "
                f"patches of 14 pixels, not {patches} ({h}x{w}): use larger images"
            )
        return F.normalize(self.aggregator(self.backbone(images)), p=2.0, dim=1)


def build_megaloc() -> MegaLoc:
    """The released architecture with random weights, in eval mode (dropout off)."""
    backbone = build_dinov2_vitb14(norm_layer=True, return_token=True, num_trainable_blocks=4)
    return MegaLoc(backbone, MegaLocAggregator()).eval()


def load_megaloc(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``megaloc.torch``'s state dict into ``build_megaloc()``'s module."""
    load_backbone_and_head(module, state, "MegaLoc", "aggregator.")


register(
    ZooSpec(
        name="megaloc_dinov2_8448",
        family="megaloc",
        backbone="DINOv2 ViT-B/14 (last 4 blocks fine-tuned)",
        aggregation="SALAD (64 x 256 + 256) + Linear 16640->8448 + L2",
        output_dim=8448,
        build=build_megaloc,
        load_state_dict=load_megaloc,
        resize=None,
        multiple_of=1,  # the network rounds the sides to multiples of 14 itself, as upstream
        weights="https://github.com/gmberton/MegaLoc/releases/download/v1.0/megaloc.torch (megaloc.torch)",
        requires=("timm",),
        notes="upstream runs each image at its own size, rounding the sides to the nearest "
        "multiples of 14 (bilinear, antialiased); megaloc.torch is a plain state dict "
        "(backbone.model.*, aggregator.agg.*, aggregator.linear.*); images need more than 64 "
        "patches of 14x14 pixels",
    )
)
