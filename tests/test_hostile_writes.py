"""Hostile conditions on the write side (issue 23): a nearly full disk or a file-size limit under
merge and combine, seeds the bootstrap refuses, shard counts too large to check, and the debris of
killed writers and sloppy numbers.

Each case ends in a result or one line ``Error: ...`` naming the output the user asked for (never
a temporary file), exit code 1 (2 for a value click refuses), and nothing lost or left behind: no
``.partial``, no ``.lock``, no hidden temporary file, the previous output byte for byte.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import options
from helpers import write_file

import vprkit.extract.distributed as distributed_extract
import vprkit.files as files
from vprkit.cli import main
from vprkit.data.datasets import parse_utm
from vprkit.ensemble.combining import combine
from vprkit.errors import VprkitError
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.evaluate.results import results_json
from vprkit.evaluate.statistics import bootstrap_recalls
from vprkit.extract.distributed import World, merge_if_complete, slurm_shard
from vprkit.extract.shards import merge, names_sha256, parse_shard
from vprkit.testing import synthetic_header, write_descriptor_file

# ----------------------------------------------------------------------------------- helpers
N_DB, N_Q, NAME = 2000, 500, 1000  # 2.5 MB of image names, 0.1 MB of rows and statistics
LIMIT = 1_000_000  # a file-size limit between the two
RUN = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
how, limit, margin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import vprkit.files
if margin == "lie":  # a file system that reports more free space than it has (thin, quota...)
    vprkit.files.free_bytes = lambda path: 1 << 40
elif margin != "default":
    vprkit.files.SPACE_MARGIN = int(margin)
if how == "no-reserve":  # a file system that cannot reserve blocks (no fallocate)
    import vprkit.store.writer
    vprkit.store.writer.reserve = lambda *args: False
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from vprkit.cli import main
sys.argv = ["vprkit", *sys.argv[4:]]
main()
"""


