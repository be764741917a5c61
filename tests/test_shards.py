"""Sharded extraction (extract --shard I/N) and merge: the joined file equals an unsharded run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SIZE, config, options
from helpers import datasets_of, identical

from vprkit.cli import main
from vprkit.errors import VprkitError
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.extract.shards import merge, parse_shard, shard_path, shard_rows
from vprkit.extract.split import extract
from vprkit.store import DescriptorFile, partial_path


def assert_same_database(merged: Path, whole: Path) -> None:
    """Image lists, coordinates and integer stats equal; descriptors equal to float rounding
    (the batches differ at shard boundaries, which may change the last bits on some CPUs)."""
    a, b = datasets_of(merged), datasets_of(whole)
    assert sorted(a) == sorted(b)
    for key in a:
        if a[key].dtype.kind == "f":
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
            np.testing.assert_allclose(a[key], b[key], atol=2e-6, err_msg=key)
        else:
            assert identical(a[key], b[key]), key


class TestShardArithmetic:
    def test_parse(self):
        assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
        for bad in ("4/4", "1/0", "a/b", "1", "-1/2", "1/2/3"):
            with pytest.raises(VprkitError, match="bad shard"):
                parse_shard(bad)

    def test_path(self):
        assert shard_path(Path("out/gem.h5"), 1, 4) == Path("out/gem.shard1of4.h5")

    @pytest.mark.parametrize("total,count", [(0, 3), (1, 3), (10, 3), (24, 5), (7, 7), (5, 8)])
    def test_rows_cover_every_row_once(self, total, count):
        rows = [r for i in range(count) for r in range(*shard_rows(total, i, count))]
        assert rows == list(range(total))


class TestMerge:
    @pytest.fixture(scope="class")
    @classmethod
    def sharded(cls, small_root, tmp_path_factory):
        folder = tmp_path_factory.mktemp("shards")
        whole = extract(small_root, folder / "whole.h5", config(), options(scales=(1, 2)), progress=False)
        paths = [
            extract(
                small_root, folder / "gem.h5", config(), options(scales=(1, 2), shard=(i, 3)), progress=False
            )
            for i in range(3)
        ]
        return whole, paths

    def test_shard_files_hold_their_slices(self, sharded):
        whole, paths = sharded
        assert [p.name for p in paths] == [f"gem.shard{i}of3.h5" for i in range(3)]
        with DescriptorFile(whole) as w:
            for i, p in enumerate(paths):
                with DescriptorFile(p) as f:
                    for role in ("database", "queries"):
                        start, stop = shard_rows(w.num(role), i, 3)
                        assert f.names(role) == w.names(role)[start:stop]
                        assert f.dataset["shard"][f"{role}_rows"] == [start, stop]
                    assert f.model["fingerprint"] == w.model["fingerprint"]

    def test_merge_equals_unsharded(self, sharded, tmp_path):
        whole, paths = sharded
        merged = merge(list(reversed(paths)), tmp_path / "merged.h5", progress=False)
        assert not partial_path(merged).exists()
        assert_same_database(merged, whole)
        with DescriptorFile(merged) as f:
            assert f.dataset["merged_shards"] == 3 and "shard" not in f.dataset
        for spec in ("1", "1+2"):
            a, b = evaluate_file(merged, spec), evaluate_file(whole, spec)
            assert a.recalls == b.recalls

    def test_refusals(self, sharded, small_root, tmp_path):
        whole, paths = sharded
        with pytest.raises(VprkitError, match=r"shard\(s\) 1 of 3 missing"):
            merge([paths[0], paths[2]], tmp_path / "m.h5", progress=False)
        with pytest.raises(VprkitError, match="shard 0 given twice"):
            merge([paths[0], paths[0], paths[1], paths[2]], tmp_path / "m.h5", progress=False)
        with pytest.raises(VprkitError, match="is not a shard"):
            merge([whole, *paths], tmp_path / "m.h5", progress=False)
        other = extract(
            small_root,
            tmp_path / "seed1.h5",
            config(),
            options(scales=(1, 2), shard=(1, 3), seed=1),
            progress=False,
        )
        with pytest.raises(VprkitError, match="not shards of one extraction: their model differs"):
            merge([paths[0], other, paths[2]], tmp_path / "m.h5", progress=False)
        two = extract(
            small_root, tmp_path / "two.h5", config(), options(scales=(1, 2), shard=(1, 2)), progress=False
        )
        with pytest.raises(VprkitError, match="is shard 1 of 2"):
            merge([paths[0], two], tmp_path / "m.h5", progress=False)
        (tmp_path / "exists.h5").write_bytes(b"")
        with pytest.raises(VprkitError, match="exists; pass overwrite"):
            merge(paths, tmp_path / "exists.h5", progress=False)
        assert (tmp_path / "exists.h5").read_bytes() == b""  # untouched
        assert not (tmp_path / "m.h5").exists() and not partial_path(tmp_path / "m.h5").exists()

    def test_a_shard_is_not_a_database(self, sharded, tmp_path):
        _, paths = sharded
        with pytest.raises(VprkitError, match="is shard 0 of 3 .* vprkit merge"):
            evaluate_file(paths[0])
        result = CliRunner().invoke(
            main, ["combine", str(paths[0]), str(paths[1]), "-o", str(tmp_path / "c.h5")]
        )
        assert result.exit_code == 1 and "is shard 0 of 3" in result.output

    def test_netvlad_shards_share_the_kmeans_of_the_whole_split(self, small_root, tmp_path):
        netvlad = config("netvlad", clusters=8)
        whole = extract(small_root, tmp_path / "whole.h5", netvlad, options(), progress=False)
        paths = [
            extract(small_root, tmp_path / "v.h5", netvlad, options(shard=(i, 2)), progress=False)
            for i in range(2)
        ]
        merged = merge(paths, tmp_path / "merged.h5", progress=False)
        assert_same_database(merged, whole)


@pytest.mark.slow
def test_two_processes_then_merge_cli(small_root, tmp_path):
    """Two concurrent `vprkit extract --shard` processes, then `vprkit merge` (the CLI path)."""
    common = [
        "extract",
        str(small_root),
        "-o",
        str(tmp_path / "gem.h5"),
        "--weights",
        "none",
        "--resize",
        *map(str, SIZE),
        "--scales",
        "1,2",
        "--batch-size",
        "5",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vprkit.cli", *common, "--shard", f"{i}/2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for i in range(2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "merge",
            str(tmp_path / "gem.shard0of2.h5"),
            str(tmp_path / "gem.shard1of2.h5"),
            "-o",
            str(tmp_path / "gem.h5"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    whole = extract(small_root, tmp_path / "whole.h5", config(), options(scales=(1, 2)), progress=False)
    assert_same_database(tmp_path / "gem.h5", whole)
