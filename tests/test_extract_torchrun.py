"""Extraction under torchrun (2 gloo processes on CPU) and as Slurm job array tasks: the merged
file equals a one-process extraction; a failed process stops all with one line; reruns resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import datasets_of, identical

from vprkit.cli import main
from vprkit.data.datasets import load_split
from vprkit.errors import VprkitError
from vprkit.extract.distributed import (
    World,
    _failure_message,
    merge_if_complete,
    process_device,
    slurm_shard,
)
from vprkit.extract.shards import shard_path
from vprkit.extract.split import ExtractOptions, extract
from vprkit.models import ModelConfig
from vprkit.store import DescriptorFile, partial_path

REPO = Path(__file__).resolve().parents[1]  # the processes import this checkout's vprkit
SIZE = (32, 40)
SCALES, VIEWS = (1, 2), ("hard_resize", "central_crop")
ARGS = [
    "--weights",
    "none",
    "--resize",
    *map(str, SIZE),
    "--scales",
    "1,2",
    "--views",
    ",".join(VIEWS),
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--device",
    "cpu",
]
LAUNCH = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
NO_SLURM = {
    name: None
    for name in (
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
        "SLURM_ARRAY_TASK_STEP",
        *LAUNCH,
    )
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """12 database images and 6 queries: shard 1 of 2 holds database rows 6-11, queries 3-5."""
    from vprkit.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("data"), {"test": (12, 6)}, size=SIZE, seed=3)


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory) -> Path:
    """The one-process extraction (one thread, as each torchrun process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return extract(
            root,
            tmp_path_factory.mktemp("one") / "one.h5",
            ModelConfig(weights="none"),
            ExtractOptions(scales=SCALES, views=VIEWS, resize=SIZE, batch_size=4, workers=0, device="cpu"),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)


def assert_same_file(got: Path, expected: Path, skip_rows: slice | None = None) -> None:
    """Every dataset (names, utm, hashes, descriptors of every scale and view, pyramid
    statistics) equal; descriptors to float rounding (batches differ at shard boundaries).
    ``skip_rows``: database rows of the descriptors not compared."""
    a, b = datasets_of(got), datasets_of(expected)
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = a[key], b[key]
        if x.dtype.kind == "f":
            assert x.shape == y.shape and x.dtype == y.dtype, key
            if skip_rows is not None and key.endswith("/database") and "stats" not in key:
                x, y = np.delete(x, skip_rows, axis=0), np.delete(y, skip_rows, axis=0)
            np.testing.assert_allclose(x, y, atol=2e-6, err_msg=key)
        else:
            assert identical(x, y), key


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "vprkit.cli",
            "extract",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def flat(text: str) -> str:
    """Messages as one line: rich wraps them at the terminal width (and shortens long paths)."""
    return " ".join(text.split())


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error:")]


def no_vprkit_traceback(result: subprocess.CompletedProcess) -> bool:
    """torchrun itself prints a traceback of its launcher when a process fails; none of vprkit's."""
    return not [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.lstrip().startswith("File ") and "vprkit" in line
    ]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".partial", ".lock") or ".shard" in p.name)


