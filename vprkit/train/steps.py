"""Optimisation steps: the images of triplet groups, the triplet margin loss, the optimiser and
scheduler, the precision and memory format of the steps (``Precision``), and training on mined
groups in steps of ``batch_size`` groups (one or several processes; see
``vprkit.train.trainer`` for what several processes compute)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vprkit.data.images import load_image, normalize, resize
from vprkit.devices import autocast
from vprkit.errors import ParameterError, VprkitError
from vprkit.progress import ProgressCallback, progress_task
from vprkit.train.config import TrainConfig
from vprkit.train.distributed import Processes
from vprkit.train.mining import TripletSource


def training_image(path: Path, size: tuple[int, int] | None, augment=None) -> torch.Tensor:
    """An image as the training steps see it: decoded, resized to ``size`` (None: kept),
    augmented (queries, with ``augment``), ImageNet-normalised. The caches use it too."""
    try:
        image = load_image(path)
    except Exception as err:
        raise VprkitError(f"cannot read image {path}: {err}") from None
    if size is not None:
        image = resize(image, size)
    if augment is not None:
        image = augment(image)
    return normalize(image)


M = TypeVar("M", bound=torch.nn.Module)


class Precision:
    """How the network computes in training: ``--amp`` (autocast to bfloat16 on a CPU, float16
    on CUDA with a gradient scaler) and ``--channels-last`` (the network's and the inputs'
    memory format)."""

    def __init__(self, device: torch.device, amp: bool = False, channels_last: bool = False):
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None

    @classmethod
    def of(cls, config: TrainConfig, device: torch.device) -> Precision:
        return cls(device, config.amp, config.channels_last)

    def prepare(self, model: M) -> M:
        """The model in this memory format (in place)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.amp)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimiser step (through the gradient scaler where there is one)."""
        optimizer.zero_grad()
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()


class TripletImages(Dataset):
    """Item i: the 2 + negatives images of triplet group i as one (2 + n, 3, H, W) tensor."""

    def __init__(self, source: TripletSource, groups: np.ndarray, size, augment):
        self.db = source.split.database.paths()
        self.q = source.split.queries.paths()
        self.groups = groups
        self.size = size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.groups)

    def _image(self, path: Path, augment=None) -> torch.Tensor:
        return training_image(path, self.size, augment)

    def __getitem__(self, i: int) -> torch.Tensor:
        q, pos, *negs = self.groups[i].tolist()
        images = [self._image(self.q[q], self.augment), self._image(self.db[pos])]
        images += [self._image(self.db[n]) for n in negs]
        try:
            return torch.stack(images)
        except RuntimeError:
            raise ParameterError("resize", "training images differ in size; give a resize (H, W)") from None


def triplet_loss(
    features: torch.Tensor, groups: int, negatives: int, margin: float, total_groups: int | None = None
) -> torch.Tensor:
    """Triplet margin loss of ``groups`` blocks of (query, positive, negatives...) features,
    summed over negatives and divided by groups x negatives (the benchmark's normalisation);
    divided by ``total_groups`` x negatives instead when given (one process's share of the loss
    of a batch of ``total_groups`` groups)."""
    feats = features.view(groups, 2 + negatives, -1)
    q = feats[:, :1].expand(-1, negatives, -1).reshape(-1, feats.shape[-1])
    p = feats[:, 1:2].expand(-1, negatives, -1).reshape(-1, feats.shape[-1])
    n = feats[:, 2:].reshape(-1, feats.shape[-1])
    loss = torch.nn.functional.triplet_margin_loss(q, p, n, margin=margin, p=2, reduction="sum")
    return loss / ((groups if total_groups is None else total_groups) * negatives)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``config`` over the trainable parameters (SGD with momentum 0.9)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.ASGD(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer, config: TrainConfig, refreshes_per_epoch: int):
    """plateau: x0.1 when the refresh loss stops improving by 0.5% (patience 1); cosine: over all
    cache refreshes of the run."""
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=1, threshold=0.005)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs * refreshes_per_epoch
        )
    return None


def _train_groups(
    model,
    optimizer,
    source,
    groups,
    config: TrainConfig,
    augment,
    device,
    progress: ProgressCallback | None,
    label: str,
    procs: Processes | None = None,
    precision: Precision | None = None,
) -> float:
    """Train on the groups in steps of ``batch_size`` groups; the mean loss of the steps. With
    several processes ``model`` is the DDP-wrapped model and each process takes its share of
    every step. ``precision``: that of ``config`` when not given (without a gradient scaler's
    state carried from step to step for float16 on CUDA, which the trainer keeps)."""
    procs = procs or Processes()
    precision = precision or Precision.of(config, device)
    dataset = TripletImages(source, groups, config.resize, augment)
    steps = [
        np.arange(start, min(start + config.batch_size, len(groups)))
        for start in range(0, len(groups), config.batch_size)
    ]
    pin = device.type == "cuda"
    if procs.world == 1:
        loader = DataLoader(
            dataset, batch_size=config.batch_size, num_workers=config.workers, drop_last=False, pin_memory=pin
        )
    else:
        loader = DataLoader(
            dataset,
            batch_sampler=[procs.share(s).tolist() for s in steps],
            num_workers=config.workers,
            collate_fn=_stack_or_none,
            pin_memory=pin,
        )
    model.train()
    total, batches = 0.0, 0
    with progress_task(progress, label, len(groups)) as task:
        for step, images in zip(steps, procs.guarded(loader), strict=True):
            n = len(step)
            if procs.world > 1 and images is None:  # no group for this process in this step
                images = _no_images(dataset, config, int(step[0]))
            own = images.shape[0]
            with precision.autocast():
                features = model(precision.inputs(images.flatten(0, 1))).float()
            if procs.world == 1:
                loss = triplet_loss(features, n, config.negatives, config.margin)
            else:
                loss = (
                    triplet_loss(features, own, config.negatives, config.margin, total_groups=n)
                    if own
                    else features.sum() * 0.0
                )
            # DDP averages the processes' gradients: scaled by their number, the average is
            # the gradient of the sum of the shares, which is the loss of the whole step
            precision.step(loss if procs.world == 1 else loss * procs.world, optimizer)
            total += procs.sum(float(loss.detach()))
            batches += 1
            task.advance(n, f"loss {total / batches:.4f}")
    return total / max(batches, 1)


def _stack_or_none(items: list) -> torch.Tensor | None:
    return torch.stack(items) if items else None


def _no_images(dataset: TripletImages, config: TrainConfig, group: int) -> torch.Tensor:
    """A batch of zero groups with the shape of the others."""
    if config.resize is not None:
        return torch.empty((0, 2 + config.negatives, 3, *config.resize))
    return dataset[group].unsqueeze(0)[:0]
