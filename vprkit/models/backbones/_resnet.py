"""What the ResNet backbones (``resnet18conv4.py`` ... ``resnet101conv5.py``) share: ResNet-18/50/101
cut after ``layer3`` (``conv4``) or ``layer4`` (``conv5``), the layers before ``layer3`` frozen,
as in the benchmark (``backbone.0.weight`` is ``conv1``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vprkit.models.backbones.base import freeze, register, torchvision_model

# depth: (bottleneck blocks, blocks of layer3, channels of layer3)
_DEPTHS = {"resnet18": (False, 2, 256), "resnet50": (True, 6, 1024), "resnet101": (True, 23, 1024)}


def build(arch: str, stage: str, weights: str) -> nn.Sequential:
    """``arch`` (``resnet18``, ``resnet50``, ``resnet101``) up to ``stage`` (``conv4``: layer3,
    ``conv5``: layer4) with ``weights``."""
    net = torchvision_model(arch, weights)
    children = dict(net.named_children())
    freeze([children[n] for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")])
    layers = list(net.children())[:-3] if stage == "conv4" else list(net.children())[:-2]
    return nn.Sequential(*layers)


def recognise(arch: str, stage: str) -> Callable[[dict], bool]:
    """Whether a state dict's backbone keys are those of ``arch`` up to ``stage``."""

    def fits(state: dict) -> bool:
        bottleneck, blocks, _ = _DEPTHS[arch]
        if "4.0.conv1.weight" not in state or ("4.0.conv3.weight" in state) != bottleneck:
            return False
        layer3 = {int(k.split(".")[1]) for k in state if k.startswith("6.")}
        conv5 = any(k.startswith("7.") for k in state)
        return layer3 == set(range(blocks)) and conv5 == (stage == "conv5")

    return fits


def register_resnet(name: str) -> Callable[[Callable], Callable]:
    """``register`` for the ResNet backbone ``name`` (``<arch>conv4`` or ``<arch>conv5``):
    channels, stride, key signature and help follow from the name."""
    arch, stage = name[: -len("conv4")], name[-len("conv4") :]
    factor = 1 if stage == "conv4" else 2
    return register(
        name,
        channels=_DEPTHS[arch][2] * factor,
        stride=16 * factor,
        recognise=recognise(arch, stage),
        help=f"{arch} up to {'layer3' if stage == 'conv4' else 'layer4'}",
    )
