"""Extraction throughput of ``vprkit.extract.split`` against the benchmark's own test loop.

Generates a dataset with ``vprkit.data.synthetic.generate_dataset`` in a temporary folder and times,
side by side in the same process:

- ``vprkit.extract.split.extract`` (weights "none", progress off) for scales ``1`` and ``1,2,3``;
- "the benchmark's own test loop": a re-implementation of the Deep Visual Geo-localization
  Benchmark's ``test()`` feature loop (DataLoader over ``PIL.Image.open(...).convert("RGB")``,
  ``ToTensor`` + ImageNet ``Normalize``, ``transforms.functional.resize(img, [H, W])`` on the
  tensor, ``torch.no_grad()``, NCHW float32), with the same vprkit network but, for NetVLAD, the
  benchmark's per-cluster Python loop aggregation. The benchmark has no multi-scale extraction,
  so its figure for ``1,2,3`` is its loop run once per scale (``--resize H/s W/s``).

One-off costs are kept out of the timed runs: every timed run is preceded by a warm-up (a small
generated dataset of about one batch, through the same code path and image sizes). NetVLAD
without a checkpoint is initialised by k-means inside ``extract``; that is done once, untimed, on
the warm-up images, and the network is saved as a vprkit checkpoint that the timed extractions
load (``ModelConfig(weights="none", checkpoint=...)``), so k-means is not timed. GeM needs none.
The timed runs are interleaved (benchmark loop, then vprkit, for each scale set and each of
``--repeat`` rounds) so that a change of the machine's load affects both; the fastest is shown.

With ``--half`` it also times ``vprkit extract --half`` (bfloat16 autocast on a CPU, float16 on
CUDA) and prints how far its descriptors are from float32 ones.

Example::

    python benchmarks/bench_extract.py --images 64 --size 480 640 --aggregation netvlad --half
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from vprkit.data.images import MEAN, STD
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.extract.split import ExtractOptions, extract, resolve_device
from vprkit.models import (
    BACKBONES,
    ModelConfig,
    NetVLAD,
    VPRModel,
    build_model,
    fingerprint,
    save_checkpoint,
)
from vprkit.models.aggregations import AGGREGATIONS

# Wide enough for the table when the output is not a terminal (a log file, a pipe).
console = Console(width=None if sys.stdout.isatty() else 110)
NOMINAL_PIXEL_RATIO = 1 + 1 / 4 + 1 / 9


# --------------------------------------------------------------------------------------------
# The benchmark's test loop (re-implemented)


class BenchmarkTestDataset(Dataset):
    """Like the benchmark's ``BaseDataset`` with ``test_method="hard_resize"``."""

    def __init__(self, split_folder: Path, resize: tuple[int, int]):
        self.database_paths = sorted(str(p) for p in (split_folder / "database").rglob("*.jpg"))
        self.queries_paths = sorted(str(p) for p in (split_folder / "queries").rglob("*.jpg"))
        self.images_paths = self.database_paths + self.queries_paths
        self.database_num = len(self.database_paths)
        self.queries_num = len(self.queries_paths)
        self.resize = list(resize)
        self.base_transform = T.Compose([T.ToTensor(), T.Normalize(mean=MEAN, std=STD)])

    def __len__(self) -> int:
        return len(self.images_paths)

    def __getitem__(self, index: int):
        img = Image.open(self.images_paths[index]).convert("RGB")
        img = self.base_transform(img)
        img = T.functional.resize(img, self.resize)
        return img, index


class LoopNetVLAD(nn.Module):
    """The benchmark's NetVLAD forward: one Python iteration per cluster, in which the residuals
    of all locations to centroid k are weighted by their soft assignment to k and summed.

    Shares ``conv`` and ``centroids`` with a vprkit ``NetVLAD`` layer.
    """

    def __init__(self, layer: NetVLAD):
        super().__init__()
        self.clusters = layer.clusters
        self.conv = layer.conv
        self.centroids = layer.centroids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape[:2]
        x = F.normalize(x, p=2, dim=1)
        x_flat = x.view(n, d, -1)  # (N, D, L)
        locations = x_flat.shape[-1]
        soft_assign = F.softmax(self.conv(x).view(n, self.clusters, -1), dim=1)  # (N, K, L)
        vlad = torch.zeros((n, self.clusters, d), dtype=x_flat.dtype, device=x_flat.device)
        for k in range(self.clusters):
            # (N, 1, D, L) - (1, 1, D, L): residual of every location to centroid k
            centroid = self.centroids[k : k + 1, :].expand(locations, -1, -1).permute(1, 2, 0)
            residual = x_flat.unsqueeze(0).permute(1, 0, 2, 3) - centroid.unsqueeze(0)
            residual = residual * soft_assign[:, k : k + 1, :].unsqueeze(2)
            vlad[:, k : k + 1, :] = residual.sum(dim=-1)
        vlad = F.normalize(vlad, p=2, dim=2)  # intra-normalisation
        vlad = vlad.view(n, -1)
        return F.normalize(vlad, p=2, dim=1)


