"""Exact search throughput: faiss-cpu against the torch path, on the CPU and on CUDA when present.

For each ``--database NxD`` it makes random unit rows (``--dtype``, as a descriptor file stores
them) and ``--queries`` noisy unit copies of some of them, then times
``vprkit.search.exact.faiss_blocked_search`` and ``torch_blocked_search`` over the same blocks of
``--block-rows`` rows (as ``evaluate`` reads them from the file: 256 MiB of float32 rows by
default), for the top ``--k``. Each method gets an untimed warm-up on a small slice first; the
fastest of ``--repeat`` runs is shown. The CUDA time includes moving every block and the
queries to the GPU and the results back (the database is not kept there between runs).

Every method's results are compared with faiss-cpu's: "same" means identical indices with
distances within 1e-4; otherwise the column says how many of the indices differ and whether each
such swap is between distances equal to float round-off (which any two BLAS libraries can order
differently).

Example::

    python benchmarks/bench_search.py --database 100000x256 20000x4096 --queries 1000
    python benchmarks/bench_search.py --database 2000x64 --queries 50 --devices cpu   # seconds
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from vprkit.search.exact import faiss_blocked_search, torch_blocked_search

console = Console(width=None if sys.stdout.isatty() else 120)


def make_data(n: int, dim: int, n_q: int, dtype: str, seed: int = 0):
    """Unit database rows (stored as ``dtype``) and queries near ``n_q`` of them."""
    rng = np.random.default_rng(seed)
    db = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):  # in parts: float64 temporaries stay small
        part = rng.standard_normal((min(65536, n - s), dim), dtype=np.float32)
        db[s : s + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    q = db[rng.choice(n, n_q, replace=n_q > n)] + 0.5 / np.sqrt(dim) * rng.standard_normal(
        (n_q, dim), dtype=np.float32
    )
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return db.astype(dtype), q.astype(np.float32)


def blocks(db: np.ndarray, rows: int):
    return [(s, db[s : s + rows]) for s in range(0, len(db), rows)]


def agreement(ids, dist, ref_ids, ref_dist, q, db) -> str:
    """How the results compare with faiss-cpu's."""
    if not np.allclose(dist, ref_dist, rtol=0, atol=1e-4):
        return f"[red]distances differ (max {np.abs(dist - ref_dist).max():.2g})[/red]"
    differ = np.argwhere(ids != ref_ids)
    if len(differ) == 0:
        return "same"
    rows, ranks = differ[:, 0], differ[:, 1]
    mine = ((q[rows].astype(np.float64) - db[ids[rows, ranks]].astype(np.float64)) ** 2).sum(1)
    near_ties = np.abs(mine - ref_dist[rows, ranks]) <= 1e-4
    note = "all near-ties" if near_ties.all() else f"[red]{(~near_ties).sum()} not near-ties[/red]"
    return f"{len(differ)}/{ids.size} ids swapped ({note})"


def timed(method, q, parts, k, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = method(q, parts, k)
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        nargs="+",
        default=["100000x256", "20000x4096"],
        metavar="NxD",
        help="database sizes: rows x dimension",
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=20, help="neighbours per query")
    parser.add_argument(
        "--block-rows",
        type=int,
        default=None,
        help="rows per block (default: 256 MiB of float32 rows, as evaluate)",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="storage type of the database rows"
    )
    parser.add_argument(
        "--devices", default="cpu,cuda", help="torch path devices (cuda is skipped without CUDA)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="timed runs; the fastest is shown")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads and faiss.omp_set_num_threads"
    )
    args = parser.parse_args(argv)
    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    devices = [d for d in args.devices.split(",") if d]
    if "cuda" in devices and not torch.cuda.is_available():
        console.print("CUDA is not available: the torch path is timed on the CPU only")
        devices.remove("cuda")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    table = Table(
        title=f"exact search, {args.queries} queries, top {args.k}, {args.dtype} rows "
        f"(torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"GPU: {gpu})"
    )
    for col in ("database", "method", "block rows", "seconds", "queries/s", "vs faiss-cpu", "results"):
        table.add_column(col, justify="left" if col in ("database", "method", "results") else "right")
    for spec in args.database:
        n, dim = (int(v) for v in spec.lower().split("x"))
        db, q = make_data(n, dim, args.queries, args.dtype)
        rows = args.block_rows or max(1024, (256 << 20) // (4 * dim))
        parts = blocks(db, rows)
        methods = [("faiss-cpu", faiss_blocked_search)]
        methods += [
            (f"torch {d}", lambda q_, p_, k_, d=d: torch_blocked_search(q_, p_, k_, d)) for d in devices
        ]
        ref = None
        for name, method in methods:
            method(q[:8], blocks(db[:4096], rows), args.k)  # warm-up
            seconds, (dist, ids) = timed(method, q, parts, args.k, args.repeat)
            if ref is None:
                ref, ref_s = (dist, ids), seconds
            check = "reference" if name == "faiss-cpu" else agreement(ids, dist, ref[1], ref[0], q, db)
            table.add_row(
                f"{n} x {dim}",
                name,
                str(rows),
                f"{seconds:.2f}",
                f"{len(q) / seconds:,.0f}",
                f"{ref_s / seconds:.2f}x",
                check,
            )
        del db, parts
    console.print(table)


if __name__ == "__main__":
    main()
