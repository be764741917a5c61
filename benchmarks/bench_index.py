"""Approximate search for serving: recall loss and speed-up of a faiss index against exact search.

Writes a synthetic descriptor file (as ``bench_evaluate.py`` does: random unit rows, queries are
noisy copies of database rows within 10 m), then runs ``evaluate_file`` exactly and with each
``--index`` factory string (built, then loaded from disk on a second call), and prints build time,
search time and Recall@N for each.

Example::

    python benchmarks/bench_index.py --database 200000 --dim 256 --index IVF1024,Flat IVF1024,PQ32
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench_evaluate import generate
from rich.console import Console
from rich.table import Table

from vprkit.evaluate.evaluation import evaluate_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--index", nargs="+", default=["IVF1024,Flat", "IVF1024,PQ32"])
    parser.add_argument("--nprobe", type=int, default=16)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vprkit-bench-index-"))
    console = Console()
    try:
        path = generate(tmp / "db.h5", args.database, args.queries, args.dim, seed=0)
        table = Table(
            title=f"{args.database} x {args.dim} database, {args.queries} queries, nprobe {args.nprobe}"
        )
        for col in ("search", "build s", "search s", "speed-up", "R@1", "R@5", "R@10", "R@20"):
            table.add_column(col, justify="left" if col == "search" else "right")
        start = time.perf_counter()
        exact = evaluate_file(path)
        exact_s = time.perf_counter() - start
        table.add_row("exact", "-", f"{exact_s:.2f}", "1.0x", *(f"{v:.1f}" for v in exact.recalls.values()))
        for spec in args.index:
            start = time.perf_counter()
            evaluate_file(path, index=spec, nprobe=args.nprobe)  # builds and stores the index
            build_s = time.perf_counter() - start
            start = time.perf_counter()
            approx = evaluate_file(path, index=spec, nprobe=args.nprobe)  # loads it
            search_s = time.perf_counter() - start
            table.add_row(
                spec,
                f"{build_s - search_s:.2f}",
                f"{search_s:.2f}",
                f"{exact_s / search_s:.1f}x",
                *(f"{v:.1f}" for v in approx.recalls.values()),
            )
        console.print(table)
        console.print("search s includes reading the queries and loading the index from disk")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
