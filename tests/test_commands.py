"""The recipes of commands/: nordland_best.sh end to end on a tiny generated dataset, and what
run_all.sh runs (DRY_RUN prints every command without running it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vprkit.data.synthetic import generate_dataset

COMMANDS = Path(__file__).resolve().parents[1] / "commands"


def run_script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """commands/NAME ARGS with ENV added, the vprkit of this Python first on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(
        ["bash", str(COMMANDS / name), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path, **env},
        timeout=900,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """DATA/nordland (train, val, test) and DATA/corridor (test), 32x64 images."""
    data = tmp_path_factory.mktemp("data")
    generate_dataset(
        data / "nordland", {"train": (24, 12), "val": (16, 8), "test": (24, 8)}, size=(32, 64), seed=3
    )
    generate_dataset(data / "corridor", {"test": (12, 6)}, size=(32, 64), seed=4)
    return data


class TestNordlandBest:
    def test_dry_run_prints_the_recipe(self, data, tmp_path):
        done = run_script("nordland_best.sh", str(data), str(tmp_path / "out"), DRY_RUN="1")
        assert done.returncode == 0, done.stderr
        commands = [line for line in done.stdout.splitlines() if line.startswith("+ vprkit")]
        assert [c.split()[2] for c in commands] == ["extract", "train", "extract", "evaluate"]
        train = commands[1]
        for option in (
            "--backbone efficientnet_lite0",
            "--weights imagenet",
            "--aggregation netvlad",
            "--resize 96 192",
            "--queries-per-epoch 2200",
            "--cache-refresh 550",
            "--epochs 3",
            "--optimizer adam",
            "--lr 1e-3",
            "--scheduler cosine",
            "--seed 0",
        ):
            assert option in train
        assert "--cluster-split train" in commands[0] and "--resize 96 192" in commands[2]
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    def test_refuses_the_full_size(self, data, tmp_path):
        done = run_script("nordland_best.sh", str(data), str(tmp_path), SIZE="full")
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            "error: nordland_best.sh is a recipe for the small nordland set (SIZE=small)"
        ]

    @pytest.mark.slow
    def test_trains_and_evaluates_end_to_end(self, data, tmp_path):
        out = tmp_path / "out"
        env = dict(
            BACKBONE="resnet18conv4",
            WEIGHTS="none",
            RESIZE="32 64",
            QUERIES="6",
            CACHE_REFRESH="3",
            EPOCHS="1",
            WORKERS="0",
            DEVICE="cpu",
        )
        done = run_script("nordland_best.sh", str(data), str(out), **env)
        assert done.returncode == 0, done.stderr[-2000:]
        name = "resnet18conv4_netvlad_trained"
        config = json.loads((out / name / "config.json").read_text())
        assert (config["optimizer"], config["lr"], config["scheduler"]) == ("adam", 1e-3, "cosine")
        assert (config["resize"], config["queries_per_epoch"], config["epochs"]) == ([32, 64], 6, 1)
        rows = json.loads((out / "nordland_best.json").read_text())
        assert [Path(r["file"]).name for r in rows] == ["untrained_resnet18conv4_netvlad.h5", f"{name}.h5"]
        assert all(r["queries"] == 8 and r["database"] == 24 for r in rows)
        # a rerun keeps the trained model and the files: it only evaluates again
        stamp = (out / name / "best.pth").stat().st_mtime_ns
        again = run_script("nordland_best.sh", str(data), str(out), **env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "vprkit train" not in again.stdout
        assert (out / name / "best.pth").stat().st_mtime_ns == stamp


class TestRunAll:
    def test_runs_nordland_best_with_its_own_sizes(self, data, tmp_path):
        done = run_script(
            "run_all.sh",
            str(data),
            str(tmp_path / "all"),
            DRY_RUN="1",
            MODELS="resnet18conv4:none",
            QUERIES="7",
            EPOCHS="1",
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        best = lines.index("# nordland_best")
        trains = [line for line in lines if line.startswith("+ vprkit train")]
        assert all("--queries-per-epoch 7" in t for t in trains if "nordland_best" not in t)
        (best_train,) = [t for t in lines[best:] if t.startswith("+ vprkit train")]
        assert "--queries-per-epoch 2200" in best_train and "--epochs 3" in best_train
        assert "--backbone efficientnet_lite0" in best_train
        assert lines[-2].startswith("+ vprkit report")

    def test_nordland_best_can_be_left_out(self, data, tmp_path):
        done = run_script(
            "run_all.sh",
            str(data),
            str(tmp_path / "all"),
            DRY_RUN="1",
            MODELS="resnet18conv4:none",
            NORDLAND_BEST="0",
        )
        assert done.returncode == 0, done.stderr
        assert "# nordland_best" not in done.stdout
        assert str(tmp_path / "all" / "nordland_best") not in done.stdout
        assert "+ vprkit report" in done.stdout
