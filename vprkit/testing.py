"""Synthetic descriptor files for tests and benchmarks, written through ``vprkit.store``.

No network runs: the rows are given (arrays, or blocks of rows from a generator) and the file
is written as extract writes one, a GeM header and one scale, ``1``, with GeM's ``count``
statistic, so that ``evaluate``, ``combine``, ``info`` and the reader take it as any other.
Importing this module loads numpy and h5py, not torch.

By default database row ``i`` lies at UTM (i, 0) and is named ``@i@0@.jpg``, query ``j`` at
(j, 5) and named ``@j@5@.jpg``: each query is 5 m from the database row of the same number.

Example::

    rng = np.random.default_rng(0)
    write_descriptor_file("db.h5", random_unit_rows(rng, 100, 8), random_unit_rows(rng, 10, 8))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from pathlib import Path

import numpy as np

from vprkit.choices import ROLES
from vprkit.store import DescriptorWriter, Header, partial_path, writing

GEM = {"type": "gem", "p": 3.0, "eps": 1e-6}
# GeM's pyramid statistic: local features per image
STATS: dict[str, tuple[tuple[int, ...], str]] = {"count": ((), "int64")}

Rows = np.ndarray | Iterable[np.ndarray]  # an array, or blocks of rows in row order


def random_unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """``rows`` x ``dim`` float32 rows drawn from a standard normal, each scaled to norm 1."""
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_header(dtype: str = "float32") -> dict:
    """The header ``write_descriptor_file`` writes unless told otherwise: a GeM model named
    ``synthetic``, the test split of a ``synthetic`` dataset, native size, ``dtype`` rows."""
    return {
        "model": {"backbone": "synthetic", "aggregation": "gem"},
        "aggregation": GEM,
        "dataset": {"root": "synthetic", "split": "test"},
        "preprocessing": {"resize": None},
        "dtype": dtype,
    }


def default_layout(database: int, queries: int) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """Names and UTM coordinates of ``database`` and ``queries`` rows as described above."""
    names = {
        "database": [f"@{i}@0@.jpg" for i in range(database)],
        "queries": [f"@{j}@5@.jpg" for j in range(queries)],
    }
    utm = {
        "database": np.c_[np.arange(database), np.zeros(database)],
        "queries": np.c_[np.arange(queries), np.full(queries, 5.0)],
    }
    return names, utm


def _blocks(rows: Rows) -> Iterator[np.ndarray]:
    if isinstance(rows, np.ndarray):
        return iter([rows])
    return iter(rows)


def write_descriptor_file(
    path: str | Path,
    database: Rows,
    queries: Rows,
    *,
    names: dict[str, list[str]] | None = None,
    utm: dict[str, np.ndarray] | None = None,
    dtype: str = "float32",
    header: Mapping | None = None,
    count: int = 1,
    complete: bool = True,
) -> Path:
    """Write a descriptor file of the given rows at scale 1.

    Args:
        path: the file to write (``vprkit.store.writing``: lock, ``.partial``, rename).
        database: the database rows, an (N, D) array or an iterable of (n, D) blocks in row
            order (a generator keeps memory bounded); it is written whole before ``queries``
            is read, so a generator of queries may use what the database's generator made.
        queries: the query rows, likewise (M, D).
        names: image names by role (``{"database": [...], "queries": [...]}``); with ``utm``,
            or neither (the default layout above, which needs arrays to count the rows).
        utm: (N, 2) and (M, 2) UTM east, north by role.
        dtype: storage type of the rows, ``"float32"`` or ``"float16"``.
        header: header fields that replace those of ``synthetic_header(dtype)`` (``model``,
            ``aggregation``, ``dataset``, ``preprocessing``, ``dtype``).
        count: GeM's ``count`` statistic stored for every row (local features per image).
        complete: False leaves the unfinished ``<path>.partial`` that an interrupted
            extraction leaves (every row committed, ``complete`` false) and returns its path.

    Returns:
        The path of the complete file (or of the ``.partial`` with ``complete=False``).

    Raises:
        ValueError: ``names`` without ``utm`` (or the reverse), blocks without ``names``, or
            rows that are not as many as the names.
    """
    path = Path(path)
    if (names is None) != (utm is None):
        raise ValueError("give names and utm together, or neither")
    if names is None or utm is None:
        if not (isinstance(database, np.ndarray) and isinstance(queries, np.ndarray)):
            raise ValueError("blocks of rows need names and utm (their number of rows)")
        names, utm = default_layout(len(database), len(queries))
    full = Header.of({**synthetic_header(dtype), **(header or {})})
    blocks = {"database": _blocks(database), "queries": _blocks(queries)}
    first = next(blocks["database"], None)
    if first is None or np.ndim(first) != 2:
        raise ValueError("the database rows must be an (N, D) array or (n, D) blocks")
    blocks["database"] = chain([first], blocks["database"])

    def fill(writer: DescriptorWriter) -> None:
        writer.add_scale(1, int(np.shape(first)[1]), STATS, None)
        for role in ROLES:
            total, done = len(names[role]), 0
            for rows in blocks[role]:
                rows = np.asarray(rows)
                if done + len(rows) > total:
                    raise ValueError(f"more {role} rows than the {total} names")
                if len(rows):
                    writer.write(
                        role, 1, done, rows.astype(full.dtype), {"count": np.full(len(rows), count, np.int64)}
                    )
                done += len(rows)
                writer.commit_rows(role, [1], done)
            if done != total:
                raise ValueError(f"{done} {role} rows for {total} names")

    if complete:
        with writing(path) as out:
            fill(out.create(full, names, utm))
        assert out.written is not None
        return out.written
    writer = DescriptorWriter.create(partial_path(path), full, names, utm)
    try:
        fill(writer)
    finally:
        writer.close()
    return writer.path


__all__ = ["GEM", "STATS", "default_layout", "random_unit_rows", "synthetic_header", "write_descriptor_file"]
