"""NetVLAD's clusters for an extraction: k-means on local features, or reused from the output
being resumed or extended (so that every row of a file comes from the same model)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from .datasets import Split, load_split
from .files import partial_path
from .inference import inference_options, sample_local_features
from .models import NetVLAD, VPRModel, fingerprint
from .progress import console
from .store import DescriptorFile


def netvlad_clusters(model: VPRModel, root: Path, split: Split, output: Path, options: Any,
                     device: torch.device, preprocessing: dict) -> dict | None:
    """k-means clusters for a NetVLAD layer that no checkpoint initialised.

    A resumed or extended extraction (same output, no --overwrite) reuses the clusters stored in
    that output, if they were made from the same backbone, preprocessing, images and k-means
    options, so that every row of the file comes from exactly the same model. ``options`` is
    the extraction's ``ExtractOptions``; returns the record of how the clusters were made (None
    where no k-means was needed).
    """
    if not isinstance(getattr(model.aggregation, "inner", model.aggregation), NetVLAD) \
            or model.config.checkpoint:
        return None
    cluster_split = options.cluster_split or options.split
    source = split if cluster_split == split.name else load_split(root, cluster_split)
    paths = source.database.paths()
    names_hash = hashlib.sha256("\n".join(source.database.names).encode()).hexdigest()
    wanted = {"split": cluster_split, "database_names_sha256": names_hash,
              "images": min(options.cluster_images, len(paths)),
              "features_per_image": options.cluster_features_per_image,
              "seed": options.seed, "method": "faiss k-means"}
    backbone_fp = fingerprint(model.backbone)
    for candidate in () if options.overwrite else (partial_path(output), output):
        if not candidate.is_file():
            continue
        try:
            with DescriptorFile(candidate, require_complete=False) as stored:
                init = stored.model.get("netvlad_init") or {}
                same = (stored.model.get("backbone_fingerprint") == backbone_fp
                        and stored.model.get("clusters") == model.config.clusters
                        and all(init.get(k) == v for k, v in wanted.items())
                        and stored.preprocessing == preprocessing)
                arrays = stored.aggregation_arrays() if same else {}
        except Exception:
            continue
        if arrays:
            model.aggregation.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
            return init
    console.print(f"NetVLAD: k-means on local features of {wanted['images']} {cluster_split} "
                  "database images")
    features = sample_local_features(model, paths, inference_options(options), device)
    model.aggregation.init_from_descriptors(features, seed=options.seed)
    return {**wanted, "features": int(len(features))}
