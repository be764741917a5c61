"""DINOv2 SALAD (Izquierdo & Civera, CVPR 2024): DINOv2 ViT-B/14 + optimal-transport aggregation.

Released variant (``serizba/salad``, ``hubconf.dinov2_salad``): ``salad_dinov2_8448``, a
DINOv2 ViT-B/14 whose last 4 blocks were fine-tuned on GSV-Cities (``num_trainable_blocks=4``,
``norm_layer=True``, ``return_token=True``), and SALAD with 64 clusters of 128 dimensions and a
256-dimensional global token: 64 * 128 + 256 = 8448.

The aggregator (``SaladAggregator``), on the normalised patch map f (B, 768, h, w) and class
token t (B, 768):

- ``cluster_features`` (1x1 conv 768 -> 512, dropout, ReLU, 1x1 conv 512 -> 128) gives each
  patch's local feature; ``score`` (the same shape, 512 -> 64) its score for each cluster;
  ``token_features`` (Linear 768 -> 512, ReLU, Linear 512 -> 256) the global token;
- the scores, with a learned dustbin row (``dust_bin``, a scalar), go through 3 log-domain
  Sinkhorn iterations (SuperGlue's optimal transport: mass 1/(m+n) for each of the m clusters
  and n patches, (n-m)/(m+n) for the dustbin), scaled back by m+n, exponentiated, and the
  dustbin row dropped: an (m, n) assignment;
- each cluster's descriptor is the assignment-weighted sum of the local features, L2-normalised
  per cluster and flattened feature-major (index = feature * 64 + cluster, as upstream's
  ``flatten(1)`` of (B, 128, 64)); it follows the L2-normalised token, and the whole is
  L2-normalised.

The released file, ``dino_salad.ckpt`` (GitHub release v1.0.0; also on Google Drive from the
README), is despite its name a plain state dict (``hubconf.py`` and ``eval.py`` pass it straight
to ``load_state_dict``): ``backbone.model.*`` (facebookresearch DINOv2 keys, ``mask_token``
included) and ``aggregator.{token_features.0, token_features.2, cluster_features.0,
cluster_features.3, score.0, score.3}.{weight, bias}`` and ``aggregator.dust_bin``. A Lightning
checkpoint of one's own training (``{"state_dict": ...}``) is also read where
``load_safely`` accepts it.

Upstream evaluates at 322 x 322 (README and ``eval.py --image_size 322 322``: a bilinear
``T.Resize`` of the PIL image, ToTensor, ImageNet normalisation), in float16 autocast on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.zoo.base import ZooSpec, register, strict_load
from vprkit.models.zoo.dinov2 import DinoV2Backbone, build_dinov2_vitb14, load_dinov2_state

SINKHORN_ITERATIONS = 3  # upstream's log_optimal_transport(p, dust_bin, 3)


def log_optimal_transport(
    scores: torch.Tensor, dustbin: torch.Tensor, iterations: int = SINKHORN_ITERATIONS
) -> torch.Tensor:
    """Log assignment (B, m + 1, n) of n patches to m clusters and a dustbin (the last row):
    ``iterations`` Sinkhorn normalisations in log space of the scores (B, m, n) with a dustbin
    row of value ``dustbin``, the masses 1/(m+n) per cluster and patch and (n-m)/(m+n) for the
    dustbin, times m+n. Needs n >= m (the dustbin's mass)."""
    b, m, n = scores.shape
    if n < m:
        raise VprkitError(
            f"SALAD needs at least as many patches as clusters ({m}), not {n}: use larger images"
        )
    couplings = torch.cat((scores, dustbin.to(scores).expand(b, 1, n)), dim=1)
    log_norm = -math.log(m + n)
    log_rows = torch.full((m + 1,), log_norm, dtype=scores.dtype, device=scores.device)
    log_rows[m] = (math.log(n - m) if n > m else -math.inf) + log_norm
    log_cols = torch.full((n,), log_norm, dtype=scores.dtype, device=scores.device)
    u = torch.zeros(b, m + 1, dtype=scores.dtype, device=scores.device)
    v = torch.zeros(b, n, dtype=scores.dtype, device=scores.device)
    for _ in range(iterations):
        u = log_rows - torch.logsumexp(couplings + v.unsqueeze(1), dim=2)
        v = log_cols - torch.logsumexp(couplings + u.unsqueeze(2), dim=1)
    return couplings + u.unsqueeze(2) + v.unsqueeze(1) - log_norm


class SaladAggregator(nn.Module):
    """SALAD's head (upstream's ``SALAD`` module, its parameter names); ``mlp_dim`` is MegaLoc's
    generalisation of the hidden width (512 in both releases)."""

    def __init__(
        self,
        num_channels: int = 768,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        mlp_dim: int = 512,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.num_clusters, self.cluster_dim, self.token_dim = num_clusters, cluster_dim, token_dim
        self.token_features = nn.Sequential(
            nn.Linear(num_channels, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, token_dim)
        )
        drop: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.cluster_features = nn.Sequential(
            nn.Conv2d(num_channels, mlp_dim, 1), drop, nn.ReLU(), nn.Conv2d(mlp_dim, cluster_dim, 1)
        )
        self.score = nn.Sequential(
            nn.Conv2d(num_channels, mlp_dim, 1), drop, nn.ReLU(), nn.Conv2d(mlp_dim, num_clusters, 1)
        )
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    @property
    def output_dim(self) -> int:
        return self.num_clusters * self.cluster_dim + self.token_dim

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(patch map (B, C, h, w), class token (B, C)) -> (B, m * l + g), L2-normalised."""
        patches, token = features
        local = self.cluster_features(patches).flatten(2)  # (B, l, n)
        scores = self.score(patches).flatten(2)  # (B, m, n)
        glob = self.token_features(token)  # (B, g)
        assignment = log_optimal_transport(scores, self.dust_bin).exp()[:, :-1]  # (B, m, n)
        clusters = torch.einsum("bln,bmn->blm", local, assignment)  # (B, l, m)
        out = torch.cat(
            (F.normalize(glob, p=2, dim=-1), F.normalize(clusters, p=2, dim=1).flatten(1)), dim=-1
        )
        return F.normalize(out, p=2, dim=-1)


class DinoSalad(nn.Module):
    """``backbone`` (DINOv2 ViT-B/14, patch map and normalised class token) + ``aggregator``
    (SALAD): upstream's ``VPRModel`` at inference."""

    def __init__(self, backbone: DinoV2Backbone, aggregator: SaladAggregator):
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregator(self.backbone(x))


def build_salad() -> DinoSalad:
    """The released architecture with random weights, in eval mode (dropout off)."""
    backbone = build_dinov2_vitb14(norm_layer=True, return_token=True, num_trainable_blocks=4)
    return DinoSalad(
        backbone, SaladAggregator(num_channels=768, num_clusters=64, cluster_dim=128, token_dim=256)
    ).eval()


def unwrap_state(state: Any, what: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded file: the file itself, or a Lightning checkpoint's
    ``state_dict``; ``module.`` (DataParallel) prefixes dropped."""
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise VprkitError(
            f"this is not a {what} state dict (a {type(state).__name__}, not a dict of tensors)"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_backbone_and_head(module: nn.Module, state: Any, what: str, head: str) -> None:
    """Put a SALAD-style release (``backbone.model.*`` DINOv2 keys, the head under ``head``)
    into ``module`` (attributes ``backbone``, ``aggregator``), strictly."""
    state = unwrap_state(state, what)
    if not any(k.startswith("backbone.model.") for k in state):
        first = next(iter(state), None)
        raise VprkitError(
            f"this is not a {what} state dict (no backbone.model.* DINOv2 keys; first key {first!r})"
        )
    used = load_dinov2_state(module.backbone, state, "backbone.model.", what)  # type: ignore[arg-type]
    head_state = {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}
    rest = [k for k in state if k not in used and not k.startswith(head)]
    if rest:
        raise VprkitError(
            f"this is not a {what} state dict (unexpected {rest[0]!r}; {len(rest)} unexpected keys)"
        )
    strict_load(module.aggregator, head_state, what)  # type: ignore[arg-type]


def load_salad(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``dino_salad.ckpt``'s state dict into ``build_salad()``'s module."""
    load_backbone_and_head(module, state, "DINOv2 SALAD", "aggregator.")


register(
    ZooSpec(
        name="salad_dinov2_8448",
        family="salad",
        backbone="DINOv2 ViT-B/14 (last 4 blocks fine-tuned)",
        aggregation="SALAD (64 x 128 optimal transport + 256 token) + L2",
        output_dim=8448,
        build=build_salad,
        load_state_dict=load_salad,
        resize=(322, 322),
        multiple_of=14,
        weights="https://github.com/serizba/salad/releases/download/v1.0.0/dino_salad.ckpt (dino_salad.ckpt)",
        requires=("timm",),
        notes="upstream evaluates at 322x322 (bilinear resize, ImageNet normalisation), in float16 "
        "autocast on CUDA; dino_salad.ckpt is a plain state dict (backbone.model.*, "
        "aggregator.*); images need sides multiple of 14 and at least 64 patches",
    )
)