def run_limited(args: list, how: str = "reserve", limit: int = 0, margin: str = "default") -> tuple[int, str]:
    """The CLI in a subprocess (under a file-size limit where ``limit``): exit code, output."""
    done = subprocess.run(
        [sys.executable, "-c", RUN, how, str(limit), margin, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def one_error_line(code: int, output: str, expected_code: int = 1) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == expected_code and len(lines) == 1 and lines[0].startswith("Error: "), (code, output)
    return lines[0]


def left_behind(folder: Path, expected: set[str]) -> list[str]:
    """Entries of ``folder`` beyond ``expected``: .partial, .lock, hidden temporary files..."""
    return sorted(set(os.listdir(folder)) - expected)


def long_names(n: int, prefix: str) -> list[str]:
    return [f"{prefix}/{'x' * NAME}{i:06d}@{i}@{0 if prefix == 'db' else 5}@.jpg" for i in range(n)]


@pytest.fixture(scope="module")
def big_names(tmp_path_factory) -> dict[str, Path]:
    """Two shards of one extraction and two files of the same images, whose image names take
    25 times the space of their rows: the shards' merge and the files' combine."""
    folder = tmp_path_factory.mktemp("big_names")
    names = {"database": long_names(N_DB, "db"), "queries": long_names(N_Q, "q")}
    utm = {
        "database": np.c_[np.arange(N_DB), np.zeros(N_DB)],
        "queries": np.c_[np.arange(N_Q), np.full(N_Q, 5.0)],
    }
    rng = np.random.default_rng(0)
    rows = {r: rng.normal(size=(len(names[r]), 8)).astype(np.float32) for r in names}
    paths = {}
    for i in range(2):
        part = {r: slice(len(names[r]) * i // 2, len(names[r]) * (i + 1) // 2) for r in names}
        dataset = {
            "root": "synthetic",
            "split": "test",
            "shard": {"index": i, "count": 2, "names_sha256": names_sha256(names)},
        }
        paths[f"shard{i}"] = write_descriptor_file(
            folder / f"g.shard{i}of2.h5",
            rows["database"][part["database"]],
            rows["queries"][part["queries"]],
            names={r: names[r][part[r]] for r in names},
            utm={r: utm[r][part[r]] for r in names},
            header={**synthetic_header(), "dataset": dataset},
        )
    paths["a"] = write_descriptor_file(
        folder / "a.h5", rows["database"], rows["queries"], names=names, utm=utm
    )
    paths["b"] = write_descriptor_file(
        folder / "b.h5", 2 * rows["database"], 2 * rows["queries"], names=names, utm=utm
    )
    return paths


def command(kind: str, big: dict[str, Path], out: Path) -> list:
    inputs = [big["shard0"], big["shard1"]] if kind == "merge" else [big["a"], big["b"]]
    return [kind, *inputs, "-o", out, "--overwrite", "--quiet"]


# ----------------------------------------------------------------------------------- class 2
class TestFullDiskBeforeTheFirstByte:
    """merge and combine check and reserve all they will write (names, positions, hashes, rows,
    statistics) before writing anything: no segfault, one line, nothing left behind."""

    @pytest.mark.parametrize("kind", ["merge", "combine"])
    @pytest.mark.parametrize("how", ["reserve", "no-reserve"])
    def test_file_size_limit_between_rows_and_names(self, big_names, tmp_path, kind, how):
        out = tmp_path / "out.h5"
        out.write_bytes(b"the previous output")
        code, output = run_limited(command(kind, big_names, out), how, LIMIT)
        line = one_error_line(code, output)
        assert line.startswith(f"Error: cannot write {out} (writing out.h5.partial): "), line
        assert "File too large" in line
        assert out.read_bytes() == b"the previous output"
        assert left_behind(tmp_path, {"out.h5"}) == []

    @pytest.mark.parametrize("kind", ["merge", "combine"])
    def test_a_real_small_disk(self, big_names, tmp_path, kind):
        """A 2 MiB tmpfs (the names alone take 2.5 MB): the free-space check stops the writer;
        where the file system claims more free space than it has, the reservation does (a real
        ENOSPC)."""
        from test_faults import tmpfs

        with tmpfs(tmp_path / "small", "size=2m") as folder:
            out = folder / "out.h5"
            code, output = run_limited(command(kind, big_names, out), margin="lie")
            line = one_error_line(code, output)
            assert line.startswith(f"Error: cannot write {out} (writing out.h5.partial): "), line
            assert "No space left on device" in line
            assert left_behind(folder, set()) == []
            code, output = run_limited(command(kind, big_names, out))  # with the margin
            line = one_error_line(code, output)
            assert line.startswith("Error: disk full: ") and f"where {out} is written" in line
            assert left_behind(folder, set()) == []

    @pytest.mark.parametrize("kind", ["merge", "combine"])
    def test_free_space_for_the_rows_but_not_the_names(self, big_names, tmp_path, monkeypatch, kind):
        out = tmp_path / "out.h5"
        out.write_bytes(b"old")
        monkeypatch.setattr(files, "free_bytes", lambda path: files.SPACE_MARGIN + 500_000)
        with pytest.raises(VprkitError) as caught:
            if kind == "merge":
                merge([big_names["shard0"], big_names["shard1"]], out, overwrite=True, progress=False)
            else:
                combine([big_names["a"], big_names["b"]], out, overwrite=True, progress=False)
        message = str(caught.value)
        assert message.startswith("disk full: ") and f"where {out} is written" in message
        assert "\n" not in message
        assert out.read_bytes() == b"old" and left_behind(tmp_path, {"out.h5"}) == []
        monkeypatch.undo()
        if kind == "merge":  # with room, the same command writes the file
            merge([big_names["shard0"], big_names["shard1"]], out, overwrite=True, progress=False)
        else:
            combine([big_names["a"], big_names["b"]], out, overwrite=True, progress=False)
        assert left_behind(tmp_path, {"out.h5"}) == []

    def test_the_margin_counts_blocks_reserved_already(self, big_names, tmp_path, monkeypatch):
        """The blocks reserved at the start are not asked for a second time block by block."""
        free = {"bytes": 1 << 40}
        monkeypatch.setattr(files, "free_bytes", lambda path: free["bytes"])
        real = files.reserve

        def reserve_and_shrink(fd, path, size, nbytes):
            done = real(fd, path, size, nbytes)
            free["bytes"] = files.SPACE_MARGIN + 1  # all the rest is now reserved for the file
            return done

        monkeypatch.setattr("vprkit.store.writer.reserve", reserve_and_shrink)
        out = combine([big_names["a"], big_names["b"]], tmp_path / "c.h5", progress=False)
        assert left_behind(tmp_path, {"c.h5"}) == [] and out.stat().st_size > 2_500_000


# ----------------------------------------------------------------------------------- class 8
@pytest.fixture(scope="module")
def evaluations(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A small descriptor file and two evaluation JSON files of it (for compare)."""
    folder = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(1)
    path = write_file(folder / "d.h5", rng.normal(size=(30, 8)), rng.normal(size=(10, 8)))
    row = evaluate_file(path, recalls=(1, 5), bootstrap=0)
    for name in ("a.json", "b.json"):
        (folder / name).write_text(results_json([row]))
    return path, folder / "a.json", folder / "b.json"


class TestSeeds:
    @pytest.mark.parametrize("seed", ["-1", "4294967296"])
    def test_cli_evaluate_and_compare_refuse(self, evaluations, seed):
        path, a, b = evaluations
        for args in (
            ["evaluate", path, "--recalls", "1,5", "--seed", seed],
            ["compare", a, b, "--seed", seed],
        ):
            result = CliRunner().invoke(main, [str(x) for x in args])
            line = one_error_line(result.exit_code, result.output, expected_code=2)
            assert "--seed" in line and "Traceback" not in result.output

    def test_cli_largest_seed_works(self, evaluations):
        path, a, b = evaluations
        result = CliRunner().invoke(main, ["compare", str(a), str(b), "--seed", "4294967295"])
        assert result.exit_code == 0, result.output

    @pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "0"])
    def test_library_refuses_naming_seed(self, evaluations, seed):
        path, a, b = evaluations
        from vprkit.evaluate.compare import compare_files

        for call in (
            lambda: evaluate_file(path, recalls=(1,), seed=seed),
            lambda: compare_files([a, b], seed=seed),
        ):
            with pytest.raises(VprkitError, match=r"^seed must be a whole number from 0 to "):
                call()

    def test_bootstrap_refuses_a_negative_seed(self, evaluations):
        path, _, _ = evaluations
        outcomes = evaluate_file(path, recalls=(1,), bootstrap=0).outcomes
        assert outcomes is not None
        with pytest.raises(VprkitError, match="^seed must be"):
            bootstrap_recalls(outcomes, [1], 10, seed=-1)


# ----------------------------------------------------------------------------------- class 9
SLURM_VARS = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
)


def slurm(task: str, count: str, first: str = "0", **more: str) -> dict[str, str]:
    return {
        "SLURM_ARRAY_TASK_ID": task,
        "SLURM_ARRAY_TASK_COUNT": count,
        "SLURM_ARRAY_TASK_MIN": first,
        **more,
    }


class TestShardCounts:
    def test_parse_shard_bounds_the_count(self):
        assert parse_shard("9999/10000") == (9999, 10000)
        for bad in ("0/10001", "0/100000000", "0/" + "9" * 5000):
            with pytest.raises(VprkitError, match="at most 10000 shards"):
                parse_shard(bad)
        for bad in ("\u0660/\u0664", "0/1_0", "0/4\n"):  # Arabic-Indic digits, underscores
            with pytest.raises(VprkitError, match="bad shard"):
                parse_shard(bad)

    def test_slurm_count_bounded_naming_the_variable(self):
        with pytest.raises(VprkitError, match="SLURM_ARRAY_TASK_COUNT=100000000 .*at most 10000"):
            slurm_shard(slurm("0", "100000000"))
        assert slurm_shard(slurm("3", "10000")) == (3, 10000)

    @pytest.mark.parametrize(
        "env,name",
        [
            (slurm("1_0", "20"), "SLURM_ARRAY_TASK_ID"),
            (slurm("1", "2_0"), "SLURM_ARRAY_TASK_COUNT"),
            (slurm("1", "4", " \u0660"), "SLURM_ARRAY_TASK_MIN"),
            (slurm("1", "4", SLURM_ARRAY_TASK_STEP="1_"), "SLURM_ARRAY_TASK_STEP"),
            (slurm("1", "4", SLURM_ARRAY_TASK_MAX="3.0"), "SLURM_ARRAY_TASK_MAX"),
        ],
    )
    def test_slurm_numbers_are_strict(self, env, name):
        with pytest.raises(VprkitError, match=name):
            slurm_shard(env)

    @pytest.mark.parametrize(
        "env,name",
        [
            ({"WORLD_SIZE": "1_6", "RANK": "0"}, "WORLD_SIZE"),
            ({"WORLD_SIZE": "4", "RANK": "\u0663"}, "RANK"),
            ({"WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "0x1"}, "LOCAL_RANK"),
            ({"WORLD_SIZE": "100000000", "RANK": "0"}, "WORLD_SIZE"),
        ],
    )
    def test_torchrun_numbers_are_strict(self, env, name):
        with pytest.raises(VprkitError, match=name):
            World.from_env(env)

    @pytest.mark.parametrize(
        "env, name",
        [({"WORLD_SIZE": "1_0", "RANK": "0"}, "WORLD_SIZE"), ({"WORLD_SIZE": "2", "RANK": "a"}, "RANK")],
    )
    def test_training_reads_torchrun_numbers_strictly(self, env, name, monkeypatch):
        from vprkit.train.distributed import Processes

        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(VprkitError, match=name):
            Processes.from_env()

    def test_completeness_check_stops_at_the_first_missing_shard(self, tmp_path, monkeypatch, capsys):
        calls = []
        real = distributed_extract._holds
        monkeypatch.setattr(
            distributed_extract, "_holds", lambda path, *args: calls.append(path) or real(path, *args)
        )
        assert merge_if_complete(tmp_path / "db.h5", 10000, options()) is None
        assert len(calls) == 1
        assert not list(tmp_path.iterdir())

    def test_cli_extract_refuses_a_huge_slurm_array_at_once(self, small_root, tmp_path):
        env = {k: v for k, v in os.environ.items() if k not in SLURM_VARS}
        env.update(slurm("0", "100000000"))
        args = [
            sys.executable,
            "-m",
            "vprkit.cli",
            "extract",
            str(small_root),
            "-o",
            str(tmp_path / "db.h5"),
            "--weights",
            "none",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--shard",
            "slurm",
            "--merge-when-complete",
            "--quiet",
        ]
        try:
            done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("extract --shard slurm with 10^8 tasks still ran after 60 s")
        line = one_error_line(done.returncode, done.stdout + done.stderr)
        assert "SLURM_ARRAY_TASK_COUNT" in line and "10000" in line
        assert left_behind(tmp_path, set()) == []


# ----------------------------------------------------------------------------------- class 11
KILLED = """
import os, signal, sys
from vprkit.files import atomic_output
with atomic_output(sys.argv[1], "w") as handle:
    handle.write("half of it")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""
LIVE = """
import sys
from vprkit.files import atomic_output
with atomic_output(sys.argv[1], "w") as handle:
    handle.write("the live writer's")
    handle.flush()
    print("ready", flush=True)
    sys.stdin.readline()
"""


def hidden_temps(folder: Path, name: str) -> set[str]:
    return {
        p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".partial")
    }


class TestDebris:
    def test_killed_writers_temp_file_is_removed_by_the_next_write(self, tmp_path):
        out = tmp_path / "out.json"
        subprocess.run([sys.executable, "-c", KILLED, str(out)], capture_output=True)
        dead = hidden_temps(tmp_path, "out.json")
        assert len(dead) == 1 and not out.exists()
        decoys = {
            ".out.json.abc.partial",
            ".other.json.abcdefgh.partial",
            "out.json.partial",
            ".out.json.abcdefgh.partial.bak",
            ".out.json.ABCDEFGH.partial",
        }
        for name in decoys:
            (tmp_path / name).write_text("not a temporary file of this writer")
        live = subprocess.Popen(
            [sys.executable, "-c", LIVE, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert live.stdout is not None and live.stdout.readline() == "ready\n"
            writing = hidden_temps(tmp_path, "out.json") - dead - decoys
            assert len(writing) == 1
            files.write_text(out, "new")
            assert out.read_text() == "new"
            assert hidden_temps(tmp_path, "out.json") - decoys == writing  # the live one kept
            assert all((tmp_path / name).exists() for name in decoys)
        finally:
            live.communicate("\n", timeout=60)
        assert live.returncode == 0 and out.read_text() == "the live writer's"
        assert hidden_temps(tmp_path, "out.json") - decoys == set()

    def test_guarded_write_names_the_output(self, tmp_path):
        out = tmp_path / "db.h5"
        out.write_bytes(b"old")
        partial = files.partial_path(out)
        with pytest.raises(VprkitError) as caught:
            with files.guarded_write(partial, out):
                partial.write_bytes(b"half")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        assert str(caught.value).startswith(
            f"cannot write {out} (writing db.h5.partial): No space left on device"
        )
        assert not partial.exists() and out.read_bytes() == b"old"

    def test_space_and_reservation_errors_name_the_output(self, tmp_path, monkeypatch):
        out = tmp_path / "db.h5"
        monkeypatch.setattr(files, "free_bytes", lambda path: 10 << 20)
        partial = files.partial_path(out)
        with pytest.raises(
            VprkitError,
            match=rf"^disk full: 10\.0 MiB free where {out} is "
            r"written \(as db\.h5\.partial; ",
        ):
            files.require_space(partial, 1 << 20)

        def full(*args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "posix_fallocate", full)
        with open(partial, "wb") as handle:
            with pytest.raises(
                VprkitError,
                match=rf"^cannot write {out} \(writing db\.h5\.partial\): "
                "No space left on device",
            ):
                files.reserve(handle.fileno(), partial, 0, 1 << 20)

    def test_a_partial_name_too_long_names_the_output(self, gem_file, netvlad_file, tmp_path):
        out = tmp_path / ("x" * 245 + ".h5")  # the output fits in a name, not its .partial
        result = CliRunner().invoke(
            main, ["combine", str(gem_file), str(netvlad_file), "-o", str(out), "--quiet"]
        )
        line = one_error_line(result.exit_code, result.output)
        assert line.startswith(f"Error: cannot write {out} (writing {out.name}.partial): "), line
        assert left_behind(tmp_path, set()) == []

    @pytest.mark.parametrize(
        "name",
        [
            "@500_000.5@4477000@.jpg",
            "@500000@4_477_000@.jpg",
            "@ 500000@4477000@.jpg",
            "@500000@\u0664477000@.jpg",
            "@500000@inf@.jpg",
            "@0x10@1@.jpg",
        ],
    )
    def test_utm_in_names_is_strict(self, name):
        with pytest.raises(VprkitError, match="UTM"):
            parse_utm(name)

    @pytest.mark.parametrize("text", ["1_0", "5,2_5", "\u0665,10"])
    def test_thresholds_are_strict(self, text):
        from vprkit.evaluate.statistics import parse_thresholds

        assert parse_thresholds(" 5, 10,25") == (5.0, 10.0, 25.0)
        with pytest.raises(VprkitError, match="bad threshold list"):
            parse_thresholds(text)

    def test_utm_in_names_still_reads_benchmark_forms(self):
        assert parse_utm("@585000.25@4477000.5@17@T@.jpg") == (585000.25, 4477000.5)
        assert parse_utm("@-1e-05@+2E3@.jpg") == (-1e-05, 2000.0)
        assert parse_utm("@1.@.5@.jpg") == (1.0, 0.5)


class TestNumbers:
    @pytest.mark.parametrize("text", ["1_0", "\u0661,5", "1,\u0665"])
    def test_recall_lists_are_ascii(self, text):
        from vprkit.evaluate.evaluation import parse_recalls

        with pytest.raises(VprkitError, match="bad recall list"):
            parse_recalls(text)

    def test_parse_float(self):
        from vprkit.numbers import parse_float

        assert parse_float("45.5", "lat") == 45.5 and parse_float(" -1e3\t", "lat") == -1000.0
        assert parse_float("inf", "x", finite=False) == float("inf")
        for bad in (
            "500_000.5",
            "1_0",
            "nan",
            "inf",
            "-Infinity",
            "1e999",
            "",
            "  ",
            "1.2.3",
            "0x10",
            "\u0664",
            "45.5abc",
            "45.5\n7",
            "1,5",
        ):
            with pytest.raises(VprkitError, match=r"^lat of row 3: "):
                parse_float(bad, "lat of row 3")

    def test_parse_int(self):
        from vprkit.numbers import parse_int

        assert parse_int("12", "RANK") == 12 and parse_int("+3", "RANK") == 3
        assert parse_int("-3", "RANK") == -3
        for bad in ("1_0", "1.0", "", "\u0663", "0x1", "1e3", "9" * 5000, "4 2"):
            with pytest.raises(VprkitError, match=r"^RANK: "):
                parse_int(bad, "RANK")
        with pytest.raises(VprkitError, match=r"^RANK: .*at least 0"):
            parse_int("-1", "RANK", minimum=0)
        with pytest.raises(VprkitError, match=r"^RANK: .*at most 7"):
            parse_int("8", "RANK", maximum=7)

    def test_messages_are_one_printable_line(self):
        from vprkit.numbers import parse_float

        with pytest.raises(VprkitError) as caught:
            parse_float("1\x1b[31m\n" + "9" * 500, "lat")
        text = str(caught.value)
        assert "\n" not in text and "\x1b" not in text and len(text) < 200
