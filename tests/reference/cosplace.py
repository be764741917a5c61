"""The oracle for CosPlace and EigenPlaces: an independent re-implementation of upstream's
``GeoLocalizationNet`` (gmberton/CosPlace ``cosplace_model``, gmberton/EigenPlaces
``eigenplaces_model``, which share it), written to mirror upstream's module structure so that
``RefCosPlaceNet(...).state_dict()`` has exactly the keys and shapes of the published ``.pth``
files.

It imports nothing from vprkit (torch, torchvision, PIL only), so the tests that compare vprkit's
zoo models with it compare two separate implementations:

- the layers: ``RefL2Norm``, ``RefGeM`` (upstream's ``avg_pool2d`` form of the power mean),
  ``RefFlatten``;
- the backbone (``ref_backbone``): a torchvision ResNet's children up to ``layer4`` or VGG-16's
  ``features`` without its last ReLU and max-pool, as ``nn.Sequential``;
- the network (``RefCosPlaceNet``): ``backbone`` -> ``aggregation`` = L2, GeM, Flatten, Linear, L2;
- seeded random weights (``build_reference``): BatchNorm affine parameters and running statistics
  far from their defaults (so that eval mode matters) and GeM's ``p`` not 3;
- upstream's evaluation preprocessing (``ref_image``): PIL -> RGB -> ToTensor -> ImageNet
  Normalize, at the image's own size.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn

# upstream's CHANNELS_NUM_IN_LAST_CONV
CHANNELS = {"ResNet18": 512, "ResNet50": 2048, "ResNet101": 2048, "ResNet152": 2048, "VGG16": 512}

# the released (backbone, descriptor dims), as upstream's hubconf.py lists them
COSPLACE_RELEASED = {
    "VGG16": [64, 128, 256, 512],
    "ResNet18": [32, 64, 128, 256, 512],
    "ResNet50": [32, 64, 128, 256, 512, 1024, 2048],
    "ResNet101": [32, 64, 128, 256, 512, 1024, 2048],
    "ResNet152": [32, 64, 128, 256, 512, 1024, 2048],
}
EIGENPLACES_RELEASED = {
    "VGG16": [512],
    "ResNet18": [256, 512],
    "ResNet50": [128, 256, 512, 1024, 2048],
    "ResNet101": [128, 256, 512, 1024, 2048],
}


class RefL2Norm(nn.Module):
    """``F.normalize`` along the channels."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.normalize(x, p=2.0, dim=self.dim)


class RefGeM(nn.Module):
    """GeM as upstream writes it: clamp, power, ``avg_pool2d`` over the whole map, root."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x):
        pooled = F.avg_pool2d(x.clamp(min=self.eps).pow(self.p), (x.size(-2), x.size(-1)))
        return pooled.pow(1.0 / self.p)


class RefFlatten(nn.Module):
    """(N, C, 1, 1) -> (N, C)."""

    def forward(self, x):
        assert x.shape[2] == x.shape[3] == 1, tuple(x.shape)
        return x[:, :, 0, 0]


def ref_backbone(backbone: str) -> nn.Sequential:
    """The torchvision network of ``backbone`` (random weights) cut as upstream cuts it."""
    model = getattr(torchvision.models, backbone.lower())(weights=None)
    if backbone.startswith("ResNet"):
        children = [
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,
            model.layer1,
            model.layer2,
            model.layer3,
            model.layer4,
        ]
    elif backbone == "VGG16":
        children = list(model.features)[:-2]  # conv5_3 is the last layer: no ReLU, no pooling
        assert isinstance(children[-1], nn.Conv2d)
    else:
        raise ValueError(backbone)
    return nn.Sequential(*children)


class RefCosPlaceNet(nn.Module):
    """Upstream's ``GeoLocalizationNet(backbone, fc_output_dim)``."""

    def __init__(self, backbone: str, fc_output_dim: int):
        super().__init__()
        self.backbone = ref_backbone(backbone)
        self.aggregation = nn.Sequential(
            RefL2Norm(), RefGeM(), RefFlatten(), nn.Linear(CHANNELS[backbone], fc_output_dim), RefL2Norm()
        )

    def forward(self, x):
        return self.aggregation(self.backbone(x))


def build_reference(backbone: str, fc_output_dim: int, seed: int = 0, p: float = 2.6) -> RefCosPlaceNet:
    """``RefCosPlaceNet`` with seeded random weights: torchvision's initialisation, then every
    BatchNorm's weight, bias, running mean and variance drawn away from (1, 0, 0, 1), a random FC
    and GeM's ``p`` set to ``p``. The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RefCosPlaceNet(backbone, fc_output_dim)
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.uniform_(0.6, 1.2)
                    module.bias.normal_(0.0, 0.1)
                    module.running_mean.normal_(0.0, 0.2)
                    module.running_var.uniform_(0.5, 2.0)
                    module.num_batches_tracked.fill_(1000)
            fc = net.aggregation[3]
            fc.weight.normal_(0.0, 1.0 / CHANNELS[backbone] ** 0.5)
            fc.bias.normal_(0.0, 0.002)
            net.aggregation[1].p.fill_(p)
    return net.eval()


def save_release(net: RefCosPlaceNet, path: str | Path, prefix: str = "") -> Path:
    """Save ``net`` as upstream publishes it: its bare state dict (``prefix`` ``"module."``: as
    ``nn.DataParallel`` would save it)."""
    state = {f"{prefix}{k}": v for k, v in net.state_dict().items()}
    torch.save(state, path)
    return Path(path)


_TRANSFORM = T.Compose([T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])


def ref_image(path: str | Path) -> torch.Tensor:
    """Upstream's test preprocessing of one image: RGB, ToTensor, ImageNet Normalize (3, H, W)."""
    with Image.open(path) as image:
        return _TRANSFORM(image.convert("RGB"))
