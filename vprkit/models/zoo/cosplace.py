"""CosPlace (Berton et al., CVPR 2022): a torchvision CNN, then L2 -> GeM -> FC -> L2.

Every network released on upstream's torch.hub (``gmberton/cosplace``, ``get_trained_model``) is
registered as ``cosplace_<backbone>_<dim>``. The architecture (``GeoLocalizationNet``) is shared
with EigenPlaces (``eigenplaces.py``), whose releases have the same layout:

- ``backbone``: ``nn.Sequential`` of a torchvision model's children; the ResNets keep everything
  up to ``layer4`` (``avgpool`` and ``fc`` dropped: keys ``backbone.0`` conv1 ... ``backbone.7``
  layer4), VGG-16 keeps ``features`` without its last two layers (the last ReLU and max-pool:
  keys ``backbone.0`` ... ``backbone.28``, the descriptor comes from conv5_3 before its ReLU);
- ``aggregation``: ``nn.Sequential(L2Norm, GeM, Flatten, Linear, L2Norm)`` (keys
  ``aggregation.1.p``, ``aggregation.3.weight``, ``aggregation.3.bias``).

The published ``.pth`` files are bare state dicts of that module, so they load unchanged;
``module.``-prefixed copies (``nn.DataParallel``) and upstream's own training checkpoints
(``last_checkpoint.pth``, ``{"model_state_dict": ...}``) load too.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache, partial

import torch
import torchvision
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.aggregations.base import Flatten, L2Norm
from vprkit.models.aggregations.gem import GeMPool
from vprkit.models.zoo.base import REGISTRY, ZooSpec, register, strict_load, strip_prefix

# upstream's backbone names -> (torchvision constructor, channels of the last conv, table name)
BACKBONES: dict[str, tuple[str, int, str]] = {
    "ResNet18": ("resnet18", 512, "ResNet-18"),
    "ResNet50": ("resnet50", 2048, "ResNet-50"),
    "ResNet101": ("resnet101", 2048, "ResNet-101"),
    "ResNet152": ("resnet152", 2048, "ResNet-152"),
    "VGG16": ("vgg16", 512, "VGG-16"),
}

# CosPlace's hubconf.py AVAILABLE_TRAINED_MODELS (the README's model zoo table is the same)
COSPLACE_RELEASES: dict[str, tuple[int, ...]] = {
    "VGG16": (64, 128, 256, 512),
    "ResNet18": (32, 64, 128, 256, 512),
    "ResNet50": (32, 64, 128, 256, 512, 1024, 2048),
    "ResNet101": (32, 64, 128, 256, 512, 1024, 2048),
    "ResNet152": (32, 64, 128, 256, 512, 1024, 2048),
}

AGGREGATION = "L2 + GeM + FC + L2"
FAMILIES = ("cosplace", "eigenplaces")  # the families of this architecture


def make_backbone(backbone: str) -> nn.Sequential:
    """The torchvision ``backbone`` (random weights) cut as upstream cuts it."""
    constructor, _, _ = BACKBONES[backbone]
    model = getattr(torchvision.models, constructor)(weights=None)
    if backbone.startswith("ResNet"):
        layers = list(model.children())[:-2]  # drop avgpool and fc
    else:  # VGG16: drop the last ReLU and the last max-pool
        layers = list(model.features.children())[:-2]
    return nn.Sequential(*layers)


class GeoLocalizationNet(nn.Module):
    """Upstream's network (CosPlace's and EigenPlaces'), with upstream's state dict keys."""

    def __init__(self, backbone: str, fc_output_dim: int):
        super().__init__()
        if backbone not in BACKBONES:
            raise VprkitError(f"unknown backbone {backbone!r}; one of {', '.join(BACKBONES)}")
        self.backbone = make_backbone(backbone)
        channels = BACKBONES[backbone][1]
        self.aggregation = nn.Sequential(
            L2Norm(dim=1),
            GeMPool(p=3.0, eps=1e-6),
            Flatten(),
            nn.Linear(channels, fc_output_dim),
            L2Norm(dim=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone(x))


@cache
def _layout(backbone: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``backbone``'s network, the FC's output dim left out (built on the meta
    device: no memory, no initialisation)."""
    with torch.device("meta"):
        net = GeoLocalizationNet(backbone, 1)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith("aggregation.3.")}


