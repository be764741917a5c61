"""MixVPR (Ali-bey, Chaib-draa and Giguère, WACV 2023): ResNet-50 cut after ``layer3`` and a
cascade of feature-mixing MLPs over the 20 x 20 locations of its map.

Upstream: https://github.com/amaralibey/MixVPR (``models/backbones/resnet.py``,
``models/aggregators/mixvpr.py``, ``main.py``'s ``VPRModel``). The three released networks (its
README's table) share the backbone and a 4-layer mixer (``mix_depth=4``, ``mlp_ratio=1``) and
differ in the two projections, ``out_channels`` x ``out_rows`` = D:

========================  ====  ==============  ============================================
name                      D     channels x rows  file (Google Drive id)
========================  ====  ==============  ============================================
``mixvpr_resnet50_4096``  4096  1024 x 4         ``resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt``
``mixvpr_resnet50_512``   512   256 x 2          ``resnet50_MixVPR_512_channels(256)_rows(2).ckpt``
``mixvpr_resnet50_128``   128   64 x 2           ``resnet50_MixVPR_128_channels(64)_rows(2).ckpt``
========================  ====  ==============  ============================================

The released ``.ckpt`` files are not full PyTorch Lightning checkpoints: the README loads them
with ``model.load_state_dict(torch.load(path))``, so each is the bare state dict of
``VPRModel``: ``backbone.model.{conv1,bn1,layer1,layer2,layer3}...`` (torchvision's ResNet-50
names; ``layer4``, ``avgpool`` and ``fc`` are set to None upstream and have no keys) and
``aggregator.mix.{0..3}.mix.{0,1,3}...`` (LayerNorm, Linear, ReLU, Linear),
``aggregator.channel_proj.{weight,bias}``, ``aggregator.row_proj.{weight,bias}``. (The first
commit of upstream's ``mixvpr.py`` built ``row_proj`` without a bias; the released files and the
README's code have one.) A Lightning checkpoint of the same model (``{"state_dict": ...,
"epoch": ..., "hyper_parameters": ...}``, as ``ModelCheckpoint`` writes it when training with
upstream's ``main.py``) is read too: its ``state_dict`` is used, without the loss and miner
modules' entries if any. ``load_safely`` reads such a file where its hyper-parameters are plain
values (Lightning stores ``dict(hparams)``); one with OmegaConf or other objects is refused with
their names: keep ``torch.load(path, weights_only=False)["state_dict"]`` of a file you trust.

Upstream evaluates at 320 x 320 (its ``demo.py``: ``Resize((320, 320), BICUBIC)``, ``ToTensor``,
ImageNet ``Normalize``); the mixer works on exactly 20 x 20 locations, so other sizes are an
error. vprkit's resize is bilinear (antialiased), upstream's bicubic: images already at 320 x 320
are identical, others differ slightly.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.zoo.base import ZooSpec, register, strict_load, strip_prefix

SIZE = (320, 320)
GRID = (20, 20)  # layer3's map at 320 x 320 (stride 16)
DRIVE = "https://drive.google.com/file/d/{}/view"
# D: (out_channels, out_rows, Google Drive id, file name)
RELEASES = {
    4096: (1024, 4, "1vuz3PvnR7vxnDDLQrdHJaOA04SQrtk5L", "resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt"),
    512: (256, 2, "1khiTUNzZhfV2UUupZoIsPIbsMRBYVDqj", "resnet50_MixVPR_512_channels(256)_rows(2).ckpt"),
    128: (64, 2, "1DQnefjk1hVICOEYPwE4-CZAZOvi1NSJz", "resnet50_MixVPR_128_channels(64)_rows(2).ckpt"),
}
_TRAINING_ONLY = ("loss_fn.", "miner.")


class ResNet50Layer3(nn.Module):
    """torchvision's ResNet-50 up to ``layer3`` (1024 channels, stride 16), with its own module
    names, as upstream's ``ResNet`` keeps it under ``model``."""

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class MixVPRBackbone(nn.Module):
    """The backbone under upstream's key names (``backbone.model.layer1...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = ResNet50Layer3()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FeatureMixer(nn.Module):
    """One mixer: ``x + MLP(LayerNorm(x))`` over the flattened locations of each channel."""

    def __init__(self, locations: int, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        hidden = int(locations * mlp_ratio)
        self.mix = nn.Sequential(
            nn.LayerNorm(locations), nn.Linear(locations, hidden), nn.ReLU(), nn.Linear(hidden, locations)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPRAggregator(nn.Module):
    """Mixers over the H*W locations, then a channel projection (C -> ``out_channels``) and a
    row projection (H*W -> ``out_rows``), flattened and L2-normalised."""

    def __init__(
        self,
        out_channels: int,
        out_rows: int,
        in_channels: int = 1024,
        grid: tuple[int, int] = GRID,
        mix_depth: int = 4,
        mlp_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        self.grid = grid
        locations = grid[0] * grid[1]
        self.mix = nn.Sequential(*[FeatureMixer(locations, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(locations, out_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.grid:
            raise VprkitError(
                f"MixVPR mixes a fixed {self.grid[0]}x{self.grid[1]} feature map (320x320 images); "
                f"this image gave {x.shape[-2]}x{x.shape[-1]}: extract with --resize 320 320"
            )
        x = self.mix(x.flatten(2))  # (B, C, HW)
        x = self.channel_proj(x.transpose(1, 2))  # (B, HW, C')
        x = self.row_proj(x.transpose(1, 2))  # (B, C', rows)
        return F.normalize(x.flatten(1), p=2, dim=-1)


class MixVPRNet(nn.Module):
    """Upstream's ``VPRModel`` for inference: ``aggregator(backbone(x))``, (B, 3, 320, 320) ->
    (B, out_channels * out_rows)."""

    def __init__(self, out_channels: int, out_rows: int) -> None:
        super().__init__()
        self.backbone = MixVPRBackbone()
        self.aggregator = MixVPRAggregator(out_channels, out_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(-(-side // 16) for side in x.shape[-2:])  # layer3's map: ceil(side / 16)
        if grid != self.aggregator.grid:
            raise VprkitError(
                f"MixVPR mixes a fixed {GRID[0]}x{GRID[1]} feature map (320x320 images); a "
                f"{x.shape[-2]}x{x.shape[-1]} image gives {grid[0]}x{grid[1]}: extract with --resize 320 320"
            )
        return self.aggregator(self.backbone(x))


def release_state(state: object) -> dict:
    """The model's state dict out of a released file's content (the bare state dict) or of a
    Lightning checkpoint (its ``state_dict``, without the loss and miner entries)."""
    if not isinstance(state, Mapping):
        raise VprkitError(f"this is not a MixVPR state dict (the file holds a {type(state).__name__})")
    if isinstance(state.get("state_dict"), Mapping):  # a Lightning checkpoint
        state = state["state_dict"]
    assert isinstance(state, Mapping)
    state = strip_prefix(state, "module.")
    state = {k: v for k, v in state.items() if not str(k).startswith(_TRAINING_ONLY)}
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise VprkitError(
            f"this is not a MixVPR state dict ({odd[0]!r} is a {type(state[odd[0]]).__name__}, not a tensor)"
        )
    return state


def _loader(dim: int):
    def load(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        weights = release_state(state)
        channels = weights.get("aggregator.channel_proj.weight")
        rows = weights.get("aggregator.row_proj.weight")
        if channels is not None and rows is not None and channels.dim() == 2 and rows.dim() == 2:
            found = channels.shape[0] * rows.shape[0]
            if found != dim and found in RELEASES:
                raise VprkitError(
                    f"this is the {found}-D MixVPR release, not the {dim}-D one: "
                    f"use --model mixvpr_resnet50_{found}"
                )
        strict_load(module, weights, f"MixVPR ResNet-50 {dim}-D ({RELEASES[dim][3]})")

    return load


def _register() -> None:
    for dim, (channels, rows, drive_id, file_name) in RELEASES.items():
        register(
            ZooSpec(
                name=f"mixvpr_resnet50_{dim}",
                family="mixvpr",
                backbone="ResNet-50 (to layer3)",
                aggregation=f"MixVPR (4 mixers, {channels} channels x {rows} rows) + L2",
                output_dim=dim,
                build=partial(MixVPRNet, channels, rows),
                load_state_dict=_loader(dim),
                resize=SIZE,
                weights=f"{DRIVE.format(drive_id)} ({file_name}; amaralibey/MixVPR README)",
                notes="evaluated upstream at 320x320 only (bicubic resize; vprkit's is bilinear); "
                "the mixer needs exactly a 20x20 layer3 map, so other sizes are refused",
            )
        )


_register()
