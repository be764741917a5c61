"""The command line as a user meets it: help, errors in one line, JSON, the demo."""

from __future__ import annotations

import json

import click
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SIZE

from vprkit import __version__
from vprkit.cli import main
from vprkit.data.synthetic import generate_dataset

RESIZE = ["--resize", str(SIZE[0]), str(SIZE[1])]
FAST = ["--weights", "none", *RESIZE, "--workers", "0", "--quiet", "--device", "cpu"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, pattern: str):
    assert result.exit_code != 0
    text = result.output
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    import re

    assert re.search(pattern, errors[0]), errors[0]


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*prefix, name))


class TestHelp:
    def test_lists_every_command(self):
        out = run("--help").output
        for name in ("extract", "evaluate", "info", "dataset", "demo"):
            assert name in out

    def test_every_option_has_help(self):
        for path, cmd in all_commands(main):
            assert cmd.help, path
            for param in cmd.params:
                if isinstance(param, click.Option):
                    assert param.help, (path, param.name)
                    has_default = (
                        param.show_default or "[default:" in param.help or param.is_flag or param.required
                    )
                    assert has_default, (path, param.name)

    def test_version(self):
        assert __version__ in run("--version").output


class TestErrors:
    def test_missing_root(self, tmp_path):
        assert_one_line_error(
            run("extract", tmp_path / "nope", "-o", tmp_path / "x.h5", *FAST), "does not exist"
        )

    def test_empty_split(self, tmp_path):
        (tmp_path / "images/test/database").mkdir(parents=True)
        (tmp_path / "images/test/queries").mkdir(parents=True)
        assert_one_line_error(run("extract", tmp_path, "-o", tmp_path / "x.h5", *FAST), "no images")

    def test_unparsable_name(self, tmp_path):
        root = generate_dataset(tmp_path / "d", {"test": (3, 2)}, size=(32, 40))
        (root / "images/test/queries/IMG_0001.jpg").write_bytes(b"")
        assert_one_line_error(run("extract", root, "-o", tmp_path / "x.h5", *FAST), "IMG_0001.jpg")

    def test_corrupt_image(self, tmp_path):
        root = generate_dataset(tmp_path / "d", {"test": (3, 2)}, size=(32, 40))
        victim = sorted((root / "images/test/queries").iterdir())[0]
        victim.write_bytes(b"garbage")
        result = run("extract", root, "-o", tmp_path / "x.h5", *FAST)
        assert_one_line_error(result, f"cannot read image .*{victim.name}")
        assert not (tmp_path / "x.h5").exists()

    def test_unknown_scale(self, gem_file):
        assert_one_line_error(run("evaluate", gem_file, "--scale", "1+4"), "scale 4 is not in")

    def test_bad_scale_text(self, gem_file):
        assert_one_line_error(run("evaluate", gem_file, "--scale", "x"), "bad scale list")

    def test_not_a_descriptor_file(self, tmp_path):
        with h5py.File(tmp_path / "other.h5", "w") as f:
            f["data"] = np.ones(3)
        assert_one_line_error(run("evaluate", tmp_path / "other.h5"), "not a vprkit descriptor")
        (tmp_path / "x.txt").write_text("hi")
        assert_one_line_error(run("info", tmp_path / "x.txt"), "not an HDF5 file")

    def test_unknown_backbone(self, small_root, tmp_path):
        assert_one_line_error(
            run("extract", small_root, "-o", tmp_path / "x.h5", "--backbone", "resnet34", *FAST),
            "unknown backbone 'resnet34'",
        )

    def test_imagenet_weights_offline_or_bad_path(self, small_root, tmp_path):
        result = run(
            "extract",
            small_root,
            "-o",
            tmp_path / "x.h5",
            "--weights",
            tmp_path / "missing.pth",
            *RESIZE,
            "--quiet",
        )
        assert_one_line_error(result, "weights file .*missing.pth does not exist")