def identify(state: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """The (upstream backbone name, descriptor dimension) whose layout ``state`` has, or None."""
    weight, bias = state.get("aggregation.3.weight"), state.get("aggregation.3.bias")
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor) or weight.ndim != 2:
        return None
    rest = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("aggregation.3.")}
    for backbone, (_, channels, _) in BACKBONES.items():
        if weight.shape[1] == channels and rest == _layout(backbone):
            return backbone, int(weight.shape[0])
    return None


def _unwrap(state: object) -> dict[str, torch.Tensor]:
    """The network's state dict from what a file holds (bare, ``module.``-prefixed, or upstream's
    training checkpoint); one clear error for anything else."""
    if isinstance(state, Mapping) and isinstance(state.get("model_state_dict"), Mapping):
        state = state["model_state_dict"]  # upstream's last_checkpoint.pth
    if not isinstance(state, Mapping) or not state:
        raise VprkitError(
            f"expected a state dict (names -> tensors), found {type(state).__name__}"
            + (" (empty)" if isinstance(state, Mapping) else "")
        )
    odd = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise VprkitError(
            f"expected a state dict (names -> tensors), but {str(odd[0])!r} holds "
            f"{type(state[odd[0]]).__name__}"
        )
    return strip_prefix(state, "module.")


def state_loader(label: str, backbone: str, dim: int):
    """``ZooSpec.load_state_dict`` for one release: every key and shape must be upstream's; a file
    of another release is refused in one line that says which release it is."""
    what = f"{label} {BACKBONES[backbone][2]} {dim}-D"

    def load(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        state = _unwrap(state)
        try:
            strict_load(module, state, what)
        except VprkitError as err:
            found = identify(state)
            if found is None:
                raise
            other, other_dim = found
            fits = [
                name
                for name, spec in REGISTRY.items()
                if spec.family in FAMILIES and name.endswith(f"_{other.lower()}_{other_dim}")
            ]
            hint = f": --model {' or '.join(fits)}" if fits else ", a size that was not released"
            raise VprkitError(
                f"{err}; the file is a {BACKBONES[other][2]} {other_dim}-D GeoLocalizationNet{hint}"
            ) from None

    return load


def register_family(
    family: str,
    label: str,
    releases: Mapping[str, tuple[int, ...]],
    weights: str,
    notes: str,
    more_notes: Mapping[tuple[str, int], str] | None = None,
) -> None:
    """Register ``<family>_<backbone>_<dim>`` for every released (backbone, dim);
    ``weights`` is formatted with ``backbone`` (upstream's spelling) and ``dim``;
    ``more_notes`` adds to the notes of single releases."""
    more_notes = more_notes or {}
    for backbone, dims in releases.items():
        for dim in dims:
            register(
                ZooSpec(
                    name=f"{family}_{backbone.lower()}_{dim}",
                    family=family,
                    backbone=BACKBONES[backbone][2],
                    aggregation=AGGREGATION,
                    output_dim=dim,
                    build=partial(GeoLocalizationNet, backbone, dim),
                    load_state_dict=state_loader(label, backbone, dim),
                    resize=None,
                    weights=weights.format(backbone=backbone, dim=dim),
                    notes=" ".join(filter(None, (notes, more_notes.get((backbone, dim))))),
                )
            )


register_family(
    "cosplace",
    "CosPlace",
    COSPLACE_RELEASES,
    weights=(
        "https://github.com/gmberton/CosPlace/releases/download/v1.0/"
        "{backbone}_{dim}_cosplace.pth (torch.hub gmberton/cosplace get_trained_model("
        "backbone='{backbone}', fc_output_dim={dim}); the same models are linked from "
        "the README's model zoo table, on Google Drive)"
    ),
    notes=(
        "Upstream evaluates each image at its own size (eval.py: TestDataset with ToTensor and "
        "ImageNet Normalize only; --resize_test_imgs, off by default, would resize the shorter "
        "side to --image_size 512 keeping the aspect ratio), queries one at a time. Trained on "
        "SF-XL at 512x512 crops. The same layout as EigenPlaces: a file of either family "
        "loads into the other's model of the same backbone and dim."
    ),
)
