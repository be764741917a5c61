"""Hostile run folders for ``vprkit train``: a damaged ``config.json`` or ``last.pth`` on
``--resume``, and an output folder holding files that vprkit did not write.

Each is refused with one line ``Error: ...`` naming the file and the key, before anything in the
run folder changes (every file byte-identical afterwards), never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import guarded, interrupt_training_at

from vprkit.cli import main
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import ParameterError
from vprkit.models import ModelConfig
from vprkit.train import TrainConfig, train

SIZE = (32, 40)
NEW_RUN = [
    "--weights",
    "none",
    "--resize",
    *map(str, SIZE),
    "--workers",
    "0",
    "--device",
    "cpu",
    "--quiet",
    "--queries-per-epoch",
    "4",
    "--cache-refresh",
    "2",
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
DELETE = object()  # the key is removed
# the keys of config.json in the first vprkit runs (before --l2, recipes, --amp, ...)
FIRST_KEYS = (
    "root",
    "backbone",
    "aggregation",
    "clusters",
    "weights",
    "checkpoint",
    "resize",
    "train_split",
    "val_split",
    "mining",
    "negatives",
    "neg_samples",
    "margin",
    "queries_per_epoch",
    "cache_refresh",
    "batch_size",
    "infer_batch_size",
    "epochs",
    "patience",
    "optimizer",
    "lr",
    "weight_decay",
    "scheduler",
    "augment",
    "recalls",
    "seed",
    "workers",
    "device",
)


def first_version(stored: dict) -> dict:
    """A config.json of the first vprkit runs: the model's fields flat, FIRST_KEYS only."""
    flat = {**stored, **stored["model"]}
    return {k: flat.get(k) for k in FIRST_KEYS}


def small_config(root: Path) -> TrainConfig:
    return TrainConfig(
        root=str(root),
        model=ModelConfig(weights="none"),
        resize=SIZE,
        queries_per_epoch=4,
        cache_refresh=2,
        batch_size=2,
        negatives=2,
        neg_samples=8,
        epochs=1,
        infer_batch_size=8,
        workers=0,
        device="cpu",
        lr=1e-3,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("data"), {"train": (20, 10), "val": (16, 8)}, size=SIZE, seed=7
    )