class TestWorkflow:
    def test_extract_evaluate_json_and_info(self, small_root, tmp_path):
        out = tmp_path / "g.h5"
        result = run("extract", small_root, "-o", out, "--scales", "1,2", *FAST)
        assert result.exit_code == 0, result.output
        result = run("evaluate", out, "--scale", "1", "--scale", "1+2", "--json", "-")
        rows = json.loads(result.output)
        assert [r["scale"] for r in rows] == ["1", "1+2"]
        assert set(rows[0]["recalls"]) == {"1", "5", "10", "20"}
        assert rows[0]["queries_without_positives"] == 2
        table = run("evaluate", out, "--json", tmp_path / "r.json")
        assert "R@1" in table.output and json.loads((tmp_path / "r.json").read_text())
        info = json.loads(run("info", out, "--json").output)
        assert info["scales"] == [1, 2] and info["dim"] == 256 and info["complete"]

    def test_evaluate_every_scale_and_pyramid_with_the_model_deleted(self, small_root, tmp_path):
        import torch

        from vprkit.models import ModelConfig, VPRModel, save_checkpoint

        torch.manual_seed(0)
        ckpt = save_checkpoint(
            VPRModel(ModelConfig(aggregation="netvlad", weights="none", clusters=8)), tmp_path / "model.pth"
        )
        out = tmp_path / "n.h5"
        result = run(
            "extract",
            small_root,
            "-o",
            out,
            "--checkpoint",
            ckpt,
            "--scales",
            "1,2,3",
            *RESIZE,
            "--workers",
            "0",
            "--quiet",
        )
        assert result.exit_code == 0, result.output
        ckpt.unlink()
        specs = ["1", "2", "3", "1+2", "1+2+3"]
        result = run("evaluate", out, *[a for s in specs for a in ("--scale", s)], "--json", "-")
        assert [r["scale"] for r in json.loads(result.output)] == specs
        assert json.loads(run("info", out, "--json").output)["model"]["checkpoint"].endswith("model.pth")

    def test_dataset_info(self, small_root):
        rows = json.loads(run("dataset", "info", small_root, "--json").output)
        assert {(r["split"], r["role"], r["images"]) for r in rows} >= {("test", "database", 24)}
        assert "queries" in run("dataset", "info", small_root).output

    def test_predictions_need_single_file(self, gem_file, tmp_path):
        assert_one_line_error(
            run("evaluate", gem_file, gem_file, "--predictions", tmp_path / "p.csv"), "single file"
        )


@pytest.mark.slow
def test_demo_runs_and_prints_a_table(tmp_path):
    result = run("demo", "--out", tmp_path / "demo", "--scales", "1,2", "--quiet")
    assert result.exit_code == 0, result.output
    for name in ("gem.h5", "netvlad.h5", "gem_trained.h5", "concat.h5", "pca.h5", "1+2"):
        assert name in result.output, name
    assert (tmp_path / "demo/runs/gem/curves.png").exists()


def test_train_option_defaults_are_trainconfig_defaults():
    """The CLI repeats TrainConfig's defaults (to keep `vprkit --help` free of torch): same values."""
    import dataclasses

    from vprkit.train import TrainConfig

    fields = {
        f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING
    }
    command = main.commands["train"]
    options = {p.name: p.get_default(click.Context(command)) for p in command.params}
    shared = sorted(set(options) & set(fields) - {"augment", "checkpoint"})
    assert len(shared) >= 20
    for name in shared:
        value = tuple(options[name]) if name == "resize" else options[name]
        assert value == fields[name], name


def test_extract_option_defaults_are_extractoptions_defaults():
    from vprkit.extract.split import ExtractOptions

    defaults = ExtractOptions()
    command = main.commands["extract"]
    ctx = click.Context(command)
    options = {p.name: p.get_default(ctx) for p in command.params}
    for name in (
        "split",
        "batch_size",
        "workers",
        "device",
        "half",
        "dtype",
        "seed",
        "cluster_split",
        "skip_unparsable",
        "overwrite",
    ):
        assert options[name] == getattr(defaults, name), name
    assert tuple(int(s) for s in options["scales"].split(",")) == defaults.scales
    assert options["resize"] is None and defaults.resize == (480, 640)  # None: see image_size_for


