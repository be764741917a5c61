"""Running a network over images: the one place that extraction and training share.

Device choice (``resolve_device``), reduced precision (``half_dtype``, ``autocast``), the
DataLoader over images at several scales (``image_loader``), batched inference with the pyramid
statistics (``infer_batch``), BatchNorm folding (``fold_batch_norm``), local-feature sampling for
NetVLAD's k-means (``sample_local_features``), in-memory descriptors for validation
(``compute_descriptors``) and for any dataset of prepared images, such as training's caches
(``dataset_descriptors``).

The functions take ``options``: an ``InferenceOptions`` (``vprkit.extract.options``; an
``ExtractOptions`` is one), so that this module needs neither ``vprkit.extract.split`` nor
``vprkit.train``.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vprkit.data.images import ImageScalesDataset, collate_items
from vprkit.devices import autocast
from vprkit.errors import VprkitError
from vprkit.extract.options import InferenceOptions as InferenceOptions
from vprkit.models import DescriptorNet
from vprkit.progress import ProgressCallback, progress_task

Net = TypeVar("Net", bound=DescriptorNet)  # a network, returned as its own type


def runs_of_same_size(items: list) -> list[list]:
    """Consecutive items whose scale-1 images have the same size (batchable together)."""
    runs: list[list] = []
    for item in items:
        if runs and runs[-1][0][1][0].shape == item[1][0].shape:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def inference_options(options: Any) -> InferenceOptions:
    """A plain ``InferenceOptions`` of the inference fields of ``options`` (an
    ``ExtractOptions``, or any object with those attributes)."""
    return InferenceOptions(**{f.name: getattr(options, f.name) for f in fields(InferenceOptions)})


def image_loader(
    paths: list[Path], options: InferenceOptions, scales, device, view: str = "hard_resize"
) -> DataLoader:
    """Batches of ``options.batch_size`` images, each item ``(index, [image at each of
    scales], error or None, sha256)`` (``vprkit.data.images.ImageScalesDataset``), as query view
    ``view`` sees them; ``device`` is not used (kept for the callers' signature)."""
    dataset = ImageScalesDataset(paths, options.resize, scales, view)
    return DataLoader(
        dataset,
        batch_size=options.batch_size,
        num_workers=options.workers,
        collate_fn=collate_items,
        prefetch_factor=4 if options.workers > 0 else None,
    )


def check_items(items: list) -> None:
    """Raise the first image error of a batch of ``image_loader`` items."""
    for _, _, error, _ in items:
        if error:
            raise VprkitError(error)


@torch.inference_mode()
def sample_local_features(
    model: DescriptorNet, paths: list[Path], options: InferenceOptions, device: torch.device
) -> np.ndarray:
    """L2-normalised local features sampled from images, for NetVLAD's k-means (benchmark)."""
    rng = np.random.default_rng(options.seed)
    count = min(options.cluster_images, len(paths))
    chosen = sorted(rng.choice(len(paths), size=count, replace=False).tolist())
    per_image = options.cluster_features_per_image
    samples = []
    for items in image_loader([paths[i] for i in chosen], options, (1,), device):
        check_items(items)
        for run in runs_of_same_size(items):
            x = torch.stack([it[1][0] for it in run]).to(device)
            with autocast(device, options.half):
                feats = model.backbone(x.contiguous(memory_format=torch.channels_last))
            feats = F.normalize(feats.float(), p=2.0, dim=1).flatten(2).transpose(1, 2)
            for f in feats.cpu().numpy():
                take = rng.choice(len(f), size=min(per_image, len(f)), replace=False)
                samples.append(f[np.sort(take)])
    return np.concatenate(samples).astype(np.float32)


def fold_batch_norm(model: Net) -> Net:
    """Fold eval-mode BatchNorm layers into the convolutions before them (torch.fx): the same
    descriptors to float rounding, 10-20% faster on CPU. A backbone that torch.fx cannot trace
    (EfficientNet's size-dependent padding) is kept as it is."""
    from torch.fx.experimental.optimization import fuse

    try:
        backbone = fuse(model.backbone)
    except Exception:  # not traceable: keep the eager module
        return model
    model.backbone = backbone.to(memory_format=torch.channels_last)
    return model


def _same_shape_groups(images: list[torch.Tensor]) -> list[list[int]]:
    """Positions of the images grouped by shape (first appearance order): each group is one
    batch, whatever the order of sizes in the list."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    return list(groups.values())


@torch.inference_mode()
def infer_batch(model: DescriptorNet, items: list, scales, device, half: bool):
    """Descriptors and stats of a batch at every scale: [(desc (R, D), {stat: (R, ...)})].

    Each item holds one image per scale: (3, h, w), or (c, 3, h, w) for c crops of one image
    (``five_crops``), which give c consecutive rows. Images of the same shape run as one batch,
    so items of mixed sizes (native size, ``single_query``) batch by size; rows come back in
    item order."""
    per_scale = []
    for si, _ in enumerate(scales):
        images = [it[1][si] if it[1][si].dim() == 4 else it[1][si].unsqueeze(0) for it in items]
        offsets = np.cumsum([0] + [len(im) for im in images])
        rows: np.ndarray | None = None
        merged: dict[str, np.ndarray] = {}
        for group in _same_shape_groups(images):
            x = torch.cat([images[i] for i in group])
            if device.type == "cuda":
                x = x.pin_memory()
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            try:
                with autocast(device, half):
                    desc, stat = model.forward_with_stats(x)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[0]
                raise VprkitError(
                    f"{model.label} failed on {len(x)} image(s) of "
                    f"{x.shape[-2]}x{x.shape[-1]} pixels at scale {scales[si]} "
                    f"(too small?): {first}"
                ) from None
            target = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in group])
            desc_np = desc.float().cpu().numpy()
            if rows is None:
                rows = np.empty((offsets[-1], desc_np.shape[1]), dtype=np.float32)
            rows[target] = desc_np
            for k, v in stat.items():
                values = v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                if k not in merged:
                    merged[k] = np.empty((offsets[-1], *values.shape[1:]), dtype=values.dtype)
                merged[k][target] = values
        assert rows is not None  # a batch has at least one item
        if not np.isfinite(rows).all():
            bad = int(
                np.searchsorted(offsets, np.flatnonzero(~np.isfinite(rows).all(axis=1))[0], side="right") - 1
            )
            raise VprkitError(
                f"the network produced non-finite descriptors for image "
                f"{items[bad][0]} of the batch at scale {scales[si]}"
            )
        per_scale.append((rows, merged))
    return per_scale


def compute_descriptors(
    model: DescriptorNet,
    paths: list[Path],
    options: InferenceOptions,
    device: torch.device,
    progress: ProgressCallback | None = None,
    label: str = "descriptors",
) -> np.ndarray:
    """Descriptors (N, D) of images at scale 1, in memory (training caches, validation)."""
    out = np.empty((len(paths), model.output_dim), dtype=np.float32)
    row = 0
    with progress_task(progress, label, len(paths)) as task:
        for items in image_loader(paths, options, (1,), device):
            check_items(items)
            desc, _ = infer_batch(model, items, (1,), device, options.half)[0]
            out[row : row + len(desc)] = desc
            row += len(desc)
            task.advance(len(desc))
    return out


def stack_or_error(batch: list) -> tuple[torch.Tensor | None, str | None]:
    """Collate ``(image, error)`` items into ``(images (B, 3, H, W), None)``, or ``(None, the
    first error)``, images of different sizes included (run in the loader's workers)."""
    for _, error in batch:
        if error:
            return None, error
    shapes = {tuple(image.shape) for image, _ in batch}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        return None, (
            f"images of different sizes in one batch ({a[1]}x{a[2]} and {b[1]}x{b[2]}): give --resize H W"
        )
    return torch.stack([image for image, _ in batch]), None


@torch.inference_mode()
def forward_descriptors(
    model: DescriptorNet,
    x: torch.Tensor,
    device: torch.device,
    half: bool = False,
    channels_last: bool = True,
) -> np.ndarray:
    """``model(x)`` (its plain forward, under ``autocast`` with ``half``) as float32 rows."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, half):
        desc = model(x)
    return desc.float().cpu().numpy()


def dataset_descriptors(
    model: DescriptorNet,
    dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    half: bool = False,
    channels_last: bool = True,
    progress: ProgressCallback | None = None,
    label: str = "descriptors",
) -> np.ndarray:
    """Descriptors (N, D) of a dataset whose item i is ``(image (3, H, W), None)``, prepared as
    the caller wants (training's caches: as its forward sees them), or ``(None, error message)``:
    batches of ``batch_size`` decoded by ``workers`` processes, one ``forward_descriptors`` each.
    Non-finite descriptors are an error naming the image (``dataset.paths[i]`` where it has them).
    """
    out = np.empty((len(dataset), model.output_dim), dtype=np.float32)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=stack_or_error,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )
    row = 0
    with progress_task(progress, label, len(dataset)) as task:
        for images, error in loader:
            if error:
                raise VprkitError(error)
            rows = forward_descriptors(model, images, device, half, channels_last)
            if not np.isfinite(rows).all():
                bad = row + int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
                name = dataset.paths[bad] if hasattr(dataset, "paths") else f"number {bad}"
                raise VprkitError(f"the network produced non-finite descriptors for image {name}")
            out[row : row + len(rows)] = rows
            row += len(rows)
            task.advance(len(images))
    return out
