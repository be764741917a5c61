"""Training in two CPU processes (torchrun, gloo) against the same training in one process.

Why the weights are compared with SGD: N processes compute the gradient of the same global batch
as one process (same triplets, BatchNorm statistics of the whole batch, loss shares scaled for
DDP's averaging), but with sums in another order, so gradients agree to about 1e-7 relative, not
bit for bit. Adam divides each gradient element by its own running magnitude: elements whose
gradient is rounding noise (about 1e-9 against a typical 1e-4 in these tiny runs) then move by a
sizeable fraction of the learning rate in a direction set by the noise, and a few weights out of
hundreds of thousands differ by ~1e-4 after two steps. With SGD, every difference stays at
rounding level, and the learning rate and margin are large (weights move by 0.01 to 0.2) so that a
wrong gradient scale, unsynchronised BatchNorm or other triplets would show at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import flat_config, interrupt_training_at

from vprkit.cli import main
from vprkit.data.datasets import load_split
from vprkit.data.synthetic import generate_dataset
from vprkit.models import load_model_from_checkpoint
from vprkit.models.checkpoints import read_checkpoint
from vprkit.train import train

REPO = Path(__file__).resolve().parents[1]  # the processes import this checkout's vprkit
SIZE = (32, 40)
# Steps of 3 groups (2 + 1 per process) and of 1 group (process 1 idle): uneven shares and an
# empty one are both exercised. NetVLAD: k-means initialisation in every process.
OPTIONS = dict(
    weights="none",
    resize=SIZE,
    aggregation="netvlad",
    clusters=4,
    queries_per_epoch=8,
    cache_refresh=4,
    batch_size=3,
    negatives=2,
    neg_samples=10,
    epochs=1,
    infer_batch_size=8,
    workers=0,
    device="cpu",
    optimizer="sgd",
    lr=1.0,
    margin=1.0,
)
RUN_FILES = {"config.json", "train.log", "metrics.jsonl", "last.pth", "best.pth", "curves.png"}


def cli_options(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]
    return args


def torchrun(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
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
            "train",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


def assert_same_weights(got: Path, expected: Path) -> None:
    a, b = weights(got), weights(expected)
    assert a.keys() == b.keys()
    for key, value in b.items():
        torch.testing.assert_close(a[key], value, rtol=1e-4, atol=1e-5, msg=key)


def losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("ddp"), {"train": (30, 16), "val": (20, 10)}, size=SIZE, seed=4
    )


@contextmanager
def one_thread():
    """Like each torchrun process (OMP_NUM_THREADS=1); also faster on a small, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_process(root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("one") / "run"
    with one_thread():
        train(flat_config(root=str(root), **OPTIONS), run, progress=False)
    return run


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(root, one_process, tmp_path):
    run = tmp_path / "run"
    result = torchrun(str(root), "--out", str(run), "--quiet", *cli_options(OPTIONS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("best model") == 1  # process 0 prints, process 1 does not

    # one set of outputs, written once (by process 0)
    assert {p.name for p in run.iterdir()} == RUN_FILES
    log = (run / "train.log").read_text()
    assert "2 processes (gloo on cpu)" in log and log.count("epoch 1 refresh 1/2") == 1
    assert len(losses(run)) == 2
    assert json.loads((run / "config.json").read_text())["batch_size"] == 3

    # checkpoints: the unwrapped model, loadable and usable as before
    data = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    assert data["world_size"] == 2 and len(data["rng_torch_ranks"]) == 2
    assert not any(k.startswith("module.") for k in data["model_state_dict"])
    state, stored = read_checkpoint(run / "best.pth")
    assert stored["aggregation"] == "netvlad" and state.keys() == data["model_state_dict"].keys()
    assert load_model_from_checkpoint(run / "best.pth").config.clusters == 4
    out = tmp_path / "e.h5"
    extracted = CliRunner().invoke(
        main,
        [
            "extract",
            str(root),
            "--split",
            "val",
            "-o",
            str(out),
            "--checkpoint",
            str(run / "best.pth"),
            "--resize",
            *map(str, SIZE),
            "--workers",
            "0",
            "--quiet",
        ],
    )
    assert extracted.exit_code == 0, extracted.output

    # the same training as one process
    assert losses(run) == pytest.approx(losses(one_process), rel=1e-5)
    assert_same_weights(run / "last.pth", one_process / "last.pth")
    assert_same_weights(run / "best.pth", one_process / "best.pth")


@pytest.mark.slow
def test_resume_a_one_process_run_with_two(root, one_process, tmp_path, monkeypatch):
    """Stopped after its first cache refresh in one process, finished by two under torchrun."""
    run = tmp_path / "run"
    interrupt_training_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt), one_thread():
        train(flat_config(root=str(root), **OPTIONS), run, progress=False)
    monkeypatch.undo()
    assert len(losses(run)) == 1

    result = torchrun("--resume", str(run), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(1 process(es) before, 2 now)" in (run / "train.log").read_text()
    assert losses(run) == pytest.approx(losses(one_process), rel=1e-5)
    assert_same_weights(run / "last.pth", one_process / "last.pth")


@pytest.mark.slow
def test_an_error_in_one_process_stops_both(tmp_path):
    root = generate_dataset(tmp_path / "d", {"train": (30, 16), "val": (20, 10)}, size=SIZE, seed=4)
    # validation descriptors: rows 0-15 in process 0, 16-19 (the last batch of 8) in process 1
    broken = load_split(root, "val").database.paths()[-1]
    broken.write_bytes(b"not an image")
    options = {**OPTIONS, "aggregation": "gem"}
    result = torchrun(
        str(root), "--out", str(tmp_path / "run"), "--quiet", *cli_options(options), timeout=120
    )
    assert result.returncode != 0
    assert f"cannot read image {broken}" in result.stderr  # process 1's own error
    assert "process 1 of 2 stopped: cannot read image" in result.stderr  # process 0's
