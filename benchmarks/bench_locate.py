"""``vprkit locate`` speed: photos per second and time to the first answer, on the CPU.

Extracts a small generated split with ResNet-18 conv4 + GeM (random weights, seed 0) to get a
real descriptor file header, then writes a database of ``--database`` rows with that header
(random unit rows standing in for a mapped area's descriptors: the search costs the same), and
locates ``--photos`` generated photos of ``--size H W`` against it, in batches of
``--batch-size``, exact search. The model is built once per call; the figures include building
it, reading the database and searching.

Example::

    python benchmarks/bench_locate.py --database 100000 --photos 100 --size 480 640
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from vprkit.data.synthetic import generate_dataset
from vprkit.extract.split import ExtractOptions, extract
from vprkit.locate.photos import locate
from vprkit.models import ModelConfig
from vprkit.store import DescriptorFile, partial_path
from vprkit.store.writer import DescriptorWriter


def big_database(small: Path, out: Path, rows: int, seed: int = 0) -> Path:
    """A complete descriptor file with ``small``'s header and ``rows`` random database rows."""
    with DescriptorFile(small) as f:
        header, dim, q_names, q_utm = f.header, f.dim, f.names("queries"), f.utm("queries")
        queries = f.read_rows("queries", (1,), 0, f.num("queries"))
    rng = np.random.default_rng(seed)
    names = {
        "database": [
            f"@{500000 + i % 1000}.00@{4000000 + i // 1000}.00@33@T@@@@@@db{i:07d}@.jpg" for i in range(rows)
        ],
        "queries": q_names,
    }
    utm = {
        "database": np.array(
            [[500000 + i % 1000, 4000000 + i // 1000] for i in range(rows)], dtype=np.float64
        ),
        "queries": q_utm,
    }
    writer = DescriptorWriter.create(partial_path(out), header, names, utm)
    writer.add_scale(1, dim, {"count": ((), "int64")}, None)
    for start in range(0, rows, 50_000):
        block = rng.standard_normal((min(rows, start + 50_000) - start, dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        writer.write("database", 1, start, block, {"count": np.ones(len(block), np.int64)})
    writer.commit_rows("database", [1], rows)
    writer.write("queries", 1, 0, queries, {"count": np.ones(len(queries), np.int64)})
    writer.commit_rows("queries", [1], len(queries))
    return writer.finalize(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=100_000, help="database rows")
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="vprkit-bench-locate-"))
    console = Console()
    try:
        size = tuple(args.size)
        small_root = generate_dataset(tmp / "small", {"test": (8, 4)}, size=size, seed=0)
        small = extract(
            small_root,
            tmp / "small.h5",
            ModelConfig(weights="none"),
            ExtractOptions(resize=size, workers=0),
            progress=False,
        )
        database = big_database(small, tmp / "db.h5", args.database)
        photos = generate_dataset(tmp / "photos", {"test": (args.photos, args.photos)}, size=size, seed=1)
        folder = photos / "images/test/queries"
        locate([sorted(folder.glob("*.jpg"))[0]], database, progress=False)  # warm-up, untimed
        result = locate([folder], database, batch_size=args.batch_size, workers=args.workers, progress=False)
        table = Table(
            title=f"vprkit locate: {args.photos} photos of {size[0]}x{size[1]} against "
            f"{args.database} x 256 (resnet18conv4+GeM, exact search, batch "
            f"{args.batch_size}, {torch.get_num_threads()} threads)"
        )
        for col in ("photos", "seconds", "photos/s", "first answer (s)"):
            table.add_column(col, justify="right")
        table.add_row(
            str(len(result.located)),
            f"{result.seconds:.2f}",
            f"{len(result.located) / result.seconds:.1f}",
            f"{result.first_answer_seconds:.2f}",
        )
        console.print(table)
    finally:
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
