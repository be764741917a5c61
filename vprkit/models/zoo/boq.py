"""BoQ, Bag-of-Queries (Ali-bey, Chaib-draa and Giguère, CVPR 2024): learnable queries that
cross-attend to a backbone's (self-attended) local features, with ResNet-50 or DINOv2.

Upstream: https://github.com/amaralibey/Bag-of-Queries (``hubconf.py``'s ``get_trained_boq`` and
``VPRModel``, ``src/backbones.py``, ``src/boq.py``). Two networks are released, both on its
GitHub release v1.0 and loaded by ``torch.hub.load("amaralibey/bag-of-queries",
"get_trained_boq", ...)``:

- ``boq_resnet50_16384``: ``resnet50_16384.pth``. ResNet-50 cut after ``layer3`` (1024 channels,
  stride 16) as ``nn.Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3)``, then BoQ
  with ``proj_channels=512``, 64 queries, 2 blocks, ``row_dim=32``: 512 x 32 = 16384.
- ``boq_dinov2_12288``: ``dinov2_12288.pth``. DINOv2 ViT-B/14 (``torch.hub.load(
  "facebookresearch/dinov2", "dinov2_vitb14")``, all 12 blocks, patch tokens without the final
  norm: BoQ's ``DinoV2`` runs ``prepare_tokens_with_masks`` and the blocks itself) reshaped to a
  768-channel map, then BoQ with ``proj_channels=384``, 64 queries, 2 blocks, ``row_dim=32``:
  384 x 32 = 12288.

Each ``.pth`` is a bare state dict of ``VPRModel(backbone, aggregator)`` (``hubconf.py`` passes
``torch.hub.load_state_dict_from_url(url)`` straight to ``load_state_dict``):

- ``backbone.net.{0,1,4,5,6}...``: conv1, bn1, layer1, layer2, layer3 (ResNet-50). Upstream's
  later ``ResNet`` splits the same layers into ``backbone.frozen_layers`` (``0.0`` conv1, ``0.1``
  bn1, ``1`` layer1, ``2`` layer2) and ``backbone.unfrozen_layers.0`` (layer3), or, built
  without ImageNet weights, all into ``backbone.unfrozen_layers`` (``0.0``, ``0.1``, ``1``-``3``);
  both are read too.
- ``backbone.dino.{cls_token,pos_embed,mask_token,patch_embed.proj.*,blocks.N.*,norm.*}``: the
  facebookresearch DINOv2 layout, loaded by the zoo's shared DINOv2 backbone (``dinov2.py``:
  timm's ``vit_base_patch14_dinov2``, mapped key by key) as ``backbone.dino``; ``mask_token``
  (training masks) and ``norm`` (never applied; the later upstream code drops it) are loaded
  where the file has them and not used.
- ``aggregator.proj_c`` (3x3 conv), ``aggregator.norm_input``, ``aggregator.boqs.N.{encoder
  (nn.TransformerEncoderLayer), queries, self_attn, norm_q, cross_attn, norm_out}``,
  ``aggregator.fc``.

BoQ's blocks use ``nhead = proj_channels // 64`` (8 for ResNet-50, 6 for DINOv2) and
``dim_feedforward = 4 * proj_channels``, as ``src/boq.py`` builds them.

Preprocessing (upstream README): ``ToTensor``, ``Resize(384x384 for ResNet-50, 322x322 for
DINOv2, BICUBIC, antialias=True)``, ImageNet ``Normalize``; vprkit resizes bilinearly. ResNet-50
BoQ takes any size; DINOv2's sides must be multiples of 14, and its position embeddings (37 x 37,
for 518 x 518) are resized as DINOv2's ``interpolate_pos_encoding`` does (bicubic, no antialias,
scale factor ``(n + 0.1) / 37``; ``dinov2.interpolate_pos_encoding``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.zoo import dinov2
from vprkit.models.zoo.base import ZooSpec, register, strict_load, strip_prefix

RELEASE = "https://github.com/amaralibey/Bag-of-Queries/releases/download/v1.0/"
PATCH = dinov2.PATCH_SIZE


# ---------------------------------------------------------------------------------------------
# The aggregator
# ---------------------------------------------------------------------------------------------


class BoQBlock(nn.Module):
    """A transformer encoder layer over the local features, then the block's learnt queries
    (self-attended, normalised) cross-attending to them."""

    def __init__(self, dim: int, num_queries: int, heads: int) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True
        )
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, num_heads=heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads=heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder(x)
        q = self.queries.expand(x.shape[0], -1, -1)
        q = self.norm_q(q + self.self_attn(q, q, q, need_weights=False)[0])
        out = self.norm_out(self.cross_attn(q, x, x, need_weights=False)[0])
        return x, out


class BoQAggregator(nn.Module):
    """(B, C, H, W) -> 3x3 conv to ``proj_channels`` -> tokens -> BoQ blocks -> the queries'
    outputs of every block, projected (``fc``) from ``layers * queries`` to ``row_dim`` rows,
    flattened and L2-normalised: (B, proj_channels * row_dim)."""

    def __init__(
        self,
        in_channels: int,
        proj_channels: int,
        num_queries: int = 64,
        num_layers: int = 2,
        row_dim: int = 32,
    ) -> None:
        super().__init__()
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        self.boqs = nn.ModuleList(
            [BoQBlock(proj_channels, num_queries, proj_channels // 64) for _ in range(num_layers)]
        )
        self.fc = nn.Linear(num_layers * num_queries, row_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_input(self.proj_c(x).flatten(2).transpose(1, 2))
        outs = []
        for block in self.boqs:
            x, out = block(x)
            outs.append(out)
        rows = self.fc(torch.cat(outs, dim=1).transpose(1, 2))  # (B, proj_channels, row_dim)
        return F.normalize(rows.flatten(1), p=2, dim=-1)


class BoQNet(nn.Module):
    """Upstream's ``VPRModel`` for inference: ``aggregator(backbone(x))`` (without the
    attention maps it also returns)."""

    def __init__(self, backbone: nn.Module, aggregator: BoQAggregator) -> None:
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregator(self.backbone(x))


# ---------------------------------------------------------------------------------------------
# ResNet-50
# ---------------------------------------------------------------------------------------------


class ResNet50Layer3(nn.Module):
    """torchvision's ResNet-50 to ``layer3`` as ``net = Sequential(conv1, bn1, relu, maxpool,
    layer1, layer2, layer3)`` (upstream's ``backbone.net`` keys)."""

    def __init__(self) -> None:
        super().__init__()
        r = torchvision.models.resnet50(weights=None)
        self.net = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# upstream's split layouts -> ``backbone.net``
_SPLIT_RESNET = (
    (
        "backbone.frozen_layers.0.0.",
        "backbone.frozen_layers.0.1.",
        "backbone.frozen_layers.1.",
        "backbone.frozen_layers.2.",
        "backbone.unfrozen_layers.0.",
    ),
    (
        "backbone.unfrozen_layers.0.0.",
        "backbone.unfrozen_layers.0.1.",
        "backbone.unfrozen_layers.1.",
        "backbone.unfrozen_layers.2.",
        "backbone.unfrozen_layers.3.",
    ),
)
_NET = ("backbone.net.0.", "backbone.net.1.", "backbone.net.4.", "backbone.net.5.", "backbone.net.6.")


def _resnet_keys(state: dict) -> dict:
    """The ResNet backbone under ``backbone.net`` whichever of upstream's layouts it is in."""
    for layout in _SPLIT_RESNET:
        if any(k.startswith(layout[-1]) for k in state) and any(k.startswith(layout[0]) for k in state):
            renamed = {}
            for key, value in state.items():
                for old, new in zip(layout, _NET, strict=True):
                    if key.startswith(old):
                        key = new + key[len(old) :]
                        break
                renamed[key] = value
            return renamed
    return state


# ---------------------------------------------------------------------------------------------
# DINOv2 ViT-B/14: the zoo's shared backbone (``dinov2.py``), without the final norm
# ---------------------------------------------------------------------------------------------

DINOV2_PREFIX = "backbone.dino."  # upstream's DinoV2 wrapper holds the hub model as ``dino``
DINOV2_UNUSED = ("mask_token", "norm.weight", "norm.bias")  # never applied by BoQ


class DinoV2PatchMap(nn.Module):
    """DINOv2 ViT-B/14 as BoQ runs it: DINOv2's token preparation and all 12 blocks, no final
    norm, the patch tokens as a (B, 768, H/14, W/14) map (``dinov2.DinoV2Backbone``)."""

    def __init__(self) -> None:
        super().__init__()
        self.dino = dinov2.build_dinov2_vitb14(norm_layer=False, return_token=False, quick_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dino(x)
        assert isinstance(out, torch.Tensor)
        return out


# ---------------------------------------------------------------------------------------------
# The variants
# ---------------------------------------------------------------------------------------------


def _tensors(state: object, what: str) -> dict:
    if not isinstance(state, Mapping):
        raise VprkitError(f"this is not a {what} state dict (the file holds a {type(state).__name__})")
    state = strip_prefix(state, "module.")
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise VprkitError(
            f"this is not a {what} state dict ({odd[0]!r} is a {type(state[odd[0]]).__name__}, not a tensor)"
        )
    return state


def _other_release(state: dict, backbone: str, name: str) -> None:
    if any(k.startswith(f"backbone.{backbone}.") for k in state):
        raise VprkitError(f"this is the {name.split('_')[1]} BoQ release, not this one: use --model {name}")


def _load_resnet(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    what = "BoQ ResNet-50 16384-D (resnet50_16384.pth)"
    weights = _tensors(state, what)
    _other_release(weights, "dino", "boq_dinov2_12288")
    strict_load(module, _resnet_keys(weights), what)


def _load_dinov2(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    what = "BoQ DINOv2 12288-D (dinov2_12288.pth)"
    weights = _tensors(state, what)
    _other_release(weights, "net", "boq_resnet50_16384")
    backbone: Any = module.backbone
    dinov2.load_dinov2_state(backbone.dino, weights, DINOV2_PREFIX, what, DINOV2_UNUSED)
    rest = [k for k in weights if not k.startswith(DINOV2_PREFIX)]
    other = [k for k in rest if not k.startswith("aggregator.")]
    if other:
        raise VprkitError(f"this is not a {what} state dict (unexpected {other[0]!r})")
    aggregator: Any = module.aggregator
    strict_load(aggregator, {k[len("aggregator.") :]: weights[k] for k in rest}, what)


def build_resnet50() -> BoQNet:
    """ResNet-50 (to layer3) + BoQ (512 x 32), random weights."""
    return BoQNet(ResNet50Layer3(), BoQAggregator(1024, 512, num_queries=64, num_layers=2, row_dim=32))


def build_dinov2() -> BoQNet:
    """DINOv2 ViT-B/14 + BoQ (384 x 32), random weights (needs timm)."""
    return BoQNet(DinoV2PatchMap(), BoQAggregator(768, 384, num_queries=64, num_layers=2, row_dim=32))


register(
    ZooSpec(
        name="boq_resnet50_16384",
        family="boq",
        backbone="ResNet-50 (to layer3)",
        aggregation="BoQ (2 blocks x 64 queries, 512 x 32) + L2",
        output_dim=16384,
        build=build_resnet50,
        load_state_dict=_load_resnet,
        resize=(384, 384),
        weights=f"{RELEASE}resnet50_16384.pth (resnet50_16384.pth; torch.hub amaralibey/bag-of-queries)",
        notes="upstream resizes to 384x384 (bicubic, antialiased; vprkit's resize is bilinear); "
        "any image size works",
    )
)

register(
    ZooSpec(
        name="boq_dinov2_12288",
        family="boq",
        backbone="DINOv2 ViT-B/14",
        aggregation="BoQ (2 blocks x 64 queries, 384 x 32) + L2",
        output_dim=12288,
        build=build_dinov2,
        load_state_dict=_load_dinov2,
        resize=(322, 322),
        multiple_of=PATCH,
        weights=f"{RELEASE}dinov2_12288.pth (dinov2_12288.pth; torch.hub amaralibey/bag-of-queries)",
        requires=("timm",),
        notes="upstream resizes to 322x322 (bicubic, antialiased; vprkit's resize is bilinear); "
        "sides must be multiples of 14; the backbone is built with timm (vprkit[dinov2])",
    )
)