def interrupted_run(root: Path, folder: Path, call: int) -> Path:
    """A real run stopped (Ctrl-C) at its ``call``-th batch of triplet steps."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        interrupt_training_at(monkeypatch, call)
        with pytest.raises(KeyboardInterrupt):
            train(small_config(root), folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def stopped_run(root, tmp_path_factory) -> Path:
    """A run stopped after its first cache refresh (of 2): last.pth at epoch 0, refresh 1."""
    run = interrupted_run(root, tmp_path_factory.mktemp("stopped") / "run", 2)
    assert torch.load(run / "last.pth", weights_only=True)["state"]["refresh"] == 1
    return run


@pytest.fixture(scope="module")
def stale_run(root, tmp_path_factory) -> Path:
    """A run stopped before its first checkpoint: config.json, train.log, metrics.jsonl."""
    run = interrupted_run(root, tmp_path_factory.mktemp("stale") / "run", 1)
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "train.log"]
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry of ``folder`` with its bytes (None: a folder)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def assert_refused(args, folder: Path, *fragments: str) -> str:
    """``vprkit ARGS`` exits 1 with exactly one line ``Error: ...`` holding ``fragments``, and
    ``folder`` is byte-identical afterwards."""
    before = snapshot(folder)
    code, output = cli(*args)
    lines = output.splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert snapshot(folder) == before, "the run folder changed"
    return lines[0]


def edit_config(run: Path, key: str, value) -> None:
    """Set (or with DELETE remove) ``key`` of config.json; ``model.clusters``: inside "model"."""
    stored = json.loads((run / "config.json").read_text())
    where, _, name = key.rpartition(".")
    held = stored[where] if where else stored
    if value is DELETE:
        del held[name]
    else:
        held[name] = value
    (run / "config.json").write_text(json.dumps(stored, indent=2) + "\n")


def edit_last(run: Path, change) -> None:
    data = torch.load(run / "last.pth", weights_only=True)
    change(data)
    torch.save(data, run / "last.pth")


def top(**values):
    """A change of last.pth: these top-level values."""
    return lambda data: data.update(values)


def state(**values):
    """A change of last.pth: these values of its progress ('state')."""
    return lambda data: data["state"].update(values)


class TestResumeConfig:
    """Every field of a stored config.json is checked on --resume: type, range, choices."""

    @pytest.mark.parametrize(
        "key, value",
        [
            ("batch_size", 0),
            ("cache_refresh", 0),
            ("epochs", "x"),
            ("lr", math.nan),
            ("lr", math.inf),
            ("lr", -1e-3),
            ("lr", "0.001"),
            ("workers", -3),
            ("workers", 1.5),
            ("workers", True),
            ("negatives", True),
            ("neg_samples", None),
            ("margin", 0),
            ("margin", "0.1"),
            ("infer_batch_size", [8]),
            ("patience", -1),
            ("epochs", 2.0),
            ("queries_per_epoch", 10**6),
            ("cache_refresh", 5),
            ("neg_samples", 10**6),
            ("negatives", 10**6),
            ("workers", 10**6),
            ("optimizer", "rmsprop"),
            ("scheduler", 3),
            ("mining", "smart"),
            ("weight_decay", -0.1),
            ("weight_decay", math.nan),
            ("augment", "night:M1"),
            ("augment", ["night:M9"]),
            ("augment", [1]),
            ("recalls", []),
            ("recalls", [0, 5]),
            ("recalls", "1"),
            ("recalls", [1, True]),
            ("seed", -1),
            ("seed", 2**64),
            ("seed", "0"),
            ("resize", [0, 10]),
            ("resize", [32]),
            ("resize", "32x40"),
            ("resize", [32.5, 40]),
            ("device", 7),
            ("device", "gpu"),
            ("amp", "yes"),
            ("channels_last", 1),
            ("recipe", "fast"),
            ("recipe", 1),
            ("root", 5),
            ("root", ""),
            ("model.backbone", "resnet7"),
            ("model.aggregation", 1),
            ("model.clusters", 0),
            ("model.clusters", "64"),
            ("model.l2", "sideways"),
            ("model.fc_output_dim", 0),
            ("model.fc_output_dim", 1.5),
            ("model.weights", 3),
            ("model.weights", ""),
            ("model.checkpoint", 5),
            ("model", "gem"),
            ("model", DELETE),
            ("backbone", "gem"),
            ("train_split", "../x"),
            ("val_split", 5),
            ("format", "other"),
            ("batch_size", DELETE),
            ("lr", DELETE),
            ("root", DELETE),
        ],
    )
    def test_one_line_naming_the_key(self, stopped_run, tmp_path, key, value):
        run = copy_of(stopped_run, tmp_path)
        edit_config(run, key, value)
        assert_refused(["train", "--resume", run, "--quiet"], run, f"{run}/config.json", f"'{key}'")

    def test_the_message(self, stopped_run, tmp_path):
        run = copy_of(stopped_run, tmp_path)
        edit_config(run, "batch_size", 0)
        line = assert_refused(["train", "--resume", run, "--quiet"], run)
        assert line == f"Error: {run}/config.json: 'batch_size' is 0; expected an integer >= 1"

    @pytest.mark.parametrize(
        "text",
        [
            "[1, 2]",
            "{nope",
            '{"hello": 1}',
            "[" * 100000,
            '{"batch_size": 1' + "0" * 5000 + "}",
            " " * (2 << 20),
        ],
        ids=["a-list", "not-json", "other-keys", "deeply-nested", "a-5000-digit-number", "over-a-mebibyte"],
    )
    def test_not_a_config(self, stopped_run, tmp_path, text):
        run = copy_of(stopped_run, tmp_path)
        (run / "config.json").write_text(text)
        assert_refused(["train", "--resume", run, "--quiet"], run, f"{run}/config.json")

    def test_a_pipe_named_config_json_is_refused_without_waiting(self, stopped_run, tmp_path):
        run = copy_of(stopped_run, tmp_path)
        (run / "config.json").unlink()
        os.mkfifo(run / "config.json")
        with guarded():  # a read that waits for a writer fails the test instead of hanging
            assert_refused(["train", "--resume", run, "--quiet"], run, f"{run}/config.json", "named pipe")

    def test_library_callers_get_the_same_checks(self, root):
        for kw in (
            {"batch_size": True},
            {"epochs": "x"},
            {"workers": 1.5},
            {"seed": 2**64},
            {"resize": (32,)},
            {"augment": "night:M1"},
            {"device": 7},
            {"lr": "1"},
        ):
            with pytest.raises(ParameterError) as err:
                dataclasses.replace(small_config(root), **kw).check()
            assert "\n" not in str(err.value), err.value
            name = next(iter(kw))  # the parameter (the CLI shows its option)
            assert err.value.parameter == name and name in str(err.value), err.value
            assert "--" not in str(err.value), err.value


class TestResumeState:
    """last.pth: state dicts, RNG states and progress of the right types and ranges."""

    @pytest.mark.parametrize(
        "change, key",
        [
            pytest.param(top(rng_torch="abc"), "rng_torch", id="rng_torch-a-string"),
            pytest.param(top(rng_torch=torch.zeros(5056)), "rng_torch", id="rng_torch-float"),
            pytest.param(top(rng_torch=torch.zeros(7, dtype=torch.uint8)), "rng_torch", id="rng_torch-short"),
            pytest.param(top(rng_numpy="abc"), "rng_numpy", id="rng_numpy-a-string"),
            pytest.param(
                lambda d: d["rng_numpy"].update(bit_generator="MT19937"),
                "rng_numpy",
                id="rng_numpy-other-generator",
            ),
            pytest.param(
                lambda d: d["rng_numpy"]["state"].update(state="1"), "rng_numpy", id="rng_numpy-string-state"
            ),
            pytest.param(
                lambda d: d["rng_numpy"].update(has_uint32=7), "rng_numpy", id="rng_numpy-has_uint32"
            ),
            pytest.param(top(rng_torch_ranks="abc"), "rng_torch_ranks", id="rng_torch_ranks-a-string"),
            pytest.param(
                top(rng_torch_ranks=[torch.zeros(3)]), "rng_torch_ranks", id="rng_torch_ranks-float"
            ),
            pytest.param(
                lambda d: d.update(model_state_dict=list(d["model_state_dict"].values())),
                "model_state_dict",
                id="model_state_dict-a-list",
            ),
            pytest.param(
                lambda d: d.update(model_state_dict={k: "x" for k in d["model_state_dict"]}),
                "model_state_dict",
                id="model_state_dict-strings",
            ),
            pytest.param(top(optimizer_state_dict=[]), "optimizer_state_dict", id="optimizer-a-list"),
            pytest.param(
                lambda d: d["optimizer_state_dict"].pop("param_groups"),
                "optimizer_state_dict",
                id="optimizer-no-param_groups",
            ),
            pytest.param(
                lambda d: d["optimizer_state_dict"]["param_groups"][0].update(lr="x"),
                "optimizer_state_dict",
                id="optimizer-lr-string",
            ),
            pytest.param(
                lambda d: d["optimizer_state_dict"]["param_groups"][0].update(lr=math.nan),
                "optimizer_state_dict",
                id="optimizer-lr-nan",
            ),
            pytest.param(
                lambda d: d["optimizer_state_dict"].update(state="x"),
                "optimizer_state_dict",
                id="optimizer-state-string",
            ),
            pytest.param(top(scheduler_state_dict="x"), "scheduler_state_dict", id="scheduler-a-string"),
            pytest.param(top(scaler_state_dict="x"), "scaler_state_dict", id="scaler-a-string"),
            pytest.param(lambda d: d.update(state=list(d["state"].items())), "state", id="state-a-list"),
            pytest.param(state(epoch=1.5), "epoch", id="epoch-1.5"),
            pytest.param(state(epoch="1"), "epoch", id="epoch-string"),
            pytest.param(state(epoch=True), "epoch", id="epoch-True"),
            pytest.param(state(epoch=-1), "epoch", id="epoch-negative"),
            pytest.param(state(epoch=5), "epoch", id="epoch-beyond-epochs"),
            pytest.param(state(refresh="0"), "refresh", id="refresh-string"),
            pytest.param(state(refresh=3), "refresh", id="refresh-beyond-refreshes"),
            pytest.param(state(best_r5=math.nan), "best_r5", id="best_r5-nan"),
            pytest.param(state(best_r5="x"), "best_r5", id="best_r5-string"),
            pytest.param(state(not_improved=-1), "not_improved", id="not_improved-negative"),
            pytest.param(state(not_improved=0.5), "not_improved", id="not_improved-float"),
            pytest.param(state(neg_cache="x"), "neg_cache", id="neg_cache-string"),
            pytest.param(state(neg_cache={0: "x"}), "neg_cache", id="neg_cache-value-string"),
            pytest.param(
                state(neg_cache={0: torch.tensor([10**6])}), "neg_cache", id="neg_cache-out-of-range"
            ),
            pytest.param(state(neg_cache={0: torch.tensor([0.5])}), "neg_cache", id="neg_cache-float"),
            pytest.param(state(neg_cache={"a": torch.tensor([1])}), "neg_cache", id="neg_cache-string-key"),
            pytest.param(state(dataset="x"), "dataset", id="dataset-string"),
            pytest.param(lambda d: d["state"].pop("epoch"), "epoch", id="missing-epoch"),
            pytest.param(lambda d: d["state"].pop("best_r5"), "best_r5", id="missing-best_r5"),
            pytest.param(lambda d: d.pop("rng_torch"), "rng_torch", id="missing-rng_torch"),
            pytest.param(lambda d: d.pop("state"), "state", id="missing-state"),
            pytest.param(top(world_size="2"), "world_size", id="world_size-string"),
            pytest.param(top(world_size=0), "world_size", id="world_size-0"),
        ],
    )
    def test_one_line_naming_the_key(self, stopped_run, tmp_path, change, key):
        run = copy_of(stopped_run, tmp_path)
        edit_last(run, change)
        assert_refused(["train", "--resume", run, "--quiet"], run, f"{run}/last.pth", key)

    def test_the_message(self, stopped_run, tmp_path):
        run = copy_of(stopped_run, tmp_path)
        edit_last(run, lambda d: d["state"].update(epoch=1.5))
        line = assert_refused(["train", "--resume", run, "--quiet"], run)
        assert line == (
            f"Error: {run}/last.pth: 'state.epoch' is 1.5; expected an integer from 0 to 1 (the run's epochs)"
        )

    def test_a_state_dict_of_another_model_changes_nothing(self, stopped_run, tmp_path):
        run = copy_of(stopped_run, tmp_path)
        edit_last(run, lambda d: d["model_state_dict"].pop(next(iter(d["model_state_dict"]))))
        assert_refused(
            ["train", "--resume", run, "--quiet"], run, "last.pth", "does not fit this run's config"
        )

    def test_a_partial_log_line_is_kept_when_the_resume_is_refused(self, stopped_run, tmp_path):
        run = copy_of(stopped_run, tmp_path)
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"epoch": 1, "refresh": 2, "lo')
        edit_last(run, lambda d: d["state"].update(epoch="1"))
        assert_refused(["train", "--resume", run, "--quiet"], run, "last.pth", "epoch")


@pytest.fixture(
    scope="module", params=[("cosine", "asgd"), ("plateau", "sgd")], ids=["cosine-asgd", "plateau-sgd"]
)
def scheduled_run(request, root, tmp_path_factory) -> Path:
    """A stopped run with a scheduler (its state dict in last.pth)."""
    scheduler, optimizer = request.param
    run = tmp_path_factory.mktemp(scheduler) / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        interrupt_training_at(monkeypatch, 2)
        with pytest.raises(KeyboardInterrupt):
            train(
                dataclasses.replace(
                    small_config(root), scheduler=scheduler, optimizer=optimizer, weight_decay=0.01
                ),
                run,
                progress=False,
            )
    return run


class TestResumeScheduler:
    def test_resumes(self, scheduled_run, tmp_path):
        run = copy_of(scheduled_run, tmp_path)
        code, output = cli("train", "--resume", run, "--quiet")
        assert code == 0, output

    @pytest.mark.parametrize(
        "change, key",
        [
            pytest.param(
                lambda s: s.update(optimizer=None),
                "scheduler_state_dict.optimizer",
                id="an-attribute-it-lacks",
            ),
            pytest.param(
                lambda s: s.update(last_epoch="3"), "scheduler_state_dict.last_epoch", id="last_epoch-string"
            ),
            pytest.param(
                lambda s: s.update(last_epoch=-5), "scheduler_state_dict.last_epoch", id="last_epoch-negative"
            ),
            pytest.param(
                lambda s: s.update(_last_lr=[1.0, 2.0]), "scheduler_state_dict._last_lr", id="_last_lr-two"
            ),
            pytest.param(
                lambda s: s.update(T_max=0) if "T_max" in s else s.update(factor=0.0),
                "scheduler_state_dict.",
                id="T_max-or-factor",
            ),
        ],
    )
    def test_one_line_naming_the_key(self, scheduled_run, tmp_path, change, key):
        run = copy_of(scheduled_run, tmp_path)
        edit_last(run, lambda d: change(d["scheduler_state_dict"]))
        assert_refused(["train", "--resume", run, "--quiet"], run, f"{run}/last.pth", key)

    def test_an_optimizer_tensor_of_another_shape(self, scheduled_run, tmp_path):
        run = copy_of(scheduled_run, tmp_path)

        def change(data):
            entry = next(iter(data["optimizer_state_dict"]["state"].values()))
            name = next(k for k, v in entry.items() if v.dim() > 0)
            entry[name] = torch.zeros(3)

        edit_last(run, change)
        assert_refused(
            ["train", "--resume", run, "--quiet"], run, f"{run}/last.pth", "'optimizer_state_dict.state["
        )


class TestGenuineRunsResume:
    """What vprkit wrote, now or in its first versions, still resumes."""

    def test_an_untouched_copy(self, stopped_run, tmp_path):
        run = copy_of(stopped_run, tmp_path)
        code, output = cli("train", "--resume", run, "--quiet")
        assert code == 0, output
        assert torch.load(run / "last.pth", weights_only=True)["state"]["epoch"] == 1

    def test_a_run_of_the_first_versions(self, stopped_run, tmp_path):
        run = copy_of(stopped_run, tmp_path)
        stored = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(first_version(stored), indent=2))

        def old(data):
            for key in ("world_size", "model_config", "train_config"):
                data.pop(key, None)
            data["state"].pop("dataset")

        edit_last(run, old)
        code, output = cli("train", "--resume", run, "--quiet")
        assert code == 0, output


class TestForeignOutputFolder:
    """train -o DIR never deletes nor overwrites a file that vprkit did not write."""

    @pytest.mark.parametrize(
        "files, named",
        [
            ({"config.json": '{"hello": 1}', "train.log": "my notes"}, "config.json"),
            ({"train.log": "my notes\n"}, "train.log"),
            ({"train.log": ""}, "train.log"),
            ({"metrics.jsonl": "1,2,3\n"}, "metrics.jsonl"),
            ({"config.json": "[]"}, "config.json"),
            ({"config.json": "not json at all"}, "config.json"),
            ({"best.pth": "my weights"}, "best.pth"),
            ({"curves.png": "my picture"}, "curves.png"),
        ],
    )
    def test_refused_and_kept(self, root, tmp_path, files, named):
        out = tmp_path / "mine"
        out.mkdir()
        for name, text in files.items():
            (out / name).write_text(text)
        line = assert_refused(["train", root, "-o", out, *NEW_RUN], out, str(out), named)
        assert "vprkit did not write" in line or "without last.pth" in line, line
        assert not (out / "last.pth").exists()

    def test_the_message(self, root, tmp_path):
        out = tmp_path / "mine"
        out.mkdir()
        (out / "config.json").write_text('{"hello": 1}')
        (out / "train.log").write_text("my notes")
        line = assert_refused(["train", root, "-o", out, *NEW_RUN], out)
        assert line == (
            f"Error: {out} holds config.json that vprkit did not write; choose "
            "another output folder or remove it"
        )

    def test_a_config_of_other_keys(self, stale_run, tmp_path, root):
        """Almost a vprkit config: an extra key, a missing one, or a value vprkit never writes."""
        for change in ({"colour": "red"}, {"lr": DELETE}, {"batch_size": 0}):
            out = copy_of(stale_run, tmp_path / str(len(list(tmp_path.iterdir()))))
            [(key, value)] = change.items()
            edit_config(out, key, value)
            assert_refused(
                ["train", root, "-o", out, *NEW_RUN], out, str(out), "config.json", "vprkit did not write"
            )

    def test_vprkit_config_with_a_foreign_log(self, stale_run, tmp_path, root):
        out = copy_of(stale_run, tmp_path)
        (out / "train.log").write_text("my notes\n" + (out / "train.log").read_text())
        assert_refused(["train", root, "-o", out, *NEW_RUN], out, "train.log", "vprkit did not write")

    def test_a_bad_option_leaves_a_stale_run_as_it_is(self, stale_run, tmp_path, root):
        out = copy_of(stale_run, tmp_path)
        assert_refused(["train", root, "-o", out, *NEW_RUN, "--lr", "nan"], out, "--lr")


class TestStaleVprkitRun:
    """A vprkit run stopped before its first checkpoint is started again, as before."""

    def test_started_again(self, stale_run, tmp_path, root):
        out = copy_of(stale_run, tmp_path)
        code, output = cli("train", root, "-o", out, *NEW_RUN)
        assert code == 0, output
        assert (out / "last.pth").is_file() and (out / "best.pth").is_file()
        assert json.loads((out / "config.json").read_text())["queries_per_epoch"] == 4
        log = (out / "train.log").read_text()
        assert log.count("untrained model: validation") == 1  # the stale log was replaced

    def test_a_stale_run_of_the_first_versions(self, stale_run, tmp_path, root):
        out = copy_of(stale_run, tmp_path)
        stored = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps(first_version(stored), indent=2))
        code, output = cli("train", root, "-o", out, *NEW_RUN)
        assert code == 0, output
        assert (out / "last.pth").is_file()

    def test_new_config_json_is_marked(self, stale_run):
        stored = json.loads((stale_run / "config.json").read_text())
        assert stored["format"] == "vprkit.train"
        assert TrainConfig.load(stale_run / "config.json").queries_per_epoch == 4
