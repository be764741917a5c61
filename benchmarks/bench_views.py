"""Query views: what storing ``five_crops`` (and the other views) costs at extract time, and how
long each test method takes to evaluate from the stored file.

Generates a dataset (``--images`` of ``--size H W``, a quarter of them queries), extracts it
with ``--views hard_resize`` alone and with ``--views hard_resize,five_crops`` (and with every
view), each from the same random network, and prints the extraction time and file size of each,
with the ratio to ``hard_resize`` alone. Then it times ``evaluate_file`` of every test method
on the file with every view (best of ``--repeat``), exact search. Everything runs in this
process (no start-up counted).

Example::

    python benchmarks/bench_views.py --images 160 --size 240 320
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from vprkit.data.synthetic import generate_dataset
from vprkit.descriptors.views import TEST_METHODS, VIEWS
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.extract.split import ExtractOptions, extract
from vprkit.files import human_bytes
from vprkit.models import ModelConfig

VIEW_SETS = {
    "hard_resize": ("hard_resize",),
    "+ five_crops": ("hard_resize", "five_crops"),
    "every view": tuple(VIEWS),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160, help="images in total (a quarter queries)")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--aggregation", default="gem")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3, help="evaluate runs per method (best)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="vprkit-bench-views-"))
    console = Console()
    try:
        n_q = max(1, args.images // 4)
        root = generate_dataset(
            tmp / "data", {"test": (args.images - n_q, n_q)}, size=tuple(args.size), seed=0
        )
        config = ModelConfig(
            backbone="resnet18conv4", aggregation=args.aggregation, weights="none", clusters=16
        )
        # warm-up (untimed): the first run pays for thread pools and allocator growth
        extract(
            root,
            tmp / "warm.h5",
            config,
            ExtractOptions(
                resize=tuple(args.size), batch_size=args.batch_size, workers=0, device=args.device
            ),
            progress=False,
        )
        table = Table(
            title=f"extract {args.images - n_q} database + {n_q} queries, "
            f"{args.size[0]}x{args.size[1]}, resnet18conv4+{args.aggregation}, "
            f"{torch.get_num_threads()} threads"
        )
        for col in ("views", "seconds", "x hard_resize", "file size", "x hard_resize "):
            table.add_column(col, justify="right" if col != "views" else "left")
        base: tuple[float, int] | None = None
        files = {}
        for label, views in VIEW_SETS.items():
            options = ExtractOptions(
                resize=tuple(args.size),
                views=views,
                batch_size=args.batch_size,
                workers=args.workers,
                device=args.device,
            )
            started = time.perf_counter()
            files[label] = extract(root, tmp / f"{len(views)}.h5", config, options, progress=False)
            seconds = time.perf_counter() - started
            size = files[label].stat().st_size
            base = base or (seconds, size)
            table.add_row(
                label,
                f"{seconds:.2f}",
                f"{seconds / base[0]:.2f}",
                human_bytes(size),
                f"{size / base[1]:.2f}",
            )
        console.print(table)

        methods = Table(
            title=f"evaluate each test method ({n_q} queries, exact search, best of {args.repeat})"
        )
        for col in ("test method", "view read", "seconds", "R@1", "R@5"):
            methods.add_column(col, justify="left" if col in ("test method", "view read") else "right")
        for method, view in TEST_METHODS.items():
            best, result = float("inf"), None
            for _ in range(args.repeat):
                started = time.perf_counter()
                result = evaluate_file(files["every view"], test_method=method)
                best = min(best, time.perf_counter() - started)
            assert result is not None
            methods.add_row(
                method, view, f"{best:.3f}", f"{result.recalls[1]:.1f}", f"{result.recalls[5]:.1f}"
            )
        console.print(methods)
    finally:
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