class BenchmarkNetwork(nn.Module):
    """The vprkit network's backbone, with the benchmark's aggregation forward."""

    def __init__(self, model: VPRModel):
        super().__init__()
        self.backbone = model.backbone
        agg = model.aggregation
        self.aggregation = LoopNetVLAD(agg) if isinstance(agg, NetVLAD) else agg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone(x))


def benchmark_test_loop(
    model: nn.Module,
    split_folder: Path,
    resize: tuple[int, int],
    features_dim: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    limit: int | None = None,
) -> np.ndarray:
    """Descriptors of database then queries, as the benchmark's ``test()`` computes them."""
    eval_ds = BenchmarkTestDataset(split_folder, resize)
    model = model.eval()
    total = len(eval_ds) if limit is None else min(limit, len(eval_ds))
    all_features = np.empty((len(eval_ds), features_dim), dtype="float32")
    with torch.no_grad():
        ranges = [
            range(0, eval_ds.database_num),
            range(eval_ds.database_num, eval_ds.database_num + eval_ds.queries_num),
        ]
        for indices_range in ranges:
            indices_range = [i for i in indices_range if i < total]
            if not indices_range:
                continue
            loader = DataLoader(
                dataset=Subset(eval_ds, indices_range),
                num_workers=workers,
                batch_size=batch_size,
                pin_memory=(device.type == "cuda"),
            )
            for inputs, indices in loader:
                features = model(inputs.to(device))
                all_features[indices.numpy(), :] = features.cpu().numpy()
    return all_features[:total]


# --------------------------------------------------------------------------------------------


