"""Sharded extraction: one ``vprkit extract`` process against N ``--shard i/N`` processes + merge.

Generates a dataset with ``vprkit.data.synthetic.generate_dataset`` in a temporary folder, then runs,
as separate processes through the command line (what users run):

1. ``vprkit extract ROOT -o whole.h5`` with all of the machine's threads;
2. N concurrent ``vprkit extract ROOT -o sharded.h5 --shard i/N`` processes, each limited to
   cores/N threads (``OMP_NUM_THREADS``, ``--workers`` split likewise), then
   ``vprkit merge sharded.shard*ofN.h5 -o sharded.h5``;

and reports the wall time of each, the merge time, and the largest difference between the merged
file's descriptors and the unsharded ones (batches differ at shard boundaries, so equal to float
rounding). On one machine, N processes share its cores: the point is that the work splits and
joins correctly; on N GPUs or machines each process has its own device and the extraction time
divides by about N.

Example::

    python benchmarks/bench_shards.py --images 200 --size 240 320 --processes 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from rich.console import Console
from rich.table import Table

from vprkit.data.synthetic import generate_dataset

console = Console(width=None if sys.stdout.isatty() else 110)


def vprkit(*args: str, threads: int | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen(
        [sys.executable, "-m", "vprkit.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"failed: {' '.join(proc.args)}\n{out}")


def descriptors(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {f"{role} names": h5[f"{role}/names"][()] for role in ("database", "queries")} | {
            f"scale {s} {role}": h5[f"scales/{s}/{role}"][()]
            for s in h5["scales"]
            for role in ("database", "queries")
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="database + queries")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--processes", type=int, default=2, help="shards N")
    parser.add_argument("--aggregation", default="gem", choices=("gem", "netvlad"))
    parser.add_argument("--scales", default="1")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes in total")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    n = args.processes
    queries = max(2, args.images // 4)
    tmp = Path(tempfile.mkdtemp(prefix="vprkit-bench-shards-"))
    try:
        root = generate_dataset(
            tmp / "data", {"test": (args.images - queries, queries)}, size=tuple(args.size), seed=0
        )
        common = [
            "extract",
            str(root),
            "--weights",
            "none",
            "--aggregation",
            args.aggregation,
            "--resize",
            *map(str, args.size),
            "--scales",
            args.scales,
            "--quiet",
            "--device",
            "cpu",
        ]
        started = time.perf_counter()
        wait([vprkit(*common, "-o", str(tmp / "whole.h5"), "--workers", str(args.workers))])
        whole = time.perf_counter() - started

        started = time.perf_counter()
        wait(
            [
                vprkit(
                    *common,
                    "-o",
                    str(tmp / "sharded.h5"),
                    "--shard",
                    f"{i}/{n}",
                    "--workers",
                    str(max(0, args.workers // n)),
                    threads=max(1, cores // n),
                )
                for i in range(n)
            ]
        )
        sharded = time.perf_counter() - started
        started = time.perf_counter()
        wait(
            [
                vprkit(
                    "merge",
                    *[str(tmp / f"sharded.shard{i}of{n}.h5") for i in range(n)],
                    "-o",
                    str(tmp / "sharded.h5"),
                    "--quiet",
                )
            ]
        )
        merged = time.perf_counter() - started

        a, b = descriptors(tmp / "whole.h5"), descriptors(tmp / "sharded.h5")
        same_names = all((a[k] == b[k]).all() for k in a if k.endswith("names"))
        diff = max(float(np.abs(a[k] - b[k]).max()) for k in a if not k.endswith("names"))
        table = Table(
            title=f"{args.images} images of {args.size[0]}x{args.size[1]}, resnet18conv4 "
            f"+ {args.aggregation}, scales {args.scales}, {cores} CPU cores"
        )
        for column in ("run", "seconds", "images/s"):
            table.add_column(column, justify="left" if column == "run" else "right")
        table.add_row("1 process", f"{whole:.1f}", f"{args.images / whole:.1f}")
        table.add_row(f"{n} processes (--shard i/{n})", f"{sharded:.1f}", f"{args.images / sharded:.1f}")
        table.add_row("merge", f"{merged:.1f}", "")
        table.add_row(
            f"{n} processes + merge", f"{sharded + merged:.1f}", f"{args.images / (sharded + merged):.1f}"
        )
        console.print(table)
        console.print(
            f"merged = unsharded: names {'identical' if same_names else 'DIFFER'}, "
            f"descriptors within {diff:.1e}"
        )
        return 0 if same_names and diff < 1e-4 else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
