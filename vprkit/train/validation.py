"""Validation descriptors in memory (split among the processes, computed as ``vprkit extract``
computes them, in float32) and validation Recall@N; inference itself is ``vprkit.extract.inference``'s,
as for extraction. The caches are ``vprkit.train.caches``'."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vprkit.data.datasets import EVAL_POSITIVE_RADIUS, Split
from vprkit.evaluate.evaluation import recall_at_n
from vprkit.extract.inference import InferenceOptions, compute_descriptors
from vprkit.models import VPRModel
from vprkit.search.exact import blocked_search
from vprkit.train.caches import shared_rows
from vprkit.train.config import TrainConfig
from vprkit.train.distributed import Processes


def validate(
    model: VPRModel, split: Split, config: TrainConfig, device, procs: Processes | None = None
) -> dict[int, float]:
    """Recall@N on the validation split (positives within 25 m); with several processes, each
    computes a share of the descriptors and every process gets process 0's recalls."""
    procs = procs or Processes()
    options = _inference_options(config)
    model.eval()
    db = _descriptors(model, split.database.paths(), options, device, procs, "val database", to_all=False)
    q = _descriptors(model, split.queries.paths(), options, device, procs, "val queries", to_all=False)

    def recalls() -> dict[int, float]:  # on process 0, which holds both
        assert q is not None and db is not None
        _, predictions = blocked_search(
            q, [(0, db)], min(max(config.recalls), len(db)), device
        )  # faiss on a CPU, torch on a GPU
        values = recall_at_n(predictions, split.positives(EVAL_POSITIVE_RADIUS), config.recalls)
        return {n: float(v) for n, v in zip(config.recalls, values, strict=True)}

    return procs.on_main(recalls)


def _descriptors(
    model: VPRModel,
    paths: list[Path],
    options: InferenceOptions,
    device,
    procs: Processes,
    label: str,
    to_all: bool = True,
) -> np.ndarray | None:
    """compute_descriptors, split among the processes in whole batches and gathered (on every
    process, or on process 0 only when not ``to_all``)."""
    return shared_rows(
        len(paths),
        options.batch_size,
        lambda start, stop: compute_descriptors(model, paths[start:stop], options, device, label=label),
        procs,
        to_all=to_all,
    )


def _inference_options(config: TrainConfig) -> InferenceOptions:
    """How validation descriptors (and NetVLAD's k-means features) are computed: scale 1,
    float32, no BatchNorm folding."""
    return InferenceOptions(
        resize=config.resize,
        batch_size=config.infer_batch_size,
        workers=config.workers,
        device=config.device,
        seed=config.seed,
    )
