"""Hostile files and paths: crafted checkpoints run nothing, planted links are never written
through, damaged run folders and bad option values give one clear line, and text from files
reaches the terminal inert."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SIZE, config, options
from helpers import write_file

from vprkit.cli import main
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.extract.split import extract
from vprkit.files import atomic_output, output_lock, partial_path
from vprkit.models import VPRModel, load_model_from_checkpoint
from vprkit.models.network import ModelConfig
from vprkit.models.serialization import load_safely
from vprkit.progress import inert
from vprkit.train import TrainConfig, train

RESIZE = ["--resize", str(SIZE[0]), str(SIZE[1])]
FAST = ["--weights", "none", *RESIZE, "--workers", "0", "--quiet", "--device", "cpu"]
TRAIN = [
    *FAST,
    "--queries-per-epoch",
    "4",
    "--cache-refresh",
    "4",
    "--batch-size",
    "2",
    "--negatives",
    "2",
    "--neg-samples",
    "8",
    "--epochs",
    "1",
    "--infer-batch-size",
    "8",
]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, pattern: str = "") -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    assert result.exit_code in (1, 2), result.output  # 2: click's usage errors (bad values)
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output and "Exception ignored" not in result.output
    if pattern:
        import re

        assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_checkpoint(path: Path, marker: Path, where: str = "extra") -> Path:
    state = VPRModel(ModelConfig(weights="none")).state_dict()
    payload = {"model_state_dict": state, "extra": _RunsCode(marker)}
    if where == "state":
        payload = {"model_state_dict": {**state, "backbone.0.weight": _RunsCode(marker)}}
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def train_root(tmp_path_factory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("train"), {"train": (20, 10), "val": (16, 8)}, size=SIZE, seed=7
    )


class TestCraftedCheckpoints:
    @pytest.mark.parametrize("where", ["extra", "state"])
    def test_extract_runs_nothing(self, small_root, tmp_path, where):
        marker = tmp_path / "pwned"
        evil = crafted_checkpoint(tmp_path / "evil.pth", marker, where)
        line = one_line_error(
            cli(
                "extract",
                small_root,
                "-o",
                tmp_path / "x.h5",
                "--checkpoint",
                evil,
                *RESIZE,
                "--workers",
                "0",
                "--quiet",
            ),
            r"holds Python objects \((posix|os)\.system\) that vprkit does not load",
        )
        assert "weights_only" not in line and not marker.exists()
        assert not (tmp_path / "x.h5").exists() and not partial_path(tmp_path / "x.h5").exists()

    def test_backbone_weights_file_runs_nothing(self, small_root, tmp_path):
        marker = tmp_path / "pwned"
        torch.save({"conv1.weight": _RunsCode(marker)}, tmp_path / "w.pth")
        one_line_error(
            cli(
                "extract",
                small_root,
                "-o",
                tmp_path / "x.h5",
                "--weights",
                tmp_path / "w.pth",
                *RESIZE,
                "--workers",
                "0",
                "--quiet",
            ),
            "weights file .* holds Python objects",
        )
        assert not marker.exists()

    def test_train_checkpoint_runs_nothing(self, train_root, tmp_path):
        marker = tmp_path / "pwned"
        evil = crafted_checkpoint(tmp_path / "evil.pth", marker)
        one_line_error(
            cli("train", train_root, "--out", tmp_path / "run", "--checkpoint", evil, *TRAIN),
            "holds Python objects",
        )
        assert not marker.exists()

    def test_planted_last_pth_runs_nothing(self, train_root, tmp_path):
        run = tmp_path / "run"
        assert cli("train", train_root, "--out", run, *TRAIN).exit_code == 0
        marker = tmp_path / "pwned"
        data = torch.load(run / "last.pth", weights_only=True)
        data["state"]["neg_cache"] = _RunsCode(marker)
        torch.save(data, run / "last.pth")
        one_line_error(cli("train", "--resume", run, "--quiet"), "run state .* holds Python objects")
        assert not marker.exists()

    def test_benchmark_checkpoint_with_numpy_recalls_still_loads(self, tmp_path):
        state = VPRModel(ModelConfig(weights="none")).state_dict()
        torch.save(
            {
                "epoch_num": 3,
                "model_state_dict": {f"module.{k}": v for k, v in state.items()},
                "recalls": np.array([41.5, 63.2]),
                "best_r5": np.float64(63.2),
                "not_improved_num": np.int64(0),
            },
            tmp_path / "best_model.pth",
        )
        model = load_model_from_checkpoint(tmp_path / "best_model.pth")
        assert model.config.backbone == "resnet18conv4" and model.config.aggregation == "gem"
        assert load_safely(tmp_path / "best_model.pth")["recalls"].tolist() == [41.5, 63.2]

    def test_vprkit_files_need_no_allowance(self, train_root, tmp_path):
        run = tmp_path / "run"
        assert cli("train", train_root, "--out", run, *TRAIN, "--mining", "full").exit_code == 0
        for name in ("last.pth", "best.pth"):  # plain weights_only, no numpy globals allowed
            assert "model_state_dict" in torch.load(run / name, weights_only=True)


class TestDamagedRunFolders:
    @pytest.fixture
    def run(self, train_root, tmp_path) -> Path:
        run = tmp_path / "run"
        assert cli("train", train_root, "--out", run, *TRAIN, "--epochs", "2").exit_code == 0
        return run

    @pytest.mark.parametrize(
        "damage, pattern",
        [
            ("empty", "run state .*last.pth is empty"),
            ("truncated", "cannot read run state .*last.pth: .*damaged or not a torch file"),
            ("not torch", "cannot read run state"),
            ("wrong keys", "is not a vprkit run state"),
            ("config not json", "config.json is damaged"),
            ("config unknown key", "config.json is damaged"),
            ("config a list", "config.json is damaged"),
            ("config missing", "config.json does not exist"),
        ],
    )
    def test_one_line_each(self, run, damage, pattern):
        last, cfg = run / "last.pth", run / "config.json"
        if damage == "empty":
            last.write_bytes(b"")
        elif damage == "truncated":
            last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        elif damage == "not torch":
            last.write_text("hello")
        elif damage == "wrong keys":
            torch.save({"model_state_dict": {}}, last)
        elif damage == "config not json":
            cfg.write_text("{ nope")
        elif damage == "config unknown key":
            cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "colour": "red"}))
        elif damage == "config a list":
            cfg.write_text("[]")
        else:
            cfg.unlink()
        one_line_error(cli("train", "--resume", run, "--quiet"), pattern)

    def test_a_line_cut_by_a_kill_is_dropped_on_resume(self, run):
        metrics = run / "metrics.jsonl"
        before = metrics.read_text()
        with open(metrics, "a") as f:
            f.write('{"epoch": 3, "refresh": 1, "lo')  # killed in the middle of a line
        result = cli("train", "--resume", run, "--quiet")
        assert result.exit_code == 0, result.output
        assert metrics.read_text() == before and (run / "curves.png").is_file()

    def test_changed_dataset_refused(self, run, train_root, tmp_path):
        root = tmp_path / "copy"
        shutil.copytree(train_root, root)
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**cfg, "root": str(root)}))
        db = root / "images/train/database"
        first = sorted(db.iterdir())[0]
        shutil.copy(first, db / ("@999@999@33@T@@@@@@@@@extra@.jpg"))
        one_line_error(
            cli("train", "--resume", run, "--quiet"), "changed since .* was started .*train_database"
        )

    def test_other_architecture_in_last_pth(self, run, tmp_path, train_root):
        data = torch.load(run / "last.pth", weights_only=True)
        other = VPRModel(ModelConfig(weights="none", aggregation="netvlad", clusters=4))
        data["model_state_dict"] = other.state_dict()
        torch.save(data, run / "last.pth")
        one_line_error(cli("train", "--resume", run, "--quiet"), "does not fit this run's config")


class TestRunFolderLock:
    def test_second_train_into_a_running_folder_is_refused(self, train_root, tmp_path):
        run = tmp_path / "run"
        run.mkdir()
        with output_lock(run / "train"):
            with pytest.raises(VprkitError, match="another vprkit process is writing the run folder"):
                train(
                    TrainConfig(
                        root=str(train_root),
                        model=ModelConfig(weights="none"),
                        resize=SIZE,
                        workers=0,
                        device="cpu",
                        epochs=1,
                    ),
                    run,
                    progress=False,
                )
            with pytest.raises(VprkitError, match="another vprkit process"):
                train(None, run, resume=True, progress=False)
        assert not (run / "last.pth").exists()


class TestPlantedLinks:
    """A link planted where vprkit writes is never followed: its target keeps its bytes."""

    @pytest.fixture
    def target(self, tmp_path) -> Path:
        target = tmp_path / "precious.txt"
        target.write_text("precious")
        return target

    @pytest.mark.parametrize("suffix", [".lock", ".partial"])
    def test_extract(self, small_root, tmp_path, target, suffix):
        out = tmp_path / "gem.h5"
        (tmp_path / f"gem.h5{suffix}").symlink_to(target)
        one_line_error(cli("extract", small_root, "-o", out, *FAST), "is a symbolic link")
        assert target.read_text() == "precious" and not out.exists()

    def test_extract_overwrite_removes_the_link_only(self, small_root, tmp_path, target):
        (tmp_path / "gem.h5.partial").symlink_to(target)
        result = cli("extract", small_root, "-o", tmp_path / "gem.h5", *FAST, "--overwrite")
        assert result.exit_code == 0, result.output
        assert target.read_text() == "precious" and (tmp_path / "gem.h5").is_file()

    def test_extend_does_not_copy_through_a_link(self, small_root, tmp_path, target):
        out = extract(small_root, tmp_path / "gem.h5", config(), options(), progress=False)
        partial_path(out).symlink_to(target)
        with pytest.raises(VprkitError, match="is a symbolic link"):
            extract(small_root, out, config(), options(scales=(1, 2)), progress=False)
        assert target.read_text() == "precious"

    def test_combine_and_merge(self, gem_file, netvlad_file, tmp_path, target):
        (tmp_path / "c.h5.partial").symlink_to(target)
        assert cli("combine", gem_file, netvlad_file, "-o", tmp_path / "c.h5", "--quiet").exit_code == 0
        (tmp_path / "d.h5.lock").symlink_to(target)
        one_line_error(
            cli("combine", gem_file, netvlad_file, "-o", tmp_path / "d.h5", "--quiet"),
            "d.h5.lock is a symbolic link",
        )
        assert target.read_text() == "precious"

    def test_json_predictions_and_report_replace_the_link(self, gem_file, tmp_path, target):
        for name in ("r.json", "p.csv"):
            (tmp_path / name).symlink_to(target)
        result = cli("evaluate", gem_file, "--json", tmp_path / "r.json", "--predictions", tmp_path / "p.csv")
        assert result.exit_code == 0, result.output
        assert target.read_text() == "precious"
        assert not (tmp_path / "r.json").is_symlink() and json.loads((tmp_path / "r.json").read_text())
        assert (tmp_path / "p.csv").read_text().startswith("query,rank,database")

    def test_faiss_index(self, gem_file, tmp_path, target):
        local = tmp_path / "g.h5"
        shutil.copy(gem_file, local)
        from vprkit.search.index import index_path
        from vprkit.store import DescriptorFile

        with DescriptorFile(local) as f:
            path = index_path(f, (1,), "IVF2,Flat")
        path.symlink_to(target)
        assert cli("evaluate", local, "--index", "IVF2,Flat").exit_code == 0
        assert target.read_text() == "precious" and path.is_file() and not path.is_symlink()

    def test_run_folder_files(self, train_root, tmp_path, target):
        run = tmp_path / "run"
        run.mkdir()
        (run / "best.pth").symlink_to(target)
        assert cli("train", train_root, "--out", run, *TRAIN).exit_code == 0
        assert target.read_text() == "precious" and not (run / "best.pth").is_symlink()
        run2 = tmp_path / "run2"
        run2.mkdir()
        for name in ("train.log", "metrics.jsonl", "config.json"):  # left by a run that stopped
            (run2 / name).symlink_to(target)  # before its first checkpoint
        assert cli("train", train_root, "--out", run2, *TRAIN).exit_code == 0
        assert target.read_text() == "precious" and not (run2 / "train.log").is_symlink()
        (run2 / "train.log").unlink()
        (run2 / "train.log").symlink_to(target)
        one_line_error(cli("train", "--resume", run2, "--quiet"), "train.log is a symbolic link")
        assert target.read_text() == "precious"

    def test_atomic_output_keeps_the_old_file_on_error(self, tmp_path):
        path = tmp_path / "x.txt"
        path.write_text("old")
        with pytest.raises(RuntimeError), atomic_output(path) as handle:
            handle.write("new")
            raise RuntimeError("stop")
        assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


class TestOptionValues:
    @pytest.mark.parametrize(
        "args, pattern",
        [
            (["--threshold", "nan"], "--threshold must be a positive"),
            (["--threshold", "inf"], "--threshold must be a positive"),
            (["--threshold", "-3"], "--threshold must be a positive"),
            (["--block-rows", "0"], "--block-rows must be at least 1"),
            (["--block-rows", "-5"], "--block-rows must be at least 1"),
            (["--recalls", "1,,5"], "bad recall list"),
            (["--recalls", "5,1"], "bad recall list"),
            (["--recalls", "0,1"], "bad recall list"),
            (["--recalls", "1,100"], r"Recall@100 asks for more predictions than the 30 database"),
            (["--recalls", "1,99999999999999999999"], "bad recall list"),
            (["--nprobe", "0"], "--nprobe must be at least 1"),
            (["--scale", "1++2"], "bad scale list"),
            (["--scale", "+1"], "bad scale list"),
            (["--scale", "1+1"], "bad scale list"),
            (["--scale", "0"], "bad scale list"),
            (["--scale", "1e3"], "bad scale list"),
        ],
    )
    def test_evaluate(self, tmp_path, args, pattern):
        rng = np.random.default_rng(0)
        f = write_file(tmp_path / "f.h5", rng.normal(size=(30, 8)), rng.normal(size=(6, 8)))
        one_line_error(cli("evaluate", f, *args), pattern)

    @pytest.mark.parametrize("weights", ["nan,1", "inf,1", "0,1", "-1,2", "1"])
    def test_combine_weights(self, gem_file, netvlad_file, tmp_path, weights):
        one_line_error(
            cli("combine", gem_file, netvlad_file, "-o", tmp_path / "c.h5", "--part-weights", weights),
            "--part-weights needs 2 positive numbers",
        )
        assert not (tmp_path / "c.h5").exists()

    def test_combine_block_rows(self, gem_file, netvlad_file, tmp_path):
        one_line_error(
            cli("combine", gem_file, netvlad_file, "-o", tmp_path / "c.h5", "--block-rows", "0"),
            "--block-rows must be at least 1",
        )

    @pytest.mark.parametrize(
        "args, pattern",
        [
            (["--workers", "-1"], "'--workers': -1 is not in the range x>=0"),
            (["--seed", "-1"], "'--seed': -1 is not in the range 0<=x<=4294967295"),
            (["--seed", str(2**64)], "is not in the range 0<=x<=4294967295"),
            (["--clusters", "0", "--aggregation", "netvlad"], "'--clusters': 0 is not in the range x>=1"),
            (["--scales", "1,,2"], "bad scale list"),
            (["--scales", "1,1"], "a scale is repeated"),
            (["--batch-size", "0"], "'--batch-size': 0 is not in the range x>=1"),
            (["--resize", "0", "10"], "bad --resize"),
        ],
    )
    def test_extract(self, small_root, tmp_path, args, pattern):
        one_line_error(
            cli("extract", small_root, "-o", tmp_path / "x.h5", "--weights", "none", "--quiet", *args),
            pattern,
        )
        assert not (tmp_path / "x.h5").exists() and not partial_path(tmp_path / "x.h5").exists()

    @pytest.mark.parametrize(
        "args, pattern",
        [
            (["--lr", "nan"], "--lr and --margin must be positive"),
            (["--margin", "inf"], "--lr and --margin must be positive"),
            (["--weight-decay", "nan"], "--lr and --margin must be positive"),
            (["--workers", "-2"], "--workers and --seed must not be negative"),
            (["--clusters", "0"], "'--clusters': 0 is not in the range x>=1"),
            (["--resize", "-1", "4"], "bad --resize"),
        ],
    )
    def test_train(self, train_root, tmp_path, args, pattern):
        one_line_error(cli("train", train_root, "--out", tmp_path / "run", *TRAIN, *args), pattern)
        assert not (tmp_path / "run" / "last.pth").exists()


class TestInertText:
    def test_escapes_control_characters_and_cuts(self):
        assert inert("a\x1b[31mb\x07\n") == "a\\x1b[31mb\\x07\\n"
        assert inert("bad\udcffname") == "bad\\xffname"
        assert inert("x" * 50, limit=10) == "x" * 10 + "... (40 more characters)"
        assert inert("[bold]tab\tok[/]") == "[bold]tab\tok[/]"

    def test_brackets_and_escapes_in_a_folder_name(self, tmp_path):
        folder = tmp_path / "[red]x[/] \x1b[2J"
        root = generate_dataset(folder / "data", {"test": (24, 6)}, size=SIZE, seed=2)
        out = folder / "[b]gem.h5"
        result = cli("extract", root, "-o", out, "--weights", "none", *RESIZE, "--workers", "0")
        assert result.exit_code == 0, result.output
        assert "[b]gem.h5" in result.output and "\x1b" not in result.output
        for args, shown in (
            (["info", out], "\\x1b[2J"),
            (["evaluate", out], "[b]gem.h5"),
            (["dataset", "info", root], "\\x1b[2J"),
        ):
            result = cli(*args)
            assert result.exit_code == 0, result.output
            assert "\x1b" not in result.output and shown in result.output, result.output
        one_line_error(cli("evaluate", folder / "missing[/].h5"), r"missing\[/\]\.h5 does not exist")

    def test_stored_attributes_shown_escaped_and_cut(self, tmp_path):
        import h5py

        rng = np.random.default_rng(0)
        f = write_file(tmp_path / "f.h5", rng.normal(size=(10, 4)), rng.normal(size=(3, 4)))
        with h5py.File(f, "r+") as h5:
            model = json.loads(h5.attrs["model"])
            h5.attrs["model"] = json.dumps({**model, "backbone": "\x1b[2J" + "y" * 5000})
        result = cli("info", f)
        assert result.exit_code == 0 and "\x1b" not in result.output
        assert "more characters" in result.output and "y" * 5000 not in result.output
        with h5py.File(f, "r+") as h5:
            h5.attrs.create("dataset", json.dumps({"x": "z" * (2 << 20)}))
        one_line_error(cli("info", f), "is damaged: cannot read its header .*more than")


def _interrupted_extract(root: Path, out: Path, monkeypatch, after_commits: int = 2) -> None:
    """An extraction stopped (Ctrl-C) after ``after_commits`` committed batches."""
    from vprkit.store import DescriptorWriter

    real = DescriptorWriter.commit_rows
    calls = {"n": 0}

    def commit(self, role, scales, rows, *view):
        real(self, role, scales, rows, *view)
        calls["n"] += 1
        if calls["n"] == after_commits:
            raise KeyboardInterrupt

    monkeypatch.setattr(DescriptorWriter, "commit_rows", commit)
    with pytest.raises(KeyboardInterrupt):
        extract(root, out, config(), options(), progress=False)
    monkeypatch.undo()


def _replace_bytes(image: Path, seed: int) -> None:
    """Other pixels under the same name (the size and name stay)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    with Image.open(image) as im:
        size = im.size
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(image)


