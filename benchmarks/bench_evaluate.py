"""Time and peak memory of ``vprkit.evaluate.evaluation.evaluate_file`` on a large synthetic descriptor file.

Writes a descriptor file with ``vprkit.testing.write_descriptor_file`` (through ``vprkit.store``;
GeM header, one scale): ``--database`` N x ``--dim`` D random L2-normalised float32 rows, written
block by block so that the generator stays in bounded memory (the M queries aside), and
``--queries`` M queries, each a noisy copy of a random database row placed within 10 m of it
(UTM), so that Recall@1 is close to 100%. Then:

1. runs ``evaluate_file(path, "1", block_rows=...)`` in a fresh child process (spawned, so it
   inherits nothing) and reports its wall time and the child's peak resident memory (VmHWM),
   next to the database size;
2. checks the blocked search: the top-20 predictions that ``evaluate_file`` writes (its
   predictions CSV) must equal one-shot ``vprkit.search.exact.exact_search`` over the same rows, on the
   whole database when it fits in ``--check-max-bytes``, else on its first ``--check-rows`` rows
   copied into a file of their own (searched in at least two blocks).

With ``--dtype float16`` the file stores float16 rows (half the bytes; evaluate reads them block
by block as float32). With ``--pca D`` it also times, in another fresh process,
``vprkit.ensemble.combining.combine([file], pca=D, pca_fit="database")`` (PCA fitted on the database rows:
exact when they fit 2 GiB, else streamed with IncrementalPCA) and reports its peak memory.

Generated files are deleted at the end unless ``--keep``.

Example::

    python benchmarks/bench_evaluate.py --database 1000000 --dim 256 --queries 1000
    python benchmarks/bench_evaluate.py --database 100000 --dim 16384 --dtype float16 --pca 256
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

from vprkit.data.datasets import EVAL_POSITIVE_RADIUS, ROLES, positives_within
from vprkit.ensemble.combining import combine
from vprkit.errors import VprkitError
from vprkit.evaluate.evaluation import DEFAULT_RECALLS, evaluate_file, recall_at_n
from vprkit.report.predictions import write_predictions
from vprkit.search.exact import exact_search
from vprkit.store import DescriptorFile, human_bytes
from vprkit.testing import GEM, random_unit_rows, write_descriptor_file

# Wide enough for the table when the output is not a terminal (a log file, a pipe).
console = Console(width=None if sys.stdout.isatty() else 110)

GENERATOR_BLOCK_BYTES = 64 << 20
QUERY_NOISE = 0.5  # norm of the noise added to a database row to make a query (rows have norm 1)
COUNT = 1200  # GeM "count" statistic written for every row (a 30 x 40 feature map)
K = max(DEFAULT_RECALLS)


# --------------------------------------------------------------------------------------------
# Memory


def proc_status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM), or None where there is none."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def max_rss_bytes() -> int:
    """Peak resident memory of this process (VmHWM; ru_maxrss where there is no /proc)."""
    hwm = proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    rss = proc_status_kib("VmRSS")
    return rss * 1024 if rss is not None else max_rss_bytes()


def _child_evaluate(path: str, block_rows: int | None, conn, pca: int | None = None) -> None:
    """Runs in a spawned process: evaluate one file (or PCA-combine it), send back timings and
    memory."""
    try:
        rss_before = current_rss_bytes()
        peak_before = max_rss_bytes()
        started = time.perf_counter()
        if pca is None:
            result = evaluate_file(path, "1", block_rows=block_rows).to_dict()
        else:
            out = combine([path], Path(path).with_name("pca.h5"), pca=pca, pca_fit="database", progress=False)
            with DescriptorFile(out) as f:
                spec = json.loads(f.h5["combine"].attrs["spec"])
                result = {"dim": f.dim, "method": spec["inputs"][0]["pca"]["method"]}
            out.unlink()
        wall = time.perf_counter() - started
        conn.send(
            {
                "result": result,
                "wall": wall,
                "rss_before": rss_before,
                "peak_before": peak_before,
                "peak": max_rss_bytes(),
                "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "faiss_threads": faiss.omp_get_max_threads(),
            }
        )
    except BaseException as err:  # report it to the parent rather than dying silently
        conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        conn.close()


def evaluate_in_child(path: Path, block_rows: int | None, pca: int | None = None) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_evaluate, args=(str(path), block_rows, child, pca))
    process.start()
    child.close()
    try:
        out = parent.recv()
    except EOFError:
        out = {"error": "the evaluate process died without answering"}
    process.join()
    if process.exitcode:
        out.setdefault("error", f"the evaluate process exited with code {process.exitcode}")
    if "error" in out:
        raise SystemExit(f"evaluate failed: {out['error']}")
    return out


# --------------------------------------------------------------------------------------------
# The synthetic descriptor file


def db_name(i: int) -> str:
    return f"db{i:08d}.jpg"


def query_name(j: int) -> str:
    return f"q{j:07d}.jpg"


def header(n_db: int, n_q: int, dim: int, dtype: str = "float32") -> dict:
    return {
        "model": {"backbone": "synthetic", "aggregation": "gem", "output_dim": dim},
        "aggregation": GEM,
        "dataset": {"root": "synthetic", "split": "test", "database": n_db, "queries": n_q},
        "preprocessing": {"resize": None},
        "dtype": dtype,
    }


def generate(path: Path, n_db: int, n_q: int, dim: int, seed: int, dtype: str = "float32") -> Path:
    """The descriptor file at ``path``; descriptors are generated and written block by block
    (the queries, made from the rows of each block, are written after the database)."""
    rng = np.random.default_rng(seed)
    side = math.sqrt(n_db) * 10.0  # about one database image per 100 m^2
    db_utm = np.c_[500000.0 + rng.uniform(0, side, n_db), 4000000.0 + rng.uniform(0, side, n_db)]
    sources = np.sort(rng.choice(n_db, size=n_q, replace=n_q > n_db))
    angle, radius = rng.uniform(0, 2 * np.pi, n_q), rng.uniform(0, 10.0, n_q)
    q_utm = db_utm[sources] + np.c_[radius * np.cos(angle), radius * np.sin(angle)]
    queries = np.empty((n_q, dim), dtype=np.float32)

    def database_blocks():
        block = max(1, GENERATOR_BLOCK_BYTES // (4 * dim))
        for start in range(0, n_db, block):
            stop = min(n_db, start + block)
            rows = random_unit_rows(rng, stop - start, dim)
            # Queries whose source row is in this block: noisy copies of it.
            lo, hi = np.searchsorted(sources, [start, stop])
            if hi > lo:
                noise = rng.standard_normal((hi - lo, dim), dtype=np.float32)
                noise *= QUERY_NOISE / np.sqrt(dim)
                q = rows[sources[lo:hi] - start] + noise
                q /= np.linalg.norm(q, axis=1, keepdims=True)
                queries[lo:hi] = q
            yield rows

    def query_blocks():  # read once the database is written: every query is made then
        yield queries

    return write_descriptor_file(
        path,
        database_blocks(),
        query_blocks(),
        names={"database": [db_name(i) for i in range(n_db)], "queries": [query_name(j) for j in range(n_q)]},
        utm={"database": db_utm, "queries": q_utm},
        header=header(n_db, n_q, dim, dtype),
        count=COUNT,
    )


def copy_head(source: Path, target: Path, rows: int) -> Path:
    """A descriptor file with the first ``rows`` database rows of ``source`` and all queries."""
    with DescriptorFile(source) as src:
        n_q, dim = src.num("queries"), src.dim
        block = max(1, GENERATOR_BLOCK_BYTES // (4 * dim))

        def blocks(role: str, n: int):
            for start in range(0, n, block):
                yield src.h5[f"scales/1/{role}"][start : min(n, start + block)]

        return write_descriptor_file(
            target,
            blocks("database", rows),
            blocks("queries", n_q),
            names={"database": src.names("database")[:rows], "queries": src.names("queries")},
            utm={"database": src.utm("database")[:rows], "queries": src.utm("queries")},
            header=header(rows, n_q, dim, src.dtype),
            count=COUNT,
        )


def read_all(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries) of scale 1, read block by block into one array each."""
    with DescriptorFile(path) as store:
        out = []
        for role in ROLES:
            data = np.empty((store.num(role), store.dim), dtype=np.float32)
            for start, rows in store.iter_blocks(role, (1,), store.default_block_rows()):
                data[start : start + len(rows)] = rows
            out.append(data)
    return out[0], out[1]


