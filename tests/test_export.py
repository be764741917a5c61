"""Exports to hloc: the pairs file and the global-feature file, checked against an independent
brute force and against a re-implementation of hloc's ``pairs_from_retrieval``."""

from __future__ import annotations

import inspect
import json
import warnings
from collections import defaultdict
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_file

from vprkit.cli import main
from vprkit.errors import VprkitError
from vprkit.report.export import export_hloc, export_pairs
from vprkit.testing import random_unit_rows, write_descriptor_file

DIM = 16


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, pattern: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert pattern in lines[0], lines[0]
    return lines[0]


def read_pairs(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [tuple(line.split(" ")) for line in text.splitlines()]  # type: ignore[misc]


def by_query(pairs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for q, r in pairs:
        out[q].append(r)
    return dict(out)


def brute_force(q: np.ndarray, db: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Indices of the k nearest database rows of each query (squared L2, float64)."""
    d = ((q[:, None, :].astype(np.float64) - db[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


# --- hloc, as read in hloc/pairs_from_retrieval.py and hloc/utils/io.py (re-implemented) ---
def hloc_list_h5_names(path: Path) -> list[str]:
    """hloc's list_h5_names: the parent group of every dataset, without the leading '/'."""
    names = []
    with h5py.File(path, "r") as fd:
        fd.visititems(
            lambda _, obj: names.append(obj.parent.name.strip("/")) if isinstance(obj, h5py.Dataset) else None
        )
    return list(set(names))


def hloc_pairs_from_retrieval(
    path: Path, num_matched: int, query_prefix: str, db_prefix: str, min_score: float = 0.0
) -> list[tuple[str, str]]:
    """pairs_from_retrieval.main: names by prefix, float32 descriptors, sim = q @ db.T, equal
    names masked, scores below min_score masked, top-k by score, kept where it is finite."""
    names = hloc_list_h5_names(path)
    db_names = [n for n in names if n.startswith(db_prefix)]
    q_names = [n for n in names if n.startswith(query_prefix)]
    with h5py.File(path, "r") as fd:
        db = np.stack([fd[n]["global_descriptor"][()] for n in db_names]).astype(np.float32)
        q = np.stack([fd[n]["global_descriptor"][()] for n in q_names]).astype(np.float32)
    sim = q @ db.T
    invalid = np.array(q_names)[:, None] == np.array(db_names)[None]
    invalid |= sim < min_score
    sim[invalid] = -np.inf
    top = np.argsort(-sim, axis=1, kind="stable")[:, :num_matched]
    return [(q_names[i], db_names[j]) for i in range(len(q_names)) for j in top[i] if np.isfinite(sim[i, j])]


def positive_unit_rows(rng, rows: int, dim: int) -> np.ndarray:
    """L2-normalised rows with non-negative entries (as GeM gives): no negative dot product."""
    x = np.abs(rng.standard_normal((rows, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def desc(tmp_path):
    rng = np.random.default_rng(3)
    db, q = random_unit_rows(rng, 40, DIM), random_unit_rows(rng, 9, DIM)
    return write_file(tmp_path / "d.h5", db, q), db, q


def named_file(path: Path, db: np.ndarray, q: np.ndarray, db_names, q_names) -> Path:
    utm = {
        "database": np.c_[np.arange(len(db)), np.zeros(len(db))],
        "queries": np.c_[np.arange(len(q)), np.full(len(q), 5.0)],
    }
    return write_descriptor_file(
        path, db, q, names={"database": list(db_names), "queries": list(q_names)}, utm=utm
    )


class TestPairs:
    @pytest.mark.parametrize("block_rows", [None, 7])
    def test_equal_brute_force(self, desc, tmp_path, block_rows):
        path, db, q = desc
        out = export_pairs(path, tmp_path / "pairs.txt", top_k=5, block_rows=block_rows)
        top = brute_force(q, db, 5)
        expected = [(f"@{i}@5@.jpg", f"@{j}@0@.jpg") for i in range(len(q)) for j in top[i]]
        assert read_pairs(out) == expected

    @pytest.mark.parametrize("block_rows", [None, 6])
    def test_database_pairs_exclude_self(self, desc, tmp_path, block_rows):
        path, db, _ = desc
        out = export_pairs(path, tmp_path / "sfm.txt", top_k=39, database_pairs=True, block_rows=block_rows)
        pairs = read_pairs(out)
        assert len(pairs) == 40 * 39 and all(a != b for a, b in pairs)
        top = brute_force(db, db, 4, exclude_self=True)
        assert {a: r[:4] for a, r in by_query(pairs).items()} == {
            f"@{i}@0@.jpg": [f"@{j}@0@.jpg" for j in top[i]] for i in range(len(db))
        }

    def test_prefixes_and_scale(self, desc, tmp_path):
        path, _, _ = desc
        out = export_pairs(
            path, tmp_path / "p.txt", top_k=2, scale="1", db_prefix="db/", query_prefix="query/"
        )
        assert all(a.startswith("query/@") and b.startswith("db/@") for a, b in read_pairs(out))
        with pytest.raises(VprkitError, match="scale 2 is not in"):
            export_pairs(path, tmp_path / "p.txt", scale="2")

    def test_pyramid_of_an_extracted_file(self, gem_file, tmp_path):
        from vprkit.store import DescriptorFile

        with DescriptorFile(gem_file) as f:
            db, q = (f.read_rows(r, (1, 2), 0, f.num(r)) for r in ("database", "queries"))
            db_names, q_names = f.names("database"), f.names("queries")
        out = export_pairs(gem_file, tmp_path / "p.txt", top_k=3, scale="1+2")
        top = brute_force(q, db, 3)
        assert read_pairs(out) == [(q_names[i], db_names[j]) for i in range(len(q)) for j in top[i]]
        with pytest.warns(UserWarning, match="is not L2-normalised"):  # GeM before_pool: ~1.1
            feats = export_hloc(
                gem_file, tmp_path / "g.h5", scale="1+2", db_prefix="db/", query_prefix="query/"
            )
        with h5py.File(feats, "r") as h5:
            assert np.array_equal(h5[f"query/{q_names[-1]}/global_descriptor"][()], q[-1])

    def test_failed_export_leaves_the_output(self, desc, tmp_path, monkeypatch):
        import vprkit.report.export

        path, _, _ = desc
        out = tmp_path / "pairs.txt"
        out.write_text("old\n")

        def broken(*args, **kw):
            raise RuntimeError("search failed")

        monkeypatch.setattr(vprkit.report.export, "blocked_search", broken)
        with pytest.raises(RuntimeError):
            export_pairs(path, out)
        assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
            "d.h5",
            "pairs.txt",
        ]


class TestHloc:
    def test_every_name_and_exact_rows(self, desc, tmp_path):
        path, db, q = desc
        out = export_hloc(path, tmp_path / "g.h5", db_prefix="db/", query_prefix="query/", block_rows=4)
        expected = {
            **{f"db/@{i}@0@.jpg": r for i, r in enumerate(db)},
            **{f"query/@{j}@5@.jpg": r for j, r in enumerate(q)},
        }
        assert sorted(hloc_list_h5_names(out)) == sorted(expected)
        with h5py.File(out, "r") as f:
            for name, row in expected.items():
                stored = f[name]["global_descriptor"]
                assert stored.dtype == np.float32 and stored.shape == (DIM,)
                assert stored[()].tobytes() == row.tobytes()
        assert not (tmp_path / "g.h5.partial").exists() and not (tmp_path / "g.h5.lock").exists()

    def test_one_role(self, desc, tmp_path):
        path, _, _ = desc
        out = export_hloc(path, tmp_path / "g.h5", roles=("database",))
        assert len(hloc_list_h5_names(out)) == 40
        with pytest.raises(VprkitError, match="bad roles"):
            export_hloc(path, tmp_path / "x.h5", roles=("db",))

    def test_names_with_slashes_round_trip(self, tmp_path):
        rng = np.random.default_rng(5)
        db, q = random_unit_rows(rng, 6, DIM), random_unit_rows(rng, 3, DIM)
        db_names = [f"street/{i % 2}/@{i}@0@.jpg" for i in range(6)]
        q_names = [f"phone/@{j}@5@.jpg" for j in range(3)]
        path = named_file(tmp_path / "n.h5", db, q, db_names, q_names)
        out = export_hloc(path, tmp_path / "g.h5", db_prefix="db/", query_prefix="query/")
        assert sorted(hloc_list_h5_names(out)) == sorted(
            ["db/" + n for n in db_names] + ["query/" + n for n in q_names]
        )
        with h5py.File(out, "r") as f:
            assert isinstance(f["db/street/1"], h5py.Group)
            assert np.array_equal(f["db/street/1/@3@0@.jpg/global_descriptor"][()], db[3])
        pairs = read_pairs(
            export_pairs(path, tmp_path / "p.txt", top_k=6, db_prefix="db/", query_prefix="query/")
        )
        assert {a for a, _ in pairs} == {"query/" + n for n in q_names}
        assert {b for _, b in pairs} == {"db/" + n for n in db_names}

    def test_names_hdf5_cannot_key_are_refused(self, tmp_path):
        rng = np.random.default_rng(6)
        db, q = random_unit_rows(rng, 2, DIM), random_unit_rows(rng, 1, DIM)
        for names, match in (
            (["a//b.jpg", "c.jpg"], "an empty"),
            (["a", "a/global_descriptor"], "cannot store"),
        ):
            path = named_file(tmp_path / "n.h5", db, q, names, ["q.jpg"])
            with pytest.raises(VprkitError, match=match):
                export_hloc(path, tmp_path / "g.h5")
            assert sorted(p.name for p in tmp_path.iterdir()) == ["n.h5"]
            path.unlink()

    def test_not_normalised_warns(self, tmp_path):
        rng = np.random.default_rng(7)
        db, q = random_unit_rows(rng, 4, DIM), random_unit_rows(rng, 2, DIM)
        db[2] *= 3
        path = write_file(tmp_path / "u.h5", db, q)
        with pytest.warns(UserWarning, match=r"not L2-normalised \('@2@0@.jpg' has norm 3"):
            export_hloc(path, tmp_path / "g.h5")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = export_hloc(path, tmp_path / "n.h5", normalize=True)
        with h5py.File(out, "r") as f:
            assert np.allclose(f["@2@0@.jpg/global_descriptor"][()], db[2] / 3, atol=1e-6)
            assert f["@2@0@.jpg/global_descriptor"].dtype == np.float32


class TestHlocParity:
    """export pairs equals hloc's pairs_from_retrieval run on the file export hloc writes."""

    @pytest.mark.parametrize("top_k", [1, 7])
    def test_query_pairs(self, tmp_path, top_k):
        rng = np.random.default_rng(11)
        path = write_file(
            tmp_path / "d.h5", positive_unit_rows(rng, 50, DIM), positive_unit_rows(rng, 12, DIM)
        )
        feats = export_hloc(path, tmp_path / "g.h5", db_prefix="db/", query_prefix="query/")
        ours = read_pairs(
            export_pairs(
                path, tmp_path / "p.txt", top_k=top_k, db_prefix="db/", query_prefix="query/", block_rows=9
            )
        )
        theirs = hloc_pairs_from_retrieval(feats, top_k, query_prefix="query/", db_prefix="db/")
        assert len(ours) == len(theirs) == 12 * top_k
        assert by_query(ours) == by_query(theirs)

    def test_database_pairs(self, tmp_path):
        rng = np.random.default_rng(12)
        path = write_file(
            tmp_path / "d.h5", positive_unit_rows(rng, 30, DIM), positive_unit_rows(rng, 3, DIM)
        )
        feats = export_hloc(path, tmp_path / "g.h5", roles=("database",))
        ours = read_pairs(export_pairs(path, tmp_path / "p.txt", top_k=5, database_pairs=True))
        theirs = hloc_pairs_from_retrieval(feats, 5, query_prefix="", db_prefix="")
        assert by_query(ours) == by_query(theirs)

    def test_signed_descriptors_agree_where_hloc_keeps_pairs(self, desc, tmp_path):
        """hloc drops pairs of negative dot product (min_score=0); what it keeps is vprkit's."""
        path, _, _ = desc
        feats = export_hloc(path, tmp_path / "g.h5", db_prefix="db/", query_prefix="q/")
        ours = by_query(
            read_pairs(export_pairs(path, tmp_path / "p.txt", top_k=40, db_prefix="db/", query_prefix="q/"))
        )
        theirs = by_query(hloc_pairs_from_retrieval(feats, 40, query_prefix="q/", db_prefix="db/"))
        assert all(theirs[q] == ours[q][: len(theirs[q])] for q in ours)
        assert sum(map(len, theirs.values())) < 9 * 40


class TestCli:
    def test_pairs_and_hloc(self, desc, tmp_path):
        path, _, _ = desc
        result = run("export", "pairs", path, "-o", tmp_path / "p.txt", "--top-k", 3)
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())  # rich wraps the line at the terminal width
        assert said.startswith("wrote") and "27 query-database pairs" in said
        assert len(read_pairs(tmp_path / "p.txt")) == 27
        result = run(
            "export",
            "hloc",
            path,
            "-o",
            tmp_path / "g.h5",
            "--db-prefix",
            "db/",
            "--query-prefix",
            "query/",
            "--json",
            "-",
        )
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["database"] == 40 and data["queries"] == 9 and data["scale"] == "1"
        result = run(
            "export", "pairs", path, "-o", tmp_path / "s.txt", "--top-k", 2, "--database-pairs", "--json", "-"
        )
        assert json.loads(result.output)["pairs"] == 80

    @pytest.mark.parametrize(
        "args, pattern",
        [
            (("pairs", "--top-k", 0), "top_k must be an integer of at least 1"),
            (("pairs", "--top-k", 41), "top_k 41 is more than the 40 database images"),
            (("pairs", "--top-k", 40, "--database-pairs"), "the 39 other database images"),
            (("pairs", "--block-rows", 0), "block_rows must be"),
            (("pairs", "--scale", "1+x"), "bad scale list"),
            (("hloc", "--scale", "3"), "scale 3 is not in"),
        ],
    )
    def test_bad_options_are_one_line(self, desc, tmp_path, args, pattern):
        path, _, _ = desc
        kind, *rest = args
        assert_one_line_error(run("export", kind, path, "-o", tmp_path / "out", *rest), pattern)
        assert not (tmp_path / "out").exists()

    def test_existing_hloc_output(self, desc, tmp_path):
        path, _, _ = desc
        out = tmp_path / "g.h5"
        out.write_text("mine")
        assert_one_line_error(run("export", "hloc", path, "-o", out), "pass --overwrite")
        assert out.read_text() == "mine"
        assert run("export", "hloc", path, "-o", out, "--overwrite").exit_code == 0
        assert len(hloc_list_h5_names(out)) == 49

    def test_output_is_the_input(self, desc):
        path, _, _ = desc
        for args in (("pairs",), ("hloc", "--overwrite")):
            assert_one_line_error(
                run("export", args[0], path, "-o", path, *args[1:]), "is the descriptor file itself"
            )
        assert h5py.is_hdf5(path)

    def test_white_space_in_names(self, tmp_path):
        rng = np.random.default_rng(8)
        db, q = random_unit_rows(rng, 3, DIM), random_unit_rows(rng, 1, DIM)
        path = named_file(tmp_path / "w.h5", db, q, ["a.jpg", "b\nc.jpg", "my photo.jpg"], ["q.jpg"])
        line = assert_one_line_error(
            run("export", "pairs", path, "-o", tmp_path / "p.txt", "--top-k", 1),
            "'b\\nc.jpg' is empty or contains white space",
        )
        assert "my photo" not in line  # the first is named, escaped on one line
        path = named_file(tmp_path / "v.h5", db, q, ["a.jpg", "b.jpg", "c.jpg"], ["my photo.jpg"])
        assert_one_line_error(
            run("export", "pairs", path, "-o", tmp_path / "p.txt", "--top-k", 1),
            "query image name 'my photo.jpg'",
        )
        assert not (tmp_path / "p.txt").exists()
        assert run("export", "hloc", path, "-o", tmp_path / "g.h5").exit_code == 0  # h5: fine

    def test_names_in_both_roles(self, tmp_path):
        rng = np.random.default_rng(9)
        path = named_file(
            tmp_path / "c.h5",
            random_unit_rows(rng, 2, DIM),
            random_unit_rows(rng, 1, DIM),
            ["x.jpg", "y.jpg"],
            ["y.jpg"],
        )
        assert_one_line_error(
            run("export", "hloc", path, "-o", tmp_path / "g.h5"),
            "'y.jpg' is both a database and a query image",
        )
        assert run("export", "hloc", path, "-o", tmp_path / "g.h5", "--db-prefix", "db/").exit_code == 0

    def test_a_shard_is_refused(self, tmp_path):
        rng = np.random.default_rng(10)
        shard = {"index": 0, "count": 2}
        path = write_descriptor_file(
            tmp_path / "s.h5",
            random_unit_rows(rng, 3, DIM),
            random_unit_rows(rng, 2, DIM),
            header={"dataset": {"split": "test", "shard": shard}},
        )
        for args in (("pairs", "--top-k", 1), ("hloc",)):
            assert_one_line_error(
                run("export", args[0], path, "-o", tmp_path / "o", *args[1:]),
                "is shard 0 of 2 of an extraction; join the shards first",
            )

    @pytest.mark.parametrize("command, function", [("pairs", export_pairs), ("hloc", export_hloc)])
    def test_option_defaults_are_the_library_defaults(self, command, function):
        cmd = main.commands["export"].commands[command]  # type: ignore[attr-defined]
        params = inspect.signature(function).parameters
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name in params and not p.required:
                assert p.get_default(click.Context(cmd)) == params[p.name].default, p.name
