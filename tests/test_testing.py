"""``vprkit.testing``: synthetic descriptor files (arrays or blocks, default layout, refusals)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import datasets_of, identical

from vprkit.store import DescriptorFile, partial_path
from vprkit.testing import random_unit_rows, synthetic_header, write_descriptor_file


def test_unit_rows():
    rows = random_unit_rows(np.random.default_rng(0), 5, 7)
    assert rows.shape == (5, 7) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, rtol=1e-6)


def test_default_layout_and_header(tmp_path):
    rng = np.random.default_rng(1)
    db, q = random_unit_rows(rng, 6, 4), random_unit_rows(rng, 3, 4)
    path = write_descriptor_file(tmp_path / "a.h5", db, q, count=12)
    assert path == tmp_path / "a.h5" and not partial_path(path).exists()
    with DescriptorFile(path) as f:
        assert f.scales == [1] and f.dim == 4 and f.header.to_dict() == synthetic_header()
        assert f.names("database")[2] == "@2@0@.jpg" and f.names("queries")[1] == "@1@5@.jpg"
        np.testing.assert_array_equal(f.utm("queries")[2], [2, 5])
        np.testing.assert_array_equal(f.read_rows("database", (1,), 0, 6), db)
        assert f.read_stats("queries", 1, 0, 3)["count"].tolist() == [12] * 3


def test_blocks_equal_arrays(tmp_path):
    rng = np.random.default_rng(2)
    db, q = random_unit_rows(rng, 10, 3), random_unit_rows(rng, 4, 3)
    names = {"database": [f"d{i}.jpg" for i in range(10)], "queries": [f"q{j}.jpg" for j in range(4)]}
    utm = {"database": rng.uniform(0, 100, (10, 2)), "queries": rng.uniform(0, 100, (4, 2))}
    kw = dict(names=names, utm=utm, dtype="float16", header={"model": {"backbone": "b"}})
    a = write_descriptor_file(tmp_path / "a.h5", db, q, **kw)
    b = write_descriptor_file(
        tmp_path / "b.h5", (db[i : i + 3] for i in range(0, 10, 3)), iter([q[:1], q[1:]]), **kw
    )
    first, second = datasets_of(a), datasets_of(b)
    assert first.keys() == second.keys()
    assert all(identical(first[k], second[k]) for k in first)
    with DescriptorFile(b) as f:
        assert f.dtype == "float16" and f.model == {"backbone": "b"}


def test_partial(tmp_path):
    part = write_descriptor_file(tmp_path / "p.h5", np.ones((2, 3)), np.ones((1, 3)), complete=False)
    assert part == partial_path(tmp_path / "p.h5") and not (tmp_path / "p.h5").exists()
    with DescriptorFile(part, require_complete=False) as f:
        assert f.rows_done("queries", 1) == 1


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"names": {"database": [], "queries": []}}, "names and utm together"),
        (
            {
                "names": {"database": ["a"], "queries": ["b"]},
                "utm": {"database": np.zeros((1, 2)), "queries": np.zeros((1, 2))},
            },
            "more database rows than the 1 names",
        ),
        (
            {
                "names": {"database": ["a", "b", "c"], "queries": ["d"]},
                "utm": {"database": np.zeros((3, 2)), "queries": np.zeros((1, 2))},
            },
            "2 database rows for 3 names",
        ),
    ],
)
def test_refusals(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        write_descriptor_file(tmp_path / "x.h5", np.ones((2, 3)), np.ones((1, 3)), **kw)
    assert not (tmp_path / "x.h5").exists() and not partial_path(tmp_path / "x.h5").exists()
    with pytest.raises(ValueError, match="blocks of rows need names"):
        write_descriptor_file(tmp_path / "x.h5", iter([np.ones((2, 3))]), np.ones((1, 3)))


def test_imports_no_torch():
    code = "import sys, vprkit.testing; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
