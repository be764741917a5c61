"""The oracle for BoQ: an independent re-implementation of amaralibey/Bag-of-Queries' networks.

It imports nothing from vprkit (torch and torchvision only; no timm). Its modules mirror
upstream's ``hubconf.py`` ``VPRModel(backbone, aggregator)`` so that ``state_dict()`` has
exactly the keys of the released ``resnet50_16384.pth`` and ``dinov2_12288.pth`` (bare state
dicts, ``save_release``):

- ``RefResNet``: upstream's ``ResNet('resnet50', crop_last_block=True)``, a torchvision ResNet-50
  as ``net = Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3)``;
- ``RefDinoV2``: upstream's ``DinoV2()`` holding ``dino``, a ViT-B/14 written here in plain torch
  in the facebookresearch DINOv2 layout (``patch_embed.proj``, ``cls_token``, ``pos_embed`` for
  518 x 518, ``mask_token``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1,
  mlp.fc2, ls2.gamma}``, ``norm``), with DINOv2's ``interpolate_pos_encoding`` (bicubic, scale
  factor ``(n + 0.1) / 37``); like upstream's wrapper it runs the blocks itself and skips
  ``norm``;
- ``RefBoQ`` / ``RefBoQBlock``: upstream's aggregator, with the transformer encoder layer and the
  multi-head attentions written out (``RefEncoderLayer``, ``RefMultiheadAttention``: post-norm,
  ReLU feed-forward of 4 x dim, ``in_proj_weight`` / ``out_proj`` as torch names them), so that
  vprkit's use of ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` is checked too.

``build_resnet_reference`` and ``build_dinov2_reference`` give seeded random weights with
BatchNorm running statistics far from a batch's own, non-trivial LayerNorm affines, layer
scales and position embeddings, so that eval mode and every parameter matter.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# ---------------------------------------------------------------------------------------------
# attention and the encoder layer, written out
# ---------------------------------------------------------------------------------------------


class RefOutProj(nn.Module):
    """``out_proj`` of torch's multi-head attention (weight, bias)."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.xavier_uniform_(self.weight)


class RefMultiheadAttention(nn.Module):
    """Scaled dot-product attention over ``heads`` heads, with torch's parameter names."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = RefOutProj(dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query, key, value):
        b, nq, dim = query.shape
        nk = key.shape[1]
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        d = dim // self.heads

        def split(x, n):
            return x.reshape(b, n, self.heads, d).transpose(1, 2)  # (B, heads, n, d)

        q = split(query @ wq.T + bq, nq)
        k = split(key @ wk.T + bk, nk)
        v = split(value @ wv.T + bv, nk)
        weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(d), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, nq, dim)
        return out @ self.out_proj.weight.T + self.out_proj.bias


class RefEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer(d_model=dim, nhead=heads, dim_feedforward=4*dim,
    dropout=0, batch_first=True)`` in eval: post-norm, ReLU."""

    def __init__(self, dim, heads):
        super().__init__()
        self.self_attn = RefMultiheadAttention(dim, heads)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x):
        x = self.norm1(x + self.self_attn(x, x, x))
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


class RefBoQBlock(nn.Module):
    """Upstream's ``BoQBlock``."""

    def __init__(self, in_dim, num_queries, nheads):
        super().__init__()
        self.encoder = RefEncoderLayer(in_dim, nheads)
        self.queries = nn.Parameter(torch.randn(1, num_queries, in_dim))
        self.self_attn = RefMultiheadAttention(in_dim, nheads)
        self.norm_q = nn.LayerNorm(in_dim)
        self.cross_attn = RefMultiheadAttention(in_dim, nheads)
        self.norm_out = nn.LayerNorm(in_dim)

    def forward(self, x):
        x = self.encoder(x)
        q = self.queries.repeat(x.shape[0], 1, 1)
        q = q + self.self_attn(q, q, q)
        q = self.norm_q(q)
        out = self.cross_attn(q, x, x)
        return x, self.norm_out(out)


