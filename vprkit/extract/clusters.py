"""NetVLAD's clusters for an extraction: k-means on local features, or reused from the output
being resumed or extended (so that every row of a file comes from the same model).

The k-means runs where the extraction runs: faiss on a CPU, torch on a GPU (``vprkit.search.kmeans``,
faiss's recipe: the same seed gives the same clusters to float round-off), so it is recorded as
one method whatever the device.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vprkit.data.datasets import Split, load_split
from vprkit.errors import VprkitError
from vprkit.extract.inference import inference_options, sample_local_features
from vprkit.files import partial_path
from vprkit.models import NetVLAD, VPRModel, fingerprint
from vprkit.search.exact import full_fp32_matmul
from vprkit.search.kmeans import torch_kmeans
from vprkit.store import DescriptorFile

NETVLAD_KMEANS_ITERATIONS = 100  # as NetVLAD.init_from_descriptors
logger = logging.getLogger(__name__)


def netvlad_clusters(
    model: VPRModel,
    root: Path,
    split: Split,
    output: Path,
    options: Any,
    device: torch.device,
    preprocessing: dict,
) -> dict | None:
    """k-means clusters for a NetVLAD layer that no checkpoint initialised.

    A resumed or extended extraction (same output, no --overwrite) reuses the clusters stored in
    that output, if they were made from the same backbone, preprocessing, images and k-means
    options, so that every row of the file comes from exactly the same model. ``options`` is
    the extraction's ``ExtractOptions``; returns the record of how the clusters were made (None
    where no k-means was needed).
    """
    if (
        not isinstance(getattr(model.aggregation, "inner", model.aggregation), NetVLAD)
        or model.config.checkpoint
    ):
        return None
    cluster_split = options.cluster_split or options.split
    source = split if cluster_split == split.name else load_split(root, cluster_split)
    paths = source.database.paths()
    names_hash = hashlib.sha256("\n".join(source.database.names).encode()).hexdigest()
    wanted = {
        "split": cluster_split,
        "database_names_sha256": names_hash,
        "images": min(options.cluster_images, len(paths)),
        "features_per_image": options.cluster_features_per_image,
        "seed": options.seed,
        "method": "faiss k-means",
    }
    backbone_fp = fingerprint(model.backbone)
    for candidate in () if options.overwrite else (partial_path(output), output):
        if not candidate.is_file():
            continue
        try:
            with DescriptorFile(candidate, require_complete=False) as stored:
                init = stored.model.get("netvlad_init") or {}
                same = (
                    stored.model.get("backbone_fingerprint") == backbone_fp
                    and stored.model.get("clusters") == model.config.clusters
                    and all(init.get(k) == v for k, v in wanted.items())
                    and stored.preprocessing == preprocessing
                )
                arrays = stored.aggregation_arrays() if same else {}
        except Exception:
            continue
        if arrays:
            model.aggregation.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
            return init
    logger.info(f"NetVLAD: k-means on local features of {wanted['images']} {cluster_split} database images")
    features = sample_local_features(model, paths, inference_options(options), device)
    init_netvlad(getattr(model.aggregation, "inner", model.aggregation), features, options.seed, device)
    return {**wanted, "features": int(len(features)), "kmeans_device": device.type}


def init_netvlad(layer: NetVLAD, features: np.ndarray, seed: int, device: torch.device) -> None:
    """NetVLAD's k-means initialisation where ``device`` is: ``layer.init_from_descriptors``
    (faiss) on a CPU, ``torch_init_netvlad`` on another device."""
    if device.type == "cpu":
        layer.init_from_descriptors(features, seed=seed, niter=NETVLAD_KMEANS_ITERATIONS)
    else:
        torch_init_netvlad(layer, features, seed, device)


@torch.no_grad()
def torch_init_netvlad(layer: NetVLAD, features: np.ndarray, seed: int, device: torch.device) -> None:
    """``NetVLAD.init_from_descriptors`` with ``torch_kmeans`` on ``device``: centroids at the
    k-means centres, assignment weights ``alpha`` x the normalised centroids, with
    ``alpha = -log(0.01) / mean(top-1 minus top-2 dot product of each feature with them)``."""
    if len(features) < layer.clusters:
        raise VprkitError(
            f"NetVLAD initialisation needs at least {layer.clusters} local features, got {len(features)}"
        )
    centroids = torch.from_numpy(
        torch_kmeans(features, layer.clusters, NETVLAD_KMEANS_ITERATIONS, seed, device)
    ).to(device)
    assign = centroids / centroids.norm(dim=1, keepdim=True)
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    with full_fp32_matmul():  # (2, N), in parts of 64k features
        top2 = torch.cat([(assign @ part.T).topk(2, dim=0).values for part in feats.split(1 << 16)], dim=1)
    alpha = float(-np.log(0.01) / (top2[0] - top2[1]).double().mean().item())
    layer.centroids.copy_(centroids.to(layer.centroids.device))
    layer.conv.weight.copy_((alpha * assign)[:, :, None, None].to(layer.conv.weight.device))