def test_cli_imports_no_torch():
    """``vprkit --help`` and the choices it lists (backbones, aggregations, recipes) need no torch."""
    import subprocess
    import sys

    code = (
        "import sys, vprkit.cli; "
        "print(','.join(m for m in ('torch', 'torchvision', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import vprkit.cli imported {out.stdout.strip()}"


class TestVocabulary:
    """One vocabulary across commands (issue: a CLI and a Python API that feel like one tool)."""

    def test_choices_equal_the_registries(self):
        from vprkit import choices
        from vprkit.data.datasets import SPLITS
        from vprkit.models import AGGREGATIONS, BACKBONES
        from vprkit.train.augment import PRESETS

        assert choices.BACKBONES == tuple(BACKBONES) and choices.AGGREGATIONS == tuple(AGGREGATIONS)
        assert choices.SPLITS == SPLITS and set(choices.AUGMENT_PRESETS) == set(PRESETS)

    def test_every_command_takes_json_and_writers_take_output(self):
        writers = {
            ("extract",),
            ("merge",),
            ("combine",),
            ("train",),
            ("report",),
            ("demo",),
            ("evaluate",),
            ("info",),
            ("dataset", "info"),  # these three: their JSON
            ("dataset", "import"),
        }  # -o ROOT, as an alternative to the ROOT argument
        for path, cmd in all_commands(main):
            if isinstance(cmd, click.Group):
                continue
            names = {opt for p in cmd.params if isinstance(p, click.Option) for opt in p.opts}
            assert "--json" in names, path
            if path in writers:
                assert {"-o", "--output"} <= names, path

    def test_closed_sets_list_their_choices_in_help(self):
        text = run("extract", "--help").output
        for name in ("resnet18conv4", "efficientnet_lite0", "netvlad", "train|val|test"):
            assert name in text, name
        assert "night:M1" in run("train", "--help").output

    def test_out_is_a_deprecated_alias(self, tmp_path):
        result = CliRunner().invoke(
            main,
            ["demo", "--out", str(tmp_path / "d"), "--no-train", "--scales", "1", "--quiet", "--json", "-"],
        )
        assert result.exit_code == 0, result.output
        assert "--out is deprecated" in result.output and (tmp_path / "d" / "gem.h5").is_file()

    def test_json_path_or_stdout_for_info(self, gem_file, tmp_path):
        alone = json.loads(run("info", gem_file, "--json", "-").output)
        assert json.loads(run("info", gem_file, "--json").output) == alone
        assert json.loads(run("info", gem_file, "-o", "-").output) == alone
        run("evaluate", gem_file, "-o", tmp_path / "e.json")
        assert json.loads((tmp_path / "e.json").read_text())[0]["scale"] == "1"
        result = run("info", gem_file, "--json", tmp_path / "i.json")
        assert "scales" in result.output and json.loads((tmp_path / "i.json").read_text()) == alone

    def test_predictions_to_stdout(self, gem_file):
        result = run("evaluate", gem_file, "--predictions", "-")
        lines = result.output.splitlines()
        assert lines[0] == "query,rank,database,distance,metres,positive,method,top1_metres"
        assert len(lines) == 1 + 12 * 20 and "Recall@N" not in result.output
        assert run("evaluate", gem_file, "--predictions", "-", "--json", "-").exit_code == 1

    def test_part_weights_and_the_old_name(self, gem_file, netvlad_file, tmp_path):
        new = run(
            "combine",
            gem_file,
            netvlad_file,
            "-o",
            tmp_path / "a.h5",
            "--part-weights",
            "2,1",
            "--quiet",
            "--json",
            "-",
        )
        old = CliRunner().invoke(
            main,
            [
                "combine",
                str(gem_file),
                str(netvlad_file),
                "-o",
                str(tmp_path / "b.h5"),
                "--weights",
                "2,1",
                "--quiet",
            ],
        )
        assert new.exit_code == 0 and json.loads(new.output)["model"]["weights"] == [2.0, 1.0]
        assert old.exit_code == 0 and "deprecated" in old.output

    def test_dataset_sizes_are_h_by_w(self, small_root):
        rows = json.loads(run("dataset", "info", small_root, "--json").output)
        assert rows[0]["sizes"] == {f"{SIZE[0]}x{SIZE[1]}": rows[0]["images"]}
        assert "image sizes (H x W)" in run("dataset", "info", small_root).output


class TestCheckpointPreprocessing:
    """A vprkit checkpoint's training size is the default size of extract."""

    @pytest.fixture(scope="class")
    @classmethod
    def native_run(cls, tmp_path_factory):
        root = generate_dataset(
            tmp_path_factory.mktemp("native"),
            {"train": (20, 10), "val": (16, 8), "test": (16, 8)},
            size=(32, 40),
            seed=3,
        )
        run_dir = root.parent / "run"
        result = run(
            "train",
            root,
            "-o",
            run_dir,
            "--native-size",
            "--weights",
            "none",
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
            "--workers",
            "0",
            "--device",
            "cpu",
            "--quiet",
        )
        assert result.exit_code == 0, result.output
        return root, run_dir / "best.pth"

    def test_native_size_run_extracts_at_native_size(self, native_run, tmp_path):
        root, best = native_run
        result = run(
            "extract", root, "-o", tmp_path / "f.h5", "--checkpoint", best, "--workers", "0", "--quiet"
        )
        said = " ".join(result.output.split())
        assert result.exit_code == 0 and "extracting at the images' native size, the size" in said
        info = run("info", tmp_path / "f.h5")
        assert "resize=native" in info.output
        assert json.loads(run("info", tmp_path / "f.h5", "--json").output)["preprocessing"]["resize"] is None

    def test_another_size_asked_for_is_allowed_with_a_note(self, native_run, tmp_path):
        root, best = native_run
        result = run(
            "extract",
            root,
            "-o",
            tmp_path / "f.h5",
            "--checkpoint",
            best,
            "--resize",
            "64",
            "80",
            "--workers",
            "0",
            "--quiet",
            "--json",
            "-",
        )
        assert result.exit_code == 0
        assert "was trained at the images' native size; extracting at 64x80" in " ".join(
            result.output.split()
        )
        assert json.loads(result.output[result.output.index("{") :])["preprocessing"]["resize"] == [64, 80]

    def test_both_sizes_refused(self, native_run, tmp_path):
        root, best = native_run
        assert_one_line_error(
            run("extract", root, "-o", tmp_path / "f.h5", "--native-size", "--resize", "4", "4"), "not both"
        )


@pytest.mark.parametrize(
    "command, function, names",
    [
        ("evaluate", "vprkit.evaluate.evaluation:evaluate_file", ("threshold", "nprobe", "block_rows")),
        ("combine", "vprkit.ensemble.combining:combine", ("pca", "whiten", "block_rows", "overwrite")),
        ("merge", "vprkit.extract.shards:merge", ("overwrite",)),
    ],
)
def test_option_defaults_are_the_library_defaults(command, function, names):
    """Each command's option defaults equal its library function's (one source of defaults)."""
    import importlib
    import inspect

    module, name = function.split(":")
    signature = inspect.signature(getattr(importlib.import_module(module), name))
    cmd = main.commands[command]
    options = {p.name: p.get_default(click.Context(cmd)) for p in cmd.params}
    for option in names:
        assert options[option] == signature.parameters[option].default, (command, option)
    if command == "evaluate":
        from vprkit.evaluate.evaluation import DEFAULT_RECALLS

        assert tuple(int(n) for n in options["recalls"].split(",")) == DEFAULT_RECALLS
        assert signature.parameters["recalls"].default == DEFAULT_RECALLS