class RefBoQ(nn.Module):
    """Upstream's ``BoQ`` aggregator (``nheads = proj_channels // 64``)."""

    def __init__(self, in_channels, proj_channels, num_queries=64, num_layers=2, row_dim=32):
        super().__init__()
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        self.boqs = nn.ModuleList(
            [RefBoQBlock(proj_channels, num_queries, proj_channels // 64) for _ in range(num_layers)]
        )
        self.fc = nn.Linear(num_layers * num_queries, row_dim)

    def forward(self, x):
        x = self.proj_c(x)
        x = x.flatten(2).permute(0, 2, 1)
        x = self.norm_input(x)
        outs = []
        for block in self.boqs:
            x, out = block(x)
            outs.append(out)
        out = torch.cat(outs, dim=1)
        out = self.fc(out.permute(0, 2, 1))
        out = out.flatten(1)
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------
# backbones
# ---------------------------------------------------------------------------------------------


class RefResNet(nn.Module):
    """Upstream's ``ResNet('resnet50', crop_last_block=True)`` (``net`` Sequential)."""

    def __init__(self):
        super().__init__()
        m = torchvision.models.resnet50(weights=None)
        self.net = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3)
        self.out_channels = 1024

    def forward(self, x):
        return self.net(x)


class RefPatchEmbed(nn.Module):
    """DINOv2's ``PatchEmbed``: a 14 x 14 stride-14 conv, flattened to tokens."""

    def __init__(self, dim=768, patch=14):
        super().__init__()
        self.patch_size = (patch, patch)
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        assert x.shape[2] % self.patch_size[0] == 0 and x.shape[3] % self.patch_size[1] == 0
        return self.proj(x).flatten(2).transpose(1, 2)


class RefAttention(nn.Module):
    """DINOv2's ``Attention``: fused qkv, softmax(q k^T / sqrt(d)) v, proj."""

    def __init__(self, dim=768, heads=12):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefMlp(nn.Module):
    """DINOv2's ``Mlp``: fc1, exact GELU, fc2."""

    def __init__(self, dim=768, hidden=3072):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RefLayerScale(nn.Module):
    """DINOv2's ``LayerScale`` (``gamma``)."""

    def __init__(self, dim=768, init=1.0):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class RefBlock(nn.Module):
    """DINOv2's ``Block``: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim=768, heads=12):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads)
        self.ls1 = RefLayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim, 4 * dim)
        self.ls2 = RefLayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class RefDinoVisionTransformer(nn.Module):
    """``dinov2_vitb14``: img_size 518, patch 14, 768 wide, 12 blocks of 12 heads, layer scale,
    ``interpolate_offset=0.1``, no antialias, no register tokens, unchunked blocks."""

    def __init__(self, dim=768, depth=12, heads=12, img_size=518, patch=14):
        super().__init__()
        self.patch_size = patch
        self.patch_embed = RefPatchEmbed(dim, patch)
        grid = (img_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid + 1, dim))
        self.blocks = nn.ModuleList([RefBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, dim))

    def interpolate_pos_encoding(self, x, w, h):
        """DINOv2's: (w, h) are the image's dims 2 and 3 (its own naming)."""
        npatch = x.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_size
        h0 = h // self.patch_size
        m = int(math.sqrt(n))
        assert n == m * m
        sx = float(w0 + 0.1) / m
        sy = float(h0 + 0.1) / m
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=False,
            scale_factor=(sx, sy),
        )
        assert (w0, h0) == patch_pos_embed.shape[-2:]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x):
        _, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)


class RefDinoV2(nn.Module):
    """Upstream's ``DinoV2()`` wrapper: tokens, every block, no ``norm``, patch tokens as a map."""

    def __init__(self, unfreeze_n_blocks=2):
        super().__init__()
        self.unfreeze_n_blocks = unfreeze_n_blocks
        self.dino = RefDinoVisionTransformer()
        self.out_channels = 768

    def forward(self, x):
        b, _, h, w = x.shape
        x = self.dino.prepare_tokens_with_masks(x)
        for blk in self.dino.blocks[: -self.unfreeze_n_blocks]:
            x = blk(x)
        for blk in self.dino.blocks[-self.unfreeze_n_blocks :]:
            x = blk(x)
        x = x[:, 1:]
        c = x.shape[-1]
        p = self.dino.patch_size
        return x.permute(0, 2, 1).reshape(b, c, h // p, w // p)


class RefVPRModel(nn.Module):
    """``hubconf.py``'s ``VPRModel`` (returning the descriptors only)."""

    def __init__(self, backbone, aggregator):
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator

    def forward(self, x):
        return self.aggregator(self.backbone(x))


# ---------------------------------------------------------------------------------------------
# seeded weights and the released files
# ---------------------------------------------------------------------------------------------


def randomize_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Non-trivial BatchNorm (affine and running statistics), LayerNorm affines, layer scales,
    class token and position embeddings."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, nn.LayerNorm):
                shape = m.normalized_shape
                m.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                m.bias.copy_(0.2 * torch.randn(shape, generator=generator))
            elif isinstance(m, RefLayerScale):
                m.gamma.copy_(0.2 + 0.8 * torch.rand(m.gamma.shape, generator=generator))
            elif isinstance(m, RefDinoVisionTransformer):
                m.cls_token.copy_(torch.randn(m.cls_token.shape, generator=generator))
                m.mask_token.copy_(torch.randn(m.mask_token.shape, generator=generator))
                # smooth over the 37 x 37 grid plus noise, so that the interpolation matters
                side = int(math.sqrt(m.pos_embed.shape[1] - 1))
                coarse = torch.randn(1, m.pos_embed.shape[-1], 5, 5, generator=generator)
                smooth = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=True)
                grid = smooth.flatten(2).transpose(1, 2)
                grid = grid + 0.1 * torch.randn(grid.shape, generator=generator)
                m.pos_embed.copy_(
                    torch.cat([torch.randn(1, 1, grid.shape[-1], generator=generator), grid], dim=1)
                )
            elif isinstance(m, (RefEncoderLayer, RefBoQBlock)):
                for p in (m.self_attn.in_proj_bias, m.self_attn.out_proj.bias):
                    p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def build_resnet_reference(seed: int = 0) -> RefVPRModel:
    """``get_trained_boq('resnet50', 16384)``'s network with seeded random weights, in eval."""
    torch.manual_seed(seed)
    model = RefVPRModel(RefResNet(), RefBoQ(1024, 512, num_queries=64, num_layers=2, row_dim=32))
    return randomize_(model, torch.Generator().manual_seed(seed + 1)).eval()


def build_dinov2_reference(seed: int = 0) -> RefVPRModel:
    """``get_trained_boq('dinov2', 12288)``'s network with seeded random weights, in eval."""
    torch.manual_seed(seed)
    model = RefVPRModel(RefDinoV2(), RefBoQ(768, 384, num_queries=64, num_layers=2, row_dim=32))
    return randomize_(model, torch.Generator().manual_seed(seed + 1)).eval()


def save_release(model: RefVPRModel, path: Path) -> Path:
    """The released ``.pth``'s content: the bare state dict of ``VPRModel``."""
    torch.save(model.state_dict(), path)
    return Path(path)