# --------------------------------------------------------------------------------------------
# Check: blocked search (through evaluate_file) against one-shot exact search


def read_predictions(csv_path: Path, n_q: int, k: int) -> np.ndarray:
    predictions = np.full((n_q, k), -1, dtype=np.int64)
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            q = int(row["query"][1:8])
            predictions[q, int(row["rank"]) - 1] = int(row["database"][2:10])
    return predictions


def check_blocked_search(path: Path, tmp: Path, block_rows: int, args) -> dict:
    with DescriptorFile(path) as store:
        n_db, dim = store.num("database"), store.dim
    if n_db * dim * 4 <= args.check_max_bytes:
        check_path, rows, scope = path, n_db, "whole database"
    else:
        rows = min(n_db, args.check_rows, max(1, args.check_max_bytes // (4 * dim)))
        check_path = copy_head(path, tmp / "check_subset.h5", rows)
        scope = f"first {rows} database rows (own file)"
    if block_rows >= rows:  # make sure the check searches several blocks, the last one ragged
        block_rows = max(1, rows // 4 + 7)
    csv_path = tmp / "check_predictions.csv"
    result = evaluate_file(check_path, "1", block_rows=block_rows)
    write_predictions(result, csv_path)
    database, queries = read_all(check_path)
    blocked = read_predictions(csv_path, len(queries), K)
    exact_dist, exact_ids = exact_search(queries, database, K)
    same = (blocked == exact_ids).all(axis=1)
    ties = 0  # differing lists whose distances are the same (order among equal distances)
    for q in np.flatnonzero(~same):

        def sq_dists(ids, q=q):
            diff = database[ids[ids >= 0]].astype(np.float64) - queries[q].astype(np.float64)
            return np.sort((diff * diff).sum(axis=1))

        a, b = sq_dists(blocked[q]), sq_dists(exact_ids[q])
        ties += int(len(a) == len(b) and np.allclose(a, b, rtol=0, atol=1e-5))
    with DescriptorFile(check_path) as store:
        positives = positives_within(store.utm("database"), store.utm("queries"), EVAL_POSITIVE_RADIUS)
    exact_recalls = recall_at_n(exact_ids, positives, DEFAULT_RECALLS)
    recalls_equal = np.allclose([result.recalls[n] for n in DEFAULT_RECALLS], exact_recalls)
    if check_path != path:
        check_path.unlink()
    csv_path.unlink()
    return {
        "scope": scope,
        "rows": rows,
        "block_rows": block_rows,
        "blocks": math.ceil(rows / block_rows),
        "queries": len(queries),
        "identical": int(same.sum()),
        "ties": ties,
        "recalls_equal": bool(recalls_equal),
        "passed": bool(int(same.sum()) + ties == len(queries) and recalls_equal),
    }


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", type=int, default=100_000, help="database rows N")
    parser.add_argument("--dim", type=int, default=256, help="descriptor dimension D")
    parser.add_argument("--queries", type=int, default=1000, help="query rows M")
    parser.add_argument(
        "--block-rows",
        type=int,
        default=None,
        help="database rows per search block (default: evaluate's own, 256 MiB of float32 rows)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="storage type of the generated file",
    )
    parser.add_argument(
        "--pca", type=int, default=None, help="also time a PCA combine of the file to this many dimensions"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dir", type=Path, default=None, help="parent folder of the temporary folder (default: the system's)"
    )
    parser.add_argument(
        "--check-rows",
        type=int,
        default=20_000,
        help="database rows of the check's subset when the database does not "
        "fit --check-max-bytes (at most that many bytes of rows)",
    )
    parser.add_argument(
        "--check-max-bytes",
        type=int,
        default=512 << 20,
        help="check over the whole database when it is at most this big",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the exact-search check")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)
    if args.database < 1 or args.queries < 1 or args.dim < 1:
        parser.error("--database, --queries and --dim must be positive")
    if args.block_rows is not None and args.block_rows < 1:
        parser.error("--block-rows must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    n_db, n_q, dim = args.database, args.queries, args.dim
    itemsize = np.dtype(args.dtype).itemsize
    db_bytes = n_db * dim * 4
    parent = args.dir or Path(tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    needed = int((n_db + n_q) * (dim * itemsize + 64) * 1.05) + (
        0 if args.no_check else min(db_bytes, args.check_rows * dim * 4, args.check_max_bytes)
    )
    if needed > free:
        raise SystemExit(
            f"{parent} has {human_bytes(free)} free; about {human_bytes(needed)} needed (use --dir)"
        )
    console.print(
        f"database {n_db} x {dim} {args.dtype} ({human_bytes(n_db * dim * itemsize)}), "
        f"{n_q} queries; "
        f"{os.cpu_count()} CPUs; faiss {faiss.__version__} with "
        f"{faiss.omp_get_max_threads()} threads"
    )
    tmp = Path(tempfile.mkdtemp(prefix="vprkit-bench-evaluate-", dir=parent))
    try:
        path = tmp / "descriptors.h5"
        started = time.perf_counter()
        generate(path, n_db, n_q, dim, args.seed, args.dtype)
        gen_seconds = time.perf_counter() - started
        gen_peak = max_rss_bytes()  # this process so far: imports + generator
        file_bytes = path.stat().st_size
        console.print(f"generated {path} ({human_bytes(file_bytes)}) in {gen_seconds:.1f} s")
        with DescriptorFile(path) as store:
            block_rows = args.block_rows or store.default_block_rows()

        child = evaluate_in_child(path, args.block_rows)
        result = child["result"]
        check = None if args.no_check else check_blocked_search(path, tmp, block_rows, args)
        pca = None if args.pca is None else evaluate_in_child(path, None, pca=args.pca)

        table = Table(title="vprkit evaluate_file: time and peak memory")
        table.add_column("measure")
        table.add_column("value", justify="right")
        blocks = math.ceil(n_db / block_rows)
        rows = [
            ("database x dim", f"{n_db} x {dim}"),
            ("queries", str(n_q)),
            ("database float32 bytes (as read)", f"{db_bytes} ({human_bytes(db_bytes)})"),
            ("storage dtype", args.dtype),
            ("HDF5 file bytes", f"{file_bytes} ({human_bytes(file_bytes)})"),
            (
                "block rows (blocks)",
                f"{block_rows} ({blocks})" + (" [evaluate default]" if args.block_rows is None else ""),
            ),
            ("block float32 bytes", human_bytes(min(block_rows, n_db) * dim * 4)),
            ("generate seconds", f"{gen_seconds:.2f}"),
            ("generator process peak RSS", human_bytes(gen_peak)),
            ("evaluate wall seconds", f"{child['wall']:.2f}"),
            ("evaluate reported seconds", f"{result['seconds']:.2f}"),
            ("database rows / s", f"{n_db / child['wall']:.0f}"),
            ("RSS before evaluate (after imports)", human_bytes(child["rss_before"])),
            ("peak RSS of evaluate process (VmHWM)", f"{child['peak']} ({human_bytes(child['peak'])})"),
            ("peak RSS increase during evaluate", human_bytes(max(0, child["peak"] - child["rss_before"]))),
            ("peak RSS / database bytes", f"{child['peak'] / db_bytes:.2f}"),
            ("faiss threads (evaluate process)", str(child["faiss_threads"])),
            (
                "Recall@" + ",".join(result["recalls"]),
                ", ".join(f"{v:.1f}" for v in result["recalls"].values()),
            ),
        ]
        if pca:
            rows += [
                (f"PCA combine to {args.pca} dims: wall seconds", f"{pca['wall']:.2f}"),
                ("PCA combine: method", pca["result"]["method"]),
                ("PCA combine: peak RSS (VmHWM)", human_bytes(pca["peak"])),
                ("PCA combine: peak RSS / database bytes", f"{pca['peak'] / db_bytes:.2f}"),
            ]
        if check:
            verdict = "PASS" if check["passed"] else "FAIL"
            rows += [
                ("check scope", f"{check['scope']}, {check['blocks']} blocks of {check['block_rows']} rows"),
                (
                    f"check: top-{K} = exact_search",
                    f"{check['identical']}/{check['queries']} "
                    f"queries identical, {check['ties']} tie "
                    "order only",
                ),
                ("check: recalls = exact search's", str(check["recalls_equal"])),
                ("check", verdict),
            ]
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
        if check and not check["passed"]:
            return 1
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
