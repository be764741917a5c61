"""Ensembles from stored descriptors versus re-extraction: time of combine + evaluate.

Generates a dataset (``--images`` of ``--size H W``), extracts GeM and NetVLAD descriptors once
(timed: this is what re-extraction would cost each time), then times, from the stored files,
``combine`` (plain concatenation, and PCA of NetVLAD) followed by ``evaluate``. Everything runs in
this process, so interpreter and import start-up are not counted on either side.

Example::

    python benchmarks/bench_combine.py --images 64 --size 480 640
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vprkit.data.synthetic import generate_dataset
from vprkit.ensemble.combining import combine
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.extract.split import ExtractOptions, extract
from vprkit.models import ModelConfig


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images in total (a quarter queries)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--backbone", default="resnet18conv4")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vprkit-bench-combine-"))
    console = Console()
    try:
        n_q = max(1, args.images // 4)
        root = generate_dataset(
            tmp / "data", {"test": (args.images - n_q, n_q)}, size=tuple(args.size), seed=0
        )
        options = ExtractOptions(resize=tuple(args.size), batch_size=args.batch_size, workers=args.workers)
        rows = []
        files = {}
        for agg in ("gem", "netvlad"):
            config = ModelConfig(backbone=args.backbone, aggregation=agg, weights="none")
            files[agg], seconds = timed(
                lambda c=config, a=agg: extract(root, tmp / f"{a}.h5", c, options, progress=False)
            )
            rows.append((f"extract {agg}" + (" (incl. k-means)" if agg == "netvlad" else ""), seconds))
        extract_total = sum(s for _, s in rows)
        pca_dim = min(32, args.images - n_q)
        stored = 0.0
        for name, kwargs in (("concat", {}), (f"PCA {pca_dim} concat", {"pca": pca_dim})):
            out, t_combine = timed(
                lambda k=kwargs, n=name: combine(
                    [files["gem"], files["netvlad"]], tmp / f"{n.split()[0]}.h5", progress=False, **k
                )
            )
            result, t_eval = timed(lambda o=out: evaluate_file(o))
            rows.append((f"combine {name}", t_combine))
            rows.append((f"evaluate {name} (R@1 {result.recalls[1]:.1f})", t_eval))
            stored += t_combine + t_eval
        table = Table(
            title=f"{args.images} images of {args.size[0]}x{args.size[1]}, "
            f"{args.backbone}, CPU threads as default"
        )
        table.add_column("step")
        table.add_column("seconds", justify="right")
        for step, seconds in rows:
            table.add_row(step, f"{seconds:.3f}")
        console.print(table)
        console.print(
            f"re-extraction {extract_total:.1f} s; both ensembles from stored files "
            f"(combine + evaluate) {stored:.2f} s: {extract_total / stored:.0f}x faster"
        )
    finally:
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