class TestImagesChecked:
    """Resumed and extended extractions check the images' bytes, not only their names."""

    @pytest.fixture
    def root(self, small_root, tmp_path) -> Path:
        root = tmp_path / "data"
        shutil.copytree(small_root, root)
        return root

    def test_hashes_stored_and_equal_to_the_files(self, gem_file, small_root):
        import hashlib

        from vprkit.data.datasets import load_split
        from vprkit.store import DescriptorFile

        split = load_split(small_root, "test")
        with DescriptorFile(gem_file) as f:
            for role in ("database", "queries"):
                expected = [hashlib.sha256(p.read_bytes()).digest() for p in split.role(role).paths()]
                assert [row.tobytes() for row in f.hashes(role)] == expected

    def test_resume_with_a_changed_image_is_refused(self, root, tmp_path, monkeypatch):
        out = tmp_path / "gem.h5"
        _interrupted_extract(root, out, monkeypatch)
        image = sorted((root / "images/test/database").iterdir())[1]  # a row already written
        _replace_bytes(image, 1)
        with pytest.raises(VprkitError, match=f"database image {image.name} has other bytes"):
            extract(root, out, config(), options(), progress=False)
        assert partial_path(out).exists() and not out.exists()

    def test_changing_a_row_not_yet_extracted_is_not_a_difference(self, root, tmp_path, monkeypatch):
        out = tmp_path / "gem.h5"
        _interrupted_extract(root, out, monkeypatch)
        _replace_bytes(sorted((root / "images/test/queries").iterdir())[-1], 2)
        extract(root, out, config(), options(), progress=False)
        assert out.exists()

    def test_extend_with_a_changed_image_keeps_the_file(self, root, tmp_path):
        out = extract(root, tmp_path / "gem.h5", config(), options(), progress=False)
        before = out.read_bytes()
        image = sorted((root / "images/test/queries").iterdir())[3]
        _replace_bytes(image, 3)
        one_line_error(
            cli("extract", root, "-o", out, *FAST, "--scales", "1,2"),
            f"was made differently .*queries image {image.name} has other bytes",
        )
        assert out.read_bytes() == before and not partial_path(out).exists()

    def test_another_root_with_the_same_images_extends(self, root, tmp_path):
        out = extract(root, tmp_path / "gem.h5", config(), options(), progress=False)
        moved = tmp_path / "moved"
        shutil.copytree(root, moved)  # new modification times, same bytes
        extract(moved, out, config(), options(scales=(1, 2)), progress=False)
        from vprkit.store import DescriptorFile

        with DescriptorFile(out) as f:
            assert f.scales == [1, 2]

    def test_another_root_with_other_images_is_refused(self, root, tmp_path):
        out = extract(root, tmp_path / "gem.h5", config(), options(), progress=False)
        other = tmp_path / "other"
        shutil.copytree(root, other)
        _replace_bytes(sorted((other / "images/test/database").iterdir())[0], 4)
        with pytest.raises(VprkitError, match="has other bytes"):
            extract(other, out, config(), options(scales=(1, 2)), progress=False)

    def test_combine_refuses_files_of_other_bytes(self, root, tmp_path):
        gem = extract(root, tmp_path / "gem.h5", config(), options(), progress=False)
        _replace_bytes(sorted((root / "images/test/database").iterdir())[5], 5)
        vlad = extract(root, tmp_path / "vlad.h5", config("netvlad", clusters=4), options(), progress=False)
        one_line_error(
            cli("combine", gem, vlad, "-o", tmp_path / "c.h5", "--quiet"),
            "were extracted from different images under the same names "
            r"\(1 database images differ",
        )

    def test_merged_shards_keep_the_hashes(self, gem_file, small_root, tmp_path):
        from vprkit.extract.shards import merge
        from vprkit.store import DescriptorFile

        shards = [
            extract(small_root, tmp_path / "g.h5", config(), options(shard=(i, 3)), progress=False)
            for i in range(3)
        ]
        merged = merge(shards, tmp_path / "m.h5", progress=False)
        with DescriptorFile(merged) as m, DescriptorFile(gem_file) as g:
            for role in ("database", "queries"):
                assert np.array_equal(m.hashes(role), g.hashes(role))

    def test_files_from_before_hashes_still_extend_with_a_warning(self, root, tmp_path):
        import h5py

        out = extract(root, tmp_path / "gem.h5", config(), options(), progress=False)
        with h5py.File(out, "r+") as f:
            del f["database/sha256"], f["queries/sha256"]
        assert cli("evaluate", out).exit_code == 0
        with pytest.warns(UserWarning, match="made before vprkit kept image hashes"):
            extract(root, out, config(), options(scales=(1, 2)), progress=False)


class TestLibraryOptionValues:
    """The library refuses what the CLI's ranges refuse, for Python callers."""

    @pytest.mark.parametrize(
        "kw, pattern",
        [
            ({"workers": -1}, "^workers must not be negative, got -1$"),
            ({"seed": -1}, "^seed must not be negative, got -1$"),
            ({"batch_size": 0}, "^batch_size must be at least 1, got 0$"),
        ],
    )
    def test_extract_options(self, small_root, tmp_path, kw, pattern):
        with pytest.raises(VprkitError, match=pattern):
            extract(small_root, tmp_path / "x.h5", config(), options(**kw), progress=False)

    def test_clusters(self, small_root, tmp_path):
        with pytest.raises(VprkitError, match="clusters must be at least 1"):
            extract(small_root, tmp_path / "x.h5", config("netvlad", clusters=0), options(), progress=False)
