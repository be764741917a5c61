"""NetVLAD (benchmark ``netvlad``; keys ``aggregation.centroids``, ``aggregation.conv.weight``).

Pyramid: ``cluster_norms`` (norm of each cluster's residual sum before intra-normalisation) is
stored per image. The residual sums are additive over locations, so the pyramid sums
``cluster_norms_s[k] * unit(desc_s[k])`` over scales, then intra-normalises and L2-normalises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vprkit.errors import VprkitError
from vprkit.models.aggregations.base import Aggregation, register


@register("netvlad")
class NetVLAD(Aggregation):
    """NetVLAD with soft assignment by a 1x1 convolution (benchmark ``netvlad``)."""

    help = "NetVLAD, --clusters clusters (k-means initialised)"
    pyramid_rule = "netvlad"

    @dataclass(frozen=True)
    class Options(Aggregation.Options):
        """NetVLAD's options: ``clusters``, the number K of clusters (D = K x channels)."""

        clusters: int = 64

    def __init__(self, clusters: int = 64, dim: int = 256):
        super().__init__()
        self.clusters = clusters
        self.dim = dim
        self.conv = nn.Conv2d(dim, clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.rand(clusters, dim))

    @classmethod
    def build(cls, channels: int, options: Any) -> NetVLAD:
        return cls(clusters=options.clusters, dim=channels)

    @classmethod
    def recognise(cls, state):
        if set(state) != {"centroids", "conv.weight"}:
            return None
        return [{"clusters": int(state["centroids"].shape[0])}]

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
        assert kmeans.centroids is not None  # set by train
        centroids = kmeans.centroids.astype(np.float32)
        assign = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        dots = np.sort(assign @ descriptors.T, axis=0)[::-1]
        alpha = float(-np.log(0.01) / np.mean(dots[0] - dots[1]))
        self.centroids.copy_(torch.from_numpy(centroids))
        self.conv.weight.copy_(torch.from_numpy(alpha * assign)[:, :, None, None])
