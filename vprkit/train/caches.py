"""The descriptors a cache refresh mines from: computed once per refresh, in one batched pass over
the database images and queries that the mining method needs, with the shared inference module
(``vprkit.extract.inference.dataset_descriptors``: inference mode, float32 even with ``--amp``, so that
mining ranks as without it, the run's memory format),
from the images exactly as the training steps see them (``steps.training_image``, without
augmentation), so that the cache holds the descriptors of the network's training forward in
evaluation mode. The pass runs a copy of the network with its BatchNorm folded into the
convolutions (``vprkit.extract.inference.fold_batch_norm``: the same descriptors to float rounding, about
15% faster on a CPU). Several processes compute whole batches each and gather them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vprkit.errors import VprkitError
from vprkit.extract.inference import dataset_descriptors, fold_batch_norm
from vprkit.models import VPRModel
from vprkit.train.config import TrainConfig
from vprkit.train.distributed import Processes
from vprkit.train.mining import TripletSource
from vprkit.train.steps import training_image

Features = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class TrainingImages(Dataset):
    """Item i: ``(image i as the training steps see it, None)``, or ``(None, why it cannot be
    read)`` (raised by the caller, in one line)."""

    def __init__(self, paths: list[Path], size: tuple[int, int] | None):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str | None]:
        try:
            return training_image(self.paths[i], self.size), None
        except VprkitError as err:
            return None, str(err)


def shared_rows(
    n: int, batch_size: int, compute: Callable[[int, int], np.ndarray], procs: Processes, to_all: bool = True
) -> np.ndarray | None:
    """``compute(0, n)``: rows [0, n) of a descriptor matrix; with several processes each
    computes its ``batch_slice`` of whole batches, gathered on every process (or on process 0
    only, None elsewhere, when not ``to_all``)."""
    if procs.world == 1:
        return compute(0, n)
    start, stop = procs.batch_slice(n, batch_size)
    local = procs.each(lambda: compute(start, stop))
    return procs.gather_rows(local, n, batch_size, to_all=to_all)


def folded(model: VPRModel) -> VPRModel:
    """``model`` put in evaluation mode, and a copy of it with BatchNorm folded, for inference;
    ``model`` itself where it cannot be copied (several CPU processes: their BatchNorm layers
    hold a process group), so their caches differ from one process's by float rounding."""
    model.eval()
    try:
        return fold_batch_norm(copy.deepcopy(model)).eval()
    except Exception:  # not copyable: the model as it is
        return model


def cache_features(
    model: VPRModel,
    source: TripletSource,
    config: TrainConfig,
    device: torch.device,
    procs: Processes | None = None,
) -> Features:
    """The ``features(db_indices, query_indices) -> (db_feats, query_feats)`` of ``mine``: one
    pass over those images with ``model`` as it is when called (put in evaluation mode)."""
    procs = procs or Processes()
    db_paths, q_paths = source.split.database.paths(), source.split.queries.paths()

    def features(db_idx: np.ndarray, q_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        paths = [db_paths[i] for i in db_idx] + [q_paths[i] for i in q_idx]
        net = folded(model)

        def compute(start: int, stop: int) -> np.ndarray:
            return dataset_descriptors(
                net,
                TrainingImages(paths[start:stop], config.resize),
                config.infer_batch_size,
                config.workers,
                device,
                channels_last=config.channels_last,
            )

        rows = shared_rows(len(paths), config.infer_batch_size, compute, procs)
        assert rows is not None  # gathered on every process
        return rows[: len(db_idx)], rows[len(db_idx) :]

    return features
