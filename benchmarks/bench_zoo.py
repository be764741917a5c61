"""The zoo's models on this machine: images/s and peak memory of ``vprkit extract --model`` at
each model's own input size, random weights (``--weights none``).

For each model (by default one variant per architecture: the descriptor dimension only changes
the last layer), a generated split of ``--images`` images at the model's input size is extracted
in a child process (so that each model's peak RSS is its own), after an untimed warm-up batch.
Prints images/s and the child's peak resident memory.

Example::

    python benchmarks/bench_zoo.py --images 16
    python benchmarks/bench_zoo.py --models cosplace_resnet50_2048,salad_dinov2_8448
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from vprkit.data.synthetic import generate_dataset
from vprkit.extract.split import ExtractOptions, extract
from vprkit.models import ModelConfig
from vprkit.models.zoo import zoo_models

DEFAULT = (
    "cosplace_resnet18_512",
    "cosplace_resnet50_2048",
    "cosplace_resnet101_2048",
    "cosplace_resnet152_2048",
    "cosplace_vgg16_512",
    "mixvpr_resnet50_4096",
    "boq_resnet50_16384",
    "boq_dinov2_12288",
    "salad_dinov2_8448",
    "megaloc_dinov2_8448",
)


def _child(name: str, folder: str, images: int, batch: int, conn) -> None:
    spec = zoo_models()[name]
    size = spec.resize or (480, 640)  # models evaluated at native size: the benchmark's 480 x 640
    root = generate_dataset(Path(folder) / "data", {"test": (images, 2)}, size=size, seed=0)
    config = ModelConfig(model=name, weights="none")
    warm = generate_dataset(Path(folder) / "warm", {"test": (batch, 2)}, size=size, seed=1)
    options = ExtractOptions(resize=size, batch_size=batch, workers=0)
    extract(warm, Path(folder) / "warm.h5", config, options, progress=False)
    started = time.perf_counter()
    extract(root, Path(folder) / "out.h5", config, options, progress=False)
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send((size, (images + 2) / seconds, rss))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="database images per model")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--models", default=",".join(DEFAULT), help="comma-separated names")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    known = zoo_models()
    table = Table(
        title=f"vprkit extract --model NAME --weights none, {args.images + 2} images, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads, CPU"
    )
    for col in ("model", "input (H x W)", "dim", "images/s", "peak RSS"):
        table.add_column(col, justify="left" if col == "model" else "right")
    ctx = mp.get_context("spawn")
    for name in names:
        if name not in known:
            table.add_row(name, "not registered", "", "", "")
            continue
        tmp = tempfile.mkdtemp(prefix="vprkit-bench-zoo-")
        try:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(name, tmp, args.images, args.batch_size, child))
            proc.start()
            proc.join()
            if proc.exitcode != 0 or not parent.poll():
                table.add_row(name, "failed", "", "", "")
                continue
            size, rate, rss = parent.recv()
            table.add_row(
                name,
                f"{size[0]}x{size[1]}",
                str(known[name].output_dim),
                f"{rate:.2f}",
                f"{rss / 2**30:.2f} GiB",
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
