"""The DINOv2 ViT-B/14 backbone shared by the zoo's DINOv2 families (SALAD, MegaLoc, BoQ...).

Upstream code builds it with ``torch.hub.load("facebookresearch/dinov2", "dinov2_vitb14")``;
vprkit builds the same network from timm's modules (``vit_base_patch14_dinov2``, random
weights, nothing downloaded) and runs it the way DINOv2's own ``DinoVisionTransformer`` does:

- ``build_dinov2_vitb14(...)`` returns a ``DinoV2Backbone``; its ``forward`` maps a normalised
  (B, 3, H, W) batch (H, W multiples of 14) to the patch map (B, 768, H/14, W/14), and with
  ``return_token=True`` also the class token (B, 768): the ``(f, t)`` pair SALAD's and
  MegaLoc's aggregators take. ``norm_layer`` applies the final LayerNorm to both (SALAD,
  MegaLoc: True). ``forward_tokens`` gives the (B, 1 + N, 768) token sequence.
- ``load_dinov2_state(module, state, prefix)`` puts the facebookresearch state dict found under
  ``prefix`` in ``state`` (``"backbone.model."`` in SALAD's and MegaLoc's files, ``""`` in
  ``dinov2_vitb14_pretrain.pth``) into it, key by key (``DINOV2_KEY_MAP``); it returns the
  keys of ``state`` it used, so that a family can check the rest of the file.
- ``interpolate_pos_encoding`` is DINOv2's own resampling of the 37 x 37 position grid
  (bicubic, ``scale_factor = (n + 0.1) / 37``, no antialiasing; none at 518 x 518), which
  timm's ``resample_abs_pos_embed`` (an output size, antialiased) does not reproduce.

Layout: timm's parameter names are DINOv2's (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1,
mlp.fc2, ls2.gamma}``, ``norm``) under ``vit.``; DINOv2's ``mask_token`` (masked-image
training only, unused at inference) is kept as ``mask_token`` so that a released file loads
whole and strictly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vprkit.errors import VprkitError

PATCH_SIZE = 14
EMBED_DIM = 768
DEPTH = 12
IMG_SIZE = 518  # the 37 x 37 position grid of the released weights
INTERPOLATE_OFFSET = 0.1  # DINOv2's (and DINO's) offset, see dino issue 8

_BLOCK_KEYS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "ls1.gamma",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "ls2.gamma",
)


def dinov2_key_map(depth: int = DEPTH) -> dict[str, str]:
    """facebookresearch key -> ``DinoV2Backbone`` key, for every parameter of ViT-*/14."""
    keys = {
        "cls_token": "vit.cls_token",
        "pos_embed": "vit.pos_embed",
        "mask_token": "mask_token",
        "patch_embed.proj.weight": "vit.patch_embed.proj.weight",
        "patch_embed.proj.bias": "vit.patch_embed.proj.bias",
        "norm.weight": "vit.norm.weight",
        "norm.bias": "vit.norm.bias",
    }
    for i in range(depth):
        for name in _BLOCK_KEYS:
            keys[f"blocks.{i}.{name}"] = f"vit.blocks.{i}.{name}"
    return keys


DINOV2_KEY_MAP = dinov2_key_map()


def interpolate_pos_encoding(
    pos_embed: torch.Tensor,
    height: int,
    width: int,
    patch_size: int = PATCH_SIZE,
    offset: float = INTERPOLATE_OFFSET,
) -> torch.Tensor:
    """DINOv2's position embeddings (1, 1 + M*M, C) for an ``height`` x ``width`` input:
    unchanged where the grid already fits (square, M patches a side), else the patch part
    resampled bicubically with DINOv2's scale factors ``(rows + offset) / M`` and
    ``(cols + offset) / M`` (not an output size: the sampling positions differ)."""
    rows, cols = height // patch_size, width // patch_size
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise VprkitError(f"DINOv2 position embeddings of {n} patches are not a square grid")
    if rows * cols == n and height == width:
        return pos_embed
    dtype = pos_embed.dtype
    grid = pos_embed.float()[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid,
        scale_factor=(float(rows + offset) / side, float(cols + offset) / side),
        mode="bicubic",
        antialias=False,
    )
    if tuple(grid.shape[-2:]) != (rows, cols):  # cannot happen with offset < 1
        raise VprkitError(
            f"DINOv2 position grid resampled to {tuple(grid.shape[-2:])}, expected {(rows, cols)}"
        )
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat((pos_embed.float()[:, :1], grid), dim=1).to(dtype)


class DinoV2Backbone(nn.Module):
    """DINOv2 ViT-B/14 (timm's modules under ``vit``) run as facebookresearch runs it.

    Args:
        vit: timm's ``vit_base_patch14_dinov2`` (``num_classes=0``).
        norm_layer: apply the final LayerNorm (``norm``) to the tokens returned.
        return_token: ``forward`` returns ``(patch_map, cls_token)``, else the patch map only.
        num_trainable_blocks: as SALAD's wrapper: the blocks before the last
            ``num_trainable_blocks`` run without gradients (training only; inference is the
            same either way). None: every block takes gradients.
    """

    patch_size = PATCH_SIZE

    def __init__(
        self,
        vit: nn.Module,
        norm_layer: bool = True,
        return_token: bool = True,
        num_trainable_blocks: int | None = None,
    ):
        super().__init__()
        self.vit = vit
        self.embed_dim = self.num_channels = int(getattr(vit, "embed_dim", EMBED_DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, self.embed_dim))
        self.norm_layer = norm_layer
        self.return_token = return_token
        self.num_trainable_blocks = num_trainable_blocks

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise VprkitError(f"DINOv2 takes (B, 3, H, W) images, not {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size or h < self.patch_size or w < self.patch_size:
            raise VprkitError(
                f"DINOv2 needs image sides that are multiples of {self.patch_size}, not {h}x{w}"
            )

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, class token and (interpolated) position embeddings: (B, 1+N, C)."""
        self._check(x)
        h, w = x.shape[-2:]
        vit: Any = self.vit
        tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        cls = vit.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1)
        return tokens + interpolate_pos_encoding(vit.pos_embed, h, w)

    def forward_tokens(self, x: torch.Tensor, norm: bool | None = None) -> torch.Tensor:
        """The (B, 1 + N, C) tokens after every block (and the final norm where ``norm``,
        default ``norm_layer``)."""
        tokens = self.prepare_tokens(x)
        vit: Any = self.vit
        blocks = list(vit.blocks)
        frozen = len(blocks) - self.num_trainable_blocks if self.num_trainable_blocks else 0
        if frozen > 0:
            with torch.no_grad():
                for block in blocks[:frozen]:
                    tokens = block(tokens)
            tokens = tokens.detach()
        for block in blocks[max(frozen, 0) :]:
            tokens = block(tokens)
        if self.norm_layer if norm is None else norm:
            tokens = vit.norm(tokens)
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The patch map (B, C, H/14, W/14), and the class token (B, C) with ``return_token``."""
        b, _, h, w = x.shape
        tokens = self.forward_tokens(x)
        patches = (
            tokens[:, 1:]
            .reshape(b, h // self.patch_size, w // self.patch_size, self.embed_dim)
            .permute(0, 3, 1, 2)
        )
        if self.return_token:
            return patches, tokens[:, 0]
        return patches


def build_dinov2_vitb14(
    norm_layer: bool = True,
    return_token: bool = True,
    num_trainable_blocks: int | None = None,
    quick_init: bool = False,
) -> DinoV2Backbone:
    """DINOv2 ViT-B/14 with random weights (timm; ``load_dinov2_state`` fills it).

    ``quick_init`` skips timm's own initialisation of the 86M weights (seconds on a CPU): the
    layers keep torch's random defaults and the tokens get DINOv2's, for a network whose
    weights a release file replaces anyway."""
    try:
        import timm
    except ImportError:  # pragma: no cover - the zoo checks ``requires`` first
        raise VprkitError("DINOv2 models need the timm package: pip install 'vprkit[dinov2]'") from None
    extra: dict[str, Any] = {"weight_init": "skip"} if quick_init else {}
    vit: Any = timm.create_model(
        "vit_base_patch14_dinov2",
        pretrained=False,
        num_classes=0,
        img_size=IMG_SIZE,
        dynamic_img_size=True,
        **extra,
    )
    if quick_init:
        nn.init.trunc_normal_(vit.pos_embed, std=0.02)
        nn.init.normal_(vit.cls_token, std=1e-6)
    return DinoV2Backbone(
        vit, norm_layer=norm_layer, return_token=return_token, num_trainable_blocks=num_trainable_blocks
    )


def load_dinov2_state(
    module: DinoV2Backbone,
    state: Mapping[str, torch.Tensor],
    prefix: str = "",
    what: str = "DINOv2 ViT-B/14",
    optional: tuple[str, ...] = (),
) -> set[str]:
    """Put the facebookresearch DINOv2 state dict held under ``prefix`` in ``state`` into
    ``module`` (every key and shape must match); returns the keys of ``state`` it used (keys
    outside ``prefix`` are left to the caller).

    ``optional``: facebookresearch keys a release may lack because its network never uses them
    (BoQ: ``mask_token`` and the final ``norm``); the module keeps its own values for those.

    Raises ``VprkitError``, one line ``this is not a {what} state dict (...)`` naming the first
    missing, unexpected or misshapen key.
    """
    own = module.state_dict()
    vit: Any = module.vit
    depth = len(vit.blocks)
    full_map = DINOV2_KEY_MAP if depth == DEPTH else dinov2_key_map(depth)
    under = {k[len(prefix) :]: k for k in state if isinstance(k, str) and k.startswith(prefix)}
    absent = {k for k in optional if k not in under}
    key_map = {k: v for k, v in full_map.items() if k not in absent}
    missing = [prefix + k for k in key_map if k not in under]
    unexpected = [v for k, v in under.items() if k not in key_map]
    if missing or unexpected:
        detail = ", ".join(
            part
            for part in (
                f"missing {missing[0]!r}" if missing else "",
                f"unexpected {unexpected[0]!r}" if unexpected else "",
            )
            if part
        )
        raise VprkitError(
            f"this is not a {what} state dict (DINOv2 keys under {prefix!r}: "
            f"{detail}; {len(missing)} missing, {len(unexpected)} unexpected keys)"
        )
    mapped = {}
    for theirs, ours in key_map.items():
        value = state[prefix + theirs]
        if not isinstance(value, torch.Tensor):
            raise VprkitError(
                f"this is not a {what} state dict: {prefix + theirs} is a "
                f"{type(value).__name__}, not a tensor"
            )
        if tuple(value.shape) != tuple(own[ours].shape):
            raise VprkitError(
                f"this is not a {what} state dict: {prefix + theirs} has shape "
                f"{tuple(value.shape)}, expected {tuple(own[ours].shape)}"
            )
        mapped[ours] = value
    mapped.update({full_map[k]: own[full_map[k]] for k in absent})
    if set(mapped) != set(own):  # the map covers the module (a wrong timm version otherwise)
        extra = sorted(set(own) - set(mapped))[:1]
        raise VprkitError(f"timm's DINOv2 has parameters vprkit does not map ({extra})")
    module.load_state_dict(mapped, strict=True)
    return {prefix + k for k in key_map}


__all__ = [
    "DINOV2_KEY_MAP",
    "DinoV2Backbone",
    "build_dinov2_vitb14",
    "dinov2_key_map",
    "interpolate_pos_encoding",
    "load_dinov2_state",
]