@pytest.mark.slow
def test_two_processes_extract_what_one_process_extracts(root, reference, tmp_path):
    out = tmp_path / "db.h5"
    result = torchrun(str(root), "-o", str(out), *ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert flat(result.stderr).count("db.h5: 2 shards") == 1  # process 0 merged, once
    assert_same_file(out, reference)
    with DescriptorFile(out) as f:
        assert f.dataset["merged_shards"] == 2 and "shard" not in f.dataset
    assert leftovers(tmp_path) == []  # shards removed after the merge, no lock or partial left

    # the same command again: the complete output is left as it is, as extract leaves it
    before = out.stat()
    again = torchrun(str(root), "-o", str(out), *ARGS)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" in flat(again.stderr)
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert leftovers(tmp_path) == []

    # asking for a scale it lacks: refused by process 0 before any work, one line, no hang
    more = torchrun(str(root), "-o", str(out), *["1,3" if a == "1,2" else a for a in ARGS])
    assert more.returncode != 0
    assert error_lines(more) == [
        f"Error: {out} exists without scale 3: add them with one process "
        "(vprkit extract without --shard or torchrun extends a file of "
        "the same model), choose another output, or pass --overwrite"
    ]
    assert no_vprkit_traceback(more) and leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_failed_process_stops_all_and_a_rerun_resumes(root, reference, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(root, data)
    broken = load_split(data, "test").database.paths()[10]  # process 1's second batch
    image = broken.read_bytes()
    broken.write_bytes(b"not an image")
    out = tmp_path / "db.h5"
    result = torchrun(str(data), "-o", str(out), *ARGS, "--quiet", timeout=180)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith(f"Error: process 1 of 2 failed: cannot read image {broken}")
    assert lines[0].endswith("rerun the same command to resume")
    assert no_vprkit_traceback(result)
    shard0, shard1 = shard_path(out, 0, 2), shard_path(out, 1, 2)
    assert not out.exists() and shard0.is_file() and not shard1.exists()
    with DescriptorFile(partial_path(shard1), require_complete=False) as f:
        assert f.rows_done("database", 1) == 4  # its first batch, kept for the rerun

    # mark the rows committed so far: a rerun that resumes keeps them, one that restarts would not
    with h5py.File(partial_path(shard1), "r+") as h5:
        h5["scales/1/database"][:4] = 7.0
    broken.write_bytes(image)
    kept = shard0.stat()
    rerun = torchrun(str(data), "-o", str(out), *ARGS, "--keep-shards")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "db.shard0of2.h5 already holds scales 1+2" in flat(rerun.stderr)  # nothing to do
    assert (shard0.stat().st_ino, shard0.stat().st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    assert shard1.is_file() and not partial_path(shard1).exists()  # --keep-shards
    with DescriptorFile(out) as f:
        rows = f.read_rows("database", (1,), 0, 12)
    assert (rows[6:10] == 7.0).all() and not (rows[:6] == 7.0).any()
    assert_same_file(out, reference, skip_rows=slice(6, 10))


# --------------------------------------------------------------------------- Slurm job arrays
def slurm(task: int, count: int, first: int = 0, **more: str) -> dict[str, str]:
    return {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_COUNT": str(count),
        "SLURM_ARRAY_TASK_MIN": str(first),
        **more,
    }


@pytest.mark.parametrize(
    "env,shard",
    [
        (slurm(0, 4), (0, 4)),
        (slurm(3, 4), (3, 4)),
        (slurm(7, 4, first=5, SLURM_ARRAY_TASK_MAX="8"), (2, 4)),  # --array=5-8
        (slurm(1, 1, first=1), (0, 1)),
        (slurm(10, 3, first=2, SLURM_ARRAY_TASK_MAX="10", SLURM_ARRAY_TASK_STEP="4"), (2, 3)),  # 2-10:4
    ],
)
def test_slurm_variables_give_the_shard(env, shard):
    assert slurm_shard(env) == shard


def test_slurm_variables_refused():
    with pytest.raises(
        VprkitError,
        match="needs a task of a Slurm job array .*: SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN not set",
    ):
        slurm_shard({"SLURM_ARRAY_TASK_ID": "3"})
    with pytest.raises(VprkitError, match="evenly spaced task IDs .*task 3: 3 tasks from 1 to 7"):
        slurm_shard(slurm(3, 3, first=1, SLURM_ARRAY_TASK_MAX="7"))  # --array=1,3,7
    with pytest.raises(VprkitError, match="not integers"):
        slurm_shard(slurm(3, 3) | {"SLURM_ARRAY_TASK_ID": "x"})


def run_task(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(main, ["extract", *args], env={**NO_SLURM, **env})


def test_array_tasks_merge_when_the_last_one_finishes(root, reference, tmp_path):
    out = tmp_path / "db.h5"
    args = [str(root), "-o", str(out), *ARGS, "--shard", "slurm", "--merge-when-complete", "--quiet"]
    for task in (3, 1):  # --array=1-3, finishing out of order
        result = run_task(args, slurm(task, 3, first=1))
        assert result.exit_code == 0, result.output
        assert shard_path(out, task - 1, 3).is_file() and not out.exists()
    last = run_task(args[:-1], slurm(2, 3, first=1))  # not --quiet: its merge is shown
    assert last.exit_code == 0, last.output
    assert "db.h5: 3 shards" in flat(last.output)
    assert_same_file(out, reference)
    assert leftovers(tmp_path) == []  # shards removed, locks released

    # a rerun of any task: the complete output is handled as extract handles it
    before = out.stat()
    again = run_task(args[:-1], slurm(1, 3, first=1))
    assert again.exit_code == 0, again.output
    assert "nothing to do" in flat(again.output) and leftovers(tmp_path) == []
    assert out.stat().st_mtime_ns == before.st_mtime_ns
    # a task that checks after another merged: no second merge
    options = ExtractOptions(scales=SCALES, views=VIEWS, resize=SIZE)
    assert merge_if_complete(out, 3, options, progress=False) == out
    assert out.stat().st_mtime_ns == before.st_mtime_ns


def test_array_task_without_merging(root, reference, tmp_path):
    out = tmp_path / "db.h5"
    result = run_task([str(root), "-o", str(out), *ARGS, "--shard", "slurm"], slurm(1, 2))
    assert result.exit_code == 0, result.output
    assert "vprkit merge db.shard*of2.h5 -o" in flat(result.output)
    assert leftovers(tmp_path) == ["db.shard1of2.h5"]
    with DescriptorFile(tmp_path / "db.shard1of2.h5") as f, DescriptorFile(reference) as whole:
        assert f.dataset["shard"]["index"] == 1 and f.dataset["shard"]["count"] == 2
        assert f.names("database") == whole.names("database")[6:]
        assert f.names("queries") == whole.names("queries")[3:]


def test_refusals(root, tmp_path):
    args = [str(root), "-o", str(tmp_path / "db.h5"), *ARGS]
    for extra, env, message in (
        (["--merge-when-complete"], {}, "--merge-when-complete merges shards: give --shard"),
        (
            ["--shard", "slurm"],
            {},
            "SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN not set",
        ),
        (
            ["--shard", "slurm", "--merge-when-complete", "--overwrite"],
            slurm(0, 2),
            "cannot tell the shards of an earlier run",
        ),
        (
            ["--shard", "0/2"],
            {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},
            "under torchrun every process extracts the shard of its rank: give no --shard",
        ),
    ):
        result = run_task(args + extra, env)
        assert result.exit_code == 1, result.output
        assert message in result.output and result.output.count("Error:") == 1
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the pieces
def test_world_from_env():
    assert World.from_env({}) == World() == World.from_env({"WORLD_SIZE": "1", "RANK": "0"})
    assert World.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    for bad in (
        {"WORLD_SIZE": "2"},
        {"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"},
        {"WORLD_SIZE": "2", "RANK": "a"},
    ):
        with pytest.raises(VprkitError):
            World.from_env(bad)


def test_process_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device("auto", 1) == torch.device("cpu")
    assert process_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(VprkitError, match="CUDA is not available"):
        process_device("cuda", 0)


def test_process_device_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert process_device("auto", 1) == torch.device("cuda", 1)
    assert process_device("cuda", 0) == torch.device("cuda", 0)
    assert process_device("cuda:1", 0) == torch.device("cuda", 1)  # as asked
    assert process_device("cpu", 1) == torch.device("cpu")
    assert chosen == [1, 0]
    with pytest.raises(VprkitError, match="LOCAL_RANK 2 but this machine has 2 GPU"):
        process_device("cuda", 2)


def test_failure_messages():
    same_host = [("a", None), ("a", "bad image x"), ("a", None)]
    assert _failure_message(same_host, False, "; rerun") == ("process 1 of 3 failed: bad image x; rerun", [1])
    hosts = [("a", "disk full"), ("b", None), ("b", "bad image y")]
    assert _failure_message(hosts, False, "") == (
        "process 0 (on a) of 3 failed: disk full (process(es) 2 too)",
        [0, 2],
    )
    everywhere = [("a", "no such dataset"), ("a", "no such dataset")]
    assert _failure_message(everywhere, False, "; rerun") == ("no such dataset", [0, 1])
    assert _failure_message([("a", "exists"), ("a", None)], True, "; rerun") == ("exists", [0])
