"""The oracle for DINOv2 ViT-B/14: a plain-torch vision transformer in facebookresearch's layout.

It imports nothing from vprkit and nothing from timm (torch only), so the tests that compare
vprkit's timm-built backbone (``vprkit.models.zoo.dinov2``) with it compare two separate
implementations. It is written from the architecture of ``dinov2/models/vision_transformer.py``
and ``dinov2/layers`` (``torch.hub.load("facebookresearch/dinov2", "dinov2_vitb14")``: image
size 518, patch 14, width 768, 12 blocks of 12 heads, MLP ratio 4, LayerScale, LayerNorm eps
1e-6, no register tokens, ``block_chunks=0``):

- ``RefDinoVisionTransformer``: ``patch_embed.proj`` (a 14x14 stride-14 convolution),
  ``cls_token``, ``pos_embed`` (1, 1370, 768), ``mask_token`` (1, 768), ``blocks.N`` (``norm1``,
  ``attn.qkv``, ``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``,
  ``ls2.gamma``), ``norm``; its ``state_dict()`` is the layout of
  ``dinov2_vitb14_pretrain.pth`` and of the ``backbone.model.`` part of SALAD's and MegaLoc's
  files;
- ``interpolate_pos_encoding`` as DINOv2 does it: nothing at 518 x 518, else the 37 x 37 grid
  resampled bicubically with ``scale_factor = (n + 0.1) / 37`` (the offset of dino issue 8), no
  antialiasing;
- attention computed explicitly (q k^T scaled, softmax, times v), as DINOv2's ``Attention``;
- ``build_reference_dinov2(seed)``: seeded random weights far from an initialisation (LayerScale
  gammas around 1, position embeddings of unit scale, so that a wrong interpolation or a
  skipped LayerScale shows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RefPatchEmbed(nn.Module):
    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        assert h % self.patch_size == 0 and w % self.patch_size == 0, (h, w)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class RefAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, c/heads)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class RefMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RefLayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RefBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, num_heads)
        self.ls1 = RefLayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim, int(dim * mlp_ratio))
        self.ls2 = RefLayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class RefDinoVisionTransformer(nn.Module):
    """DINOv2's ``DinoVisionTransformer`` for ViT-B/14 (inference only)."""

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        interpolate_offset: float = 0.1,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.interpolate_offset = interpolate_offset
        self.patch_embed = RefPatchEmbed(patch_size, 3, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.blocks = nn.ModuleList(RefBlock(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolate_pos_encoding(self, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
        """DINOv2's resampling; ``w`` is the input's dim 2 (rows) and ``h`` dim 3, as upstream
        names them."""
        npatch = x.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, 0], pos[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        m = int(math.sqrt(n))
        assert m * m == n
        sx = float(w0 + self.interpolate_offset) / m
        sy = float(h0 + self.interpolate_offset) / m
        patch_pos = F.interpolate(
            patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2),
            scale_factor=(sx, sy),
            mode="bicubic",
            antialias=False,
        )
        assert (w0, h0) == tuple(patch_pos.shape[-2:])
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((cls_pos.unsqueeze(0), patch_pos), dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x: torch.Tensor) -> torch.Tensor:
        _, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.prepare_tokens_with_masks(x)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_patchtokens": x_norm[:, 1:], "x_prenorm": x}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)["x_norm_clstoken"])


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Seeded random weights for every parameter: LayerNorm weights and LayerScale gammas
    around 1, biases small, weights scaled by their fan-in, the rest (tokens, position
    embeddings, scalars) of unit scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma" or (leaf == "weight" and p.dim() == 1):
                p.copy_(1.0 + 0.2 * noise)
            elif leaf == "bias":
                p.copy_(0.05 * noise)
            elif p.dim() >= 2 and leaf == "weight":
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:
                p.copy_(noise)
    return module


def build_reference_dinov2(seed: int = 0) -> RefDinoVisionTransformer:
    """ViT-B/14 in facebookresearch's layout with seeded random weights, in eval mode."""
    return randomize_(RefDinoVisionTransformer(), seed).eval()  # type: ignore[return-value]
