"""The oracle for MixVPR: an independent re-implementation of amaralibey/MixVPR's network.

It imports nothing from vprkit (torch and torchvision only). Its modules mirror upstream's:
``RefVPRModel`` (``main.py``'s ``VPRModel`` for inference) holds ``backbone`` (upstream's
``ResNet``: a torchvision ResNet-50 under ``model`` whose ``layer4``, ``avgpool`` and ``fc`` are
set to None, so they have no keys) and ``aggregator`` (upstream's ``MixVPR``: ``mix`` of
``FeatureMixerLayer``s, ``channel_proj``, ``row_proj`` with a bias, as in the released files), so
``state_dict()`` has exactly the released ``.ckpt``'s keys. The released files are that bare
state dict (``save_release``); ``save_lightning`` writes the same weights as a PyTorch Lightning
``ModelCheckpoint`` file (plain hyper-parameters) would hold them.

``build_reference`` gives seeded random weights with BatchNorm running statistics far from a
batch's own and non-trivial LayerNorm affines, so that eval mode and every parameter matter.
``reference_descriptors`` runs upstream's evaluation preprocessing on image files (PIL, RGB,
``ToTensor``, ImageNet ``Normalize``; the images given are already 320 x 320, so upstream's
bicubic resize to 320 x 320 does nothing).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# D: (out_channels, out_rows), as the README's three releases
CONFIGS = {4096: (1024, 4), 512: (256, 2), 128: (64, 2)}


class RefResNet(nn.Module):
    """Upstream's ``ResNet('resnet50', layers_to_crop=[4])``."""

    def __init__(self):
        super().__init__()
        self.model = torchvision.models.resnet50(weights=None)
        self.model.avgpool = None
        self.model.fc = None
        self.model.layer4 = None

    def forward(self, x):
        m = self.model
        x = m.conv1(x)
        x = m.bn1(x)
        x = m.relu(x)
        x = m.maxpool(x)
        x = m.layer1(x)
        x = m.layer2(x)
        x = m.layer3(x)
        return x


class RefFeatureMixerLayer(nn.Module):
    """Upstream's ``FeatureMixerLayer``."""

    def __init__(self, in_dim, mlp_ratio=1):
        super().__init__()
        self.mix = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, int(in_dim * mlp_ratio)),
            nn.ReLU(),
            nn.Linear(int(in_dim * mlp_ratio), in_dim),
        )

    def forward(self, x):
        return x + self.mix(x)


class RefMixVPR(nn.Module):
    """Upstream's ``MixVPR`` aggregator."""

    def __init__(
        self, in_channels=1024, in_h=20, in_w=20, out_channels=1024, mix_depth=4, mlp_ratio=1, out_rows=4
    ):
        super().__init__()
        hw = in_h * in_w
        self.mix = nn.Sequential(*[RefFeatureMixerLayer(hw, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(hw, out_rows)

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w)
        x = self.mix(x)
        x = x.permute(0, 2, 1)
        x = self.channel_proj(x)
        x = x.permute(0, 2, 1)
        x = self.row_proj(x)
        x = x.reshape(b, -1)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class RefVPRModel(nn.Module):
    """``VPRModel(backbone_arch='resnet50', layers_to_crop=[4], agg_arch='MixVPR', ...)``."""

    def __init__(self, out_channels=1024, out_rows=4):
        super().__init__()
        self.backbone = RefResNet()
        self.aggregator = RefMixVPR(out_channels=out_channels, out_rows=out_rows)

    def forward(self, x):
        return self.aggregator(self.backbone(x))


def randomize_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Non-trivial BatchNorm and LayerNorm parameters and BatchNorm running statistics."""
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
    return model


def build_reference(dim: int = 4096, seed: int = 0) -> RefVPRModel:
    """The released ``dim``-D network with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    out_channels, out_rows = CONFIGS[dim]
    model = RefVPRModel(out_channels, out_rows)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.aggregator.row_proj.bias.copy_(0.1 * torch.randn(out_rows, generator=generator))
    return randomize_(model, generator).eval()


def save_release(model: RefVPRModel, path: Path) -> Path:
    """The released ``.ckpt``'s content: the bare state dict."""
    torch.save(model.state_dict(), path)
    return Path(path)


def save_lightning(model: RefVPRModel, path: Path) -> Path:
    """The same weights as a Lightning ``ModelCheckpoint(save_weights_only=True)`` file of
    upstream's ``main.py`` holds them (``dict(hparams)`` of plain values)."""
    out_channels = model.aggregator.channel_proj.out_features
    out_rows = model.aggregator.row_proj.out_features
    torch.save(
        {
            "epoch": 9,
            "global_step": 12340,
            "pytorch-lightning_version": "1.8.6",
            "state_dict": model.state_dict(),
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 10}}}},
            "hparams_name": "kwargs",
            "hyper_parameters": {
                "backbone_arch": "resnet50",
                "pretrained": True,
                "layers_to_freeze": 2,
                "layers_to_crop": [4],
                "agg_arch": "MixVPR",
                "agg_config": {
                    "in_channels": 1024,
                    "in_h": 20,
                    "in_w": 20,
                    "out_channels": out_channels,
                    "mix_depth": 4,
                    "mlp_ratio": 1,
                    "out_rows": out_rows,
                },
                "lr": 0.05,
                "optimizer": "sgd",
                "weight_decay": 0.001,
                "momentum": 0.9,
                "warmpup_steps": 650,
                "milestones": [5, 10, 15],
                "lr_mult": 0.3,
                "loss_name": "MultiSimilarityLoss",
                "miner_name": "MultiSimilarityMiner",
                "miner_margin": 0.1,
                "faiss_gpu": False,
            },
        },
        path,
    )
    return Path(path)


def reference_transform():
    """Upstream's evaluation transform for images already 320 x 320 (its Resize is then a
    no-op): ``ToTensor`` and ImageNet ``Normalize``."""
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@torch.no_grad()
def reference_descriptors(model: RefVPRModel, paths) -> torch.Tensor:
    """(N, D) descriptors of image files, one at a time."""
    transform = reference_transform()
    rows = []
    for path in paths:
        with Image.open(path) as im:
            x = transform(im.convert("RGB")).unsqueeze(0)
        rows.append(model(x)[0])
    return torch.stack(rows)
