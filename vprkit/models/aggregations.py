"""Aggregation layers (GeM, NetVLAD) and the multi-scale pyramid from stored statistics.

Both layers compute exactly what the Deep Visual Geo-localization Benchmark computes and use its
parameter names (``aggregation.1.p`` for GeM, ``aggregation.centroids`` and
``aggregation.conv.weight`` for NetVLAD).

The paper's multi-scale pyramid aggregates the local features of several scales together. Each
layer's ``forward_with_stats`` returns, besides the descriptor, a small per-image statistic so
that the pyramid of ANY subset of scales can later be formed from stored descriptors alone
(``pyramid``), without running the network:

- GeM: ``count`` (number of feature locations). The pooled mean of ``x^p`` is ``desc^p``, so the
  pyramid is ``(sum_s count_s * desc_s^p / sum_s count_s)^(1/p)``.
- NetVLAD: ``cluster_norms`` (norm of each cluster's residual sum before intra-normalisation).
  The residual sums are additive over locations, so the pyramid sums
  ``cluster_norms_s[k] * unit(desc_s[k])`` over scales, then intra-normalises and L2-normalises.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VprkitError
from ..pyramid import pyramid, stat_names  # noqa: F401  (re-exported)

AGGREGATIONS = ("gem", "netvlad")


class L2Norm(nn.Module):
    """L2-normalise along ``dim`` (per location across channels for feature maps)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=self.dim)


class Flatten(nn.Module):
    """(N, C, 1, 1) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2:] != (1, 1):
            raise ValueError(f"Flatten expects (N, C, 1, 1), got {tuple(x.shape)}")
        return x[:, :, 0, 0]


class GeMPool(nn.Module):
    """Generalised-mean pooling with a learned exponent ``p`` (init 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / self.p)


class GeM(nn.Sequential):
    """Local features L2-normalised per location, GeM-pooled, flattened (benchmark ``gem``)."""

    kind = "gem"

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__(L2Norm(dim=1), GeMPool(p=p, eps=eps), Flatten())

    def output_dim(self, channels: int) -> int:
        return channels

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        desc = self(x)
        count = torch.full((x.shape[0],), x.shape[-2] * x.shape[-1], dtype=torch.int64)
        return desc, {"count": count}

    def pyramid_params(self) -> dict:
        return {"type": "gem", "p": float(self[1].p.detach().cpu().item()), "eps": self[1].eps}


class NetVLAD(nn.Module):
    """NetVLAD with soft assignment by a 1x1 convolution (benchmark ``netvlad``)."""

    kind = "netvlad"

    def __init__(self, clusters: int = 64, dim: int = 256):
        super().__init__()
        self.clusters = clusters
        self.dim = dim
        self.conv = nn.Conv2d(dim, clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.rand(clusters, dim))

    def output_dim(self, channels: int) -> int:
        return self.clusters * channels

    def _residual_sums(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape[:2]
        if d != self.dim:
            raise ValueError(f"NetVLAD built for {self.dim} channels got {d}")
        x = F.normalize(x, p=2.0, dim=1)
        soft_assign = F.softmax(self.conv(x).flatten(2), dim=1)  # (N, K, L); N may be 0
        x_flat = x.flatten(2)  # (N, D, L)
        weighted = torch.bmm(soft_assign, x_flat.transpose(1, 2))  # (N, K, D)
        return weighted - soft_assign.sum(dim=2, keepdim=True) * self.centroids.unsqueeze(0)

    @staticmethod
    def _normalise(vlad: torch.Tensor) -> torch.Tensor:
        vlad = F.normalize(vlad, p=2.0, dim=2)  # intra-normalisation
        return F.normalize(vlad.flatten(1), p=2.0, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._residual_sums(x))

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        vlad = self._residual_sums(x)
        norms = vlad.norm(p=2, dim=2)
        return self._normalise(vlad), {"cluster_norms": norms}

    def pyramid_params(self) -> dict:
        return {"type": "netvlad", "clusters": self.clusters, "dim": self.dim}

    @torch.no_grad()
    def init_from_descriptors(self, descriptors: np.ndarray, seed: int = 0, niter: int = 100) -> None:
        """k-means initialisation from L2-normalised local features, as the benchmark does.

        Sets the centroids to the k-means centres and the assignment weights to
        ``alpha * normalised centroids`` with ``alpha = -log(0.01) / mean(top1 - top2 dot)``.
        """
        import faiss

        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if len(descriptors) < self.clusters:
            raise VprkitError(
                f"NetVLAD initialisation needs at least {self.clusters} local features, "
                f"got {len(descriptors)}"
            )
        kmeans = faiss.Kmeans(self.dim, self.clusters, niter=niter, verbose=False, seed=seed)
        kmeans.train(descriptors)
        centroids = kmeans.centroids.astype(np.float32)
        assign = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        dots = np.sort(assign @ descriptors.T, axis=0)[::-1]
        alpha = float(-np.log(0.01) / np.mean(dots[0] - dots[1]))
        self.centroids.copy_(torch.from_numpy(centroids))
        self.conv.weight.copy_(torch.from_numpy(alpha * assign)[:, :, None, None])


def build_aggregation(name: str, channels: int, clusters: int = 64) -> nn.Module:
    if name == "gem":
        return GeM()
    if name == "netvlad":
        return NetVLAD(clusters=clusters, dim=channels)
    raise VprkitError(f"unknown aggregation {name!r}; choose one of {', '.join(AGGREGATIONS)}")
