"""ResNet-18/50/101 cut after ``layer3`` (``conv4``) or ``layer4`` (``conv5``), the layers before
``layer3`` frozen, as in the benchmark (``backbone.0.weight`` is ``conv1``)."""

from __future__ import annotations

from functools import partial

from torch import nn

from vprkit.models.backbones.base import BackboneSpec, freeze, register, torchvision_model

# what this module registers, ARCH + conv4|conv5 (vprkit.choices reads it without importing)
NAMES = ("resnet18conv4", "resnet18conv5", "resnet50conv4", "resnet50conv5", "resnet101conv4",
         "resnet101conv5")
# depth: (bottleneck blocks, blocks of layer3, channels of layer3)
_DEPTHS = {"resnet18": (False, 2, 256), "resnet50": (True, 6, 1024), "resnet101": (True, 23, 1024)}


def _build(arch: str, stage: str, weights: str) -> nn.Sequential:
    net = torchvision_model(arch, weights)
    children = dict(net.named_children())
    freeze([children[n] for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")])
    layers = list(net.children())[:-3] if stage == "conv4" else list(net.children())[:-2]
    return nn.Sequential(*layers)


def _recognise(arch: str, stage: str, state) -> bool:
    bottleneck, blocks, _ = _DEPTHS[arch]
    if "4.0.conv1.weight" not in state or ("4.0.conv3.weight" in state) != bottleneck:
        return False
    layer3 = {int(k.split(".")[1]) for k in state if k.startswith("6.")}
    conv5 = any(k.startswith("7.") for k in state)
    return layer3 == set(range(blocks)) and conv5 == (stage == "conv5")


for _name in NAMES:
    _arch, _stage = _name[:-len("conv4")], _name[-len("conv4"):]
    _factor = 1 if _stage == "conv4" else 2
    register(BackboneSpec(
        name=_name, channels=_DEPTHS[_arch][2] * _factor, stride=16 * _factor,
        build=partial(_build, _arch, _stage), recognise=partial(_recognise, _arch, _stage),
        help=f"{_arch} up to {'layer3' if _stage == 'conv4' else 'layer4'}"))