def scale_sizes(size: tuple[int, int], scales: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(max(1, size[0] // s), max(1, size[1] // s)) for s in scales]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_extract(
    root: Path,
    output: Path,
    config: ModelConfig,
    scales: tuple[int, ...],
    args,
    overwrite: bool,
    cluster_features: int = 100,
    half: bool = False,
) -> float:
    options = ExtractOptions(
        split="test",
        scales=scales,
        resize=tuple(args.size),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        overwrite=overwrite,
        half=half,
        cluster_features_per_image=cluster_features,
    )
    started = time.perf_counter()
    extract(root, output, config, options, progress=False)
    return time.perf_counter() - started


def run_benchmark_loop(
    model: nn.Module,
    split_folder: Path,
    scales: tuple[int, ...],
    args,
    features_dim: int,
    device: torch.device,
    limit: int | None = None,
) -> tuple[float, list[np.ndarray]]:
    started = time.perf_counter()
    outputs = []
    for size in scale_sizes(tuple(args.size), scales):
        outputs.append(
            benchmark_test_loop(
                model, split_folder, size, features_dim, args.batch_size, args.workers, device, limit
            )
        )
    synchronize(device)
    return time.perf_counter() - started, outputs


def feature_locations(backbone: str, size: tuple[int, int]) -> int:
    stride = BACKBONES[backbone][1]
    return math.ceil(size[0] / stride) * math.ceil(size[1] / stride)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=int, default=64, help="total images of the generated split (database + queries)"
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(480, 640),
        metavar=("H", "W"),
        help="image size; also the resize of both pipelines",
    )
    parser.add_argument("--backbone", default="resnet18conv4", choices=sorted(BACKBONES))
    parser.add_argument("--aggregation", default="netvlad", choices=AGGREGATIONS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--multi-scales", default="1,2,3", help="the multi-scale set timed besides scale 1 (default 1,2,3)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="timed runs of each measurement; the fastest is reported"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--no-baseline", action="store_true", help="time vprkit extract only (skip the benchmark's loop)"
    )
    parser.add_argument(
        "--half",
        action="store_true",
        help="also time vprkit extract --half (bfloat16 on CPU, float16 on CUDA) "
        "and compare its descriptors with float32",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.images < 5:
        parser.error("--images must be at least 5")
    if min(args.size) < 16:
        parser.error("--size must be at least 16 x 16")
    if args.batch_size < 1 or args.workers < 0 or args.repeat < 1:
        parser.error("--batch-size and --repeat must be >= 1, --workers >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    size = tuple(args.size)
    multi = tuple(int(s) for s in args.multi_scales.split(","))
    scale_sets = [(1,), multi] if multi != (1,) else [(1,)]
    n_queries = max(3, round(args.images * 0.25))
    n_database = args.images - n_queries

    # Warm-up dataset: about one batch; for NetVLAD enough local features for a k-means of
    # 64 clusters without faiss's "too few points" warning (39 points per centroid).
    locations = feature_locations(args.backbone, size)
    warm_db = args.batch_size
    if args.aggregation == "netvlad":
        warm_db = max(warm_db, math.ceil(64 * 39 / locations))

    config = ModelConfig(backbone=args.backbone, aggregation=args.aggregation, weights="none")
    console.print(
        f"device: {device}; torch threads: {torch.get_num_threads()}; "
        f"torch {torch.__version__}; python {sys.version.split()[0]}"
    )
    console.print(
        f"model: {args.backbone} + {args.aggregation} (weights none); images "
        f"{args.images} ({n_database} database + {n_queries} queries) of {size[0]}x"
        f"{size[1]}; batch size {args.batch_size}; workers {args.workers}"
    )

    tmp = Path(tempfile.mkdtemp(prefix="vprkit-bench-extract-"))
    rows = []  # (method, scales, images, seconds)
    checks = []  # (scales, max abs difference per scale)
    try:
        started = time.perf_counter()
        root = generate_dataset(tmp / "data", {"test": (n_database, n_queries)}, size=size, seed=0)
        warm_root = generate_dataset(tmp / "warm", {"test": (warm_db, 2)}, size=size, seed=1)
        console.print(f"generated datasets in {time.perf_counter() - started:.1f} s ({tmp})")
        split_folder = root / "images" / "test"

        output = tmp / "extract.h5"
        if args.aggregation == "netvlad":
            # NetVLAD without a checkpoint is initialised by k-means inside extract. Do that once
            # (untimed, on the warm-up images) and save the network as a vprkit checkpoint:
            # timed extractions load it (weights "none" + checkpoint) and skip the k-means.
            run_extract(
                warm_root, output, config, (1,), args, overwrite=True, cluster_features=max(100, locations)
            )
            torch.manual_seed(0)  # extract's seed: the same random backbone
            model = VPRModel(config).eval()
            with h5py.File(output, "r") as h5:
                arrays = {k: torch.from_numpy(v[()]) for k, v in h5["model/aggregation"].items()}
            model.aggregation.load_state_dict(arrays)
            checkpoint = save_checkpoint(model, tmp / "netvlad.pth")
            config = ModelConfig(
                backbone=args.backbone,
                aggregation=args.aggregation,
                weights="none",
                checkpoint=str(checkpoint),
            )
            console.print(
                f"NetVLAD clusters by k-means on {warm_db} warm-up images, saved as a "
                "checkpoint for the timed runs"
            )
        # Warm-ups: the same code path and image sizes, on about one batch.
        for scales in scale_sets:
            run_extract(warm_root, output, config, scales, args, overwrite=True)
            if args.half:
                run_extract(warm_root, output, config, scales, args, overwrite=True, half=True)
        bench_model = same_network = None
        if not args.no_baseline:
            # The same network as extract (same seed or checkpoint), NCHW float32.
            torch.manual_seed(0)
            model = build_model(config).eval()
            with h5py.File(output, "r") as h5:
                stored_fingerprint = json.loads(h5.attrs["model"])["fingerprint"]
            same_network = fingerprint(model) == stored_fingerprint
            bench_model = BenchmarkNetwork(model).to(device)
            features_dim = model.output_dim
            for scales in scale_sets:  # one batch through the same loop at every size
                run_benchmark_loop(
                    bench_model, split_folder, scales, args, features_dim, device, limit=args.batch_size
                )

        # Timed runs, interleaved so that a change in the machine's load hits both methods.
        extract_times = {scales: [] for scales in scale_sets}
        half_times = {scales: [] for scales in scale_sets}
        baseline_times = {scales: [] for scales in scale_sets}
        stored, computed, stored_half = {}, {}, {}
        for _ in range(args.repeat):
            for scales in scale_sets:
                if bench_model is not None:
                    seconds, computed[scales] = run_benchmark_loop(
                        bench_model, split_folder, scales, args, features_dim, device
                    )
                    baseline_times[scales].append(seconds)
                extract_times[scales].append(run_extract(root, output, config, scales, args, overwrite=True))
                with h5py.File(output, "r") as h5:
                    stored[scales] = [
                        np.concatenate([h5[f"scales/{s}/database"][:], h5[f"scales/{s}/queries"][:]])
                        for s in scales
                    ]
                if args.half:
                    half_times[scales].append(
                        run_extract(root, output, config, scales, args, overwrite=True, half=True)
                    )
                    with h5py.File(output, "r") as h5:
                        stored_half[scales] = [
                            np.concatenate([h5[f"scales/{s}/database"][:], h5[f"scales/{s}/queries"][:]])
                            for s in scales
                        ]
        extract_seconds = {k: min(v) for k, v in extract_times.items()}
        baseline_seconds = {k: min(v) for k, v in baseline_times.items() if v}
        for scales in scale_sets:
            name = "+".join(map(str, scales))
            rows.append(("vprkit extract", name, args.images, extract_seconds[scales]))
            if args.half:
                rows.append(("vprkit extract --half", name, args.images, min(half_times[scales])))
            if scales in baseline_seconds:
                method = "benchmark test loop" + (" (1 pass per scale)" if len(scales) > 1 else "")
                rows.append((method, name, args.images, baseline_seconds[scales]))
                if same_network:
                    checks.append(
                        (
                            name,
                            [
                                float(np.abs(a - b).max())
                                for a, b in zip(stored[scales], computed[scales], strict=True)
                            ],
                        )
                    )

        runs = f", fastest of {args.repeat} runs" if args.repeat > 1 else ""
        table = Table(
            title=f"Extraction throughput ({device}, {size[0]}x{size[1]}, "
            f"{args.backbone} + {args.aggregation}{runs})"
        )
        for column in ("method", "scales", "images", "seconds", "images/s", "speed-up vs benchmark loop"):
            table.add_column(column, justify="left" if column == "method" else "right")
        order = {"benchmark": 0, "vprkit": 1}
        rows.sort(key=lambda r: (len(r[1]), order[r[0].split()[0]], r[0]))
        for method, name, images, seconds in rows:
            scales = tuple(int(s) for s in name.split("+"))
            base = baseline_seconds.get(scales)
            speedup = f"{base / seconds:.2f}x" if base else "-"
            table.add_row(method, name, str(images), f"{seconds:.2f}", f"{images / seconds:.2f}", speedup)
        console.print(table)

        if len(scale_sets) > 1:
            pixels = sum(h * w for h, w in scale_sizes(size, multi)) / (size[0] * size[1])
            feats = sum(feature_locations(args.backbone, hw) for hw in scale_sizes(size, multi))
            feats /= feature_locations(args.backbone, size)
            ratio = extract_seconds[multi] / extract_seconds[(1,)]
            console.print(
                f"vprkit extract time ratio scales {'+'.join(map(str, multi))} / 1: {ratio:.2f} "
                f"(pixel ratio {pixels:.3f}; nominal 1+1/4+1/9 = {NOMINAL_PIXEL_RATIO:.3f}; "
                f"feature-map locations ratio {feats:.3f})"
            )
            if baseline_seconds:
                ratio_b = baseline_seconds[multi] / baseline_seconds[(1,)]
                console.print(f"benchmark loop time ratio: {ratio_b:.2f}")
        for name, diffs in checks:
            text = ", ".join(f"{d:.2e}" for d in diffs)
            console.print(
                f"max |benchmark loop - vprkit extract| descriptor difference, scales {name}: {text}"
            )
        for scales, halves in stored_half.items():
            cosines = [
                float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
                for a, b in zip(halves, stored[scales], strict=True)
            ]
            diffs = [float(np.abs(a - b).max()) for a, b in zip(halves, stored[scales], strict=True)]
            console.print(
                f"--half vs float32, scales {'+'.join(map(str, scales))}: max |difference| "
                + ", ".join(f"{d:.2e}" for d in diffs)
                + "; min cosine similarity "
                + ", ".join(f"{c:.5f}" for c in cosines)
            )
        if not args.no_baseline and not checks:
            console.print(
                "[yellow]descriptor check skipped: the baseline network differs from "
                "the one extract built (fingerprint)[/yellow]"
            )
    finally:
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except VprkitError as err:
        sys.exit(f"error: {err}")
