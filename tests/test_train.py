"""Training: presets, mining, loss, a step that learns, resume equivalence, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from click.testing import CliRunner
from helpers import flat_config, interrupt_training_at

from vprkit.cli import main
from vprkit.data.datasets import load_split
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.models import ModelConfig, VPRModel, load_model_from_checkpoint
from vprkit.train import (
    TrainConfig,
    TripletSource,
    build_preset,
    config_from_recipe,
    mine,
    train,
    triplet_loss,
)

SIZE = (32, 40)


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return generate_dataset(root, {"train": (30, 16), "val": (20, 10)}, size=SIZE, seed=4)


def small_config(root, **kw) -> TrainConfig:
    base = dict(
        root=str(root),
        weights="none",
        resize=SIZE,
        queries_per_epoch=6,
        cache_refresh=3,
        batch_size=2,
        negatives=2,
        neg_samples=10,
        epochs=2,
        infer_batch_size=8,
        workers=0,
        device="cpu",
        lr=1e-3,
    )
    base.update(kw)
    return flat_config(**base)


class TestPresets:
    def test_night_colorjitter_ranges(self):
        m1 = build_preset("night:M1")
        assert isinstance(m1, T.ColorJitter)
        assert m1.brightness == (0.0, 2.0) and m1.contrast == (0.0, 2.0)
        assert m1.saturation == (0.0, 3.0) and m1.hue is None
        m2 = build_preset("night:M2")
        assert m2.brightness == (0.2, 3.0) and m2.saturation == (0.2, 3.0) and m2.hue == (0.0, 0.5)
        m3 = build_preset("night:M3")
        assert m3.brightness == (0.0, 1.0) and m3.hue == (0.0, 0.5)

    @pytest.mark.parametrize("name, factor", [("night:M4", 0.25), ("night:M5", 0.5)])
    def test_functional_brightness(self, name, factor):
        x = torch.rand(3, 8, 8)
        torch.testing.assert_close(build_preset(name)(x), TF.adjust_brightness(x, factor))

    def test_m6_draws_factors_for_every_image(self):
        m6 = build_preset("night:M6")
        x = torch.rand(3, 8, 8)
        torch.manual_seed(0)
        outs = [m6(x) for _ in range(3)]
        assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])

    @pytest.mark.parametrize(
        "name, p, d, fill, pe",
        [
            ("occlusion:M1", 0.33, 0.4, 0.0, 0.33),
            ("occlusion:M2", 0.33, 0.4, 150 / 255, 0.33),
            ("occlusion:M3", 0.33, 0.4, 1.0, 0.33),
            ("occlusion:M4", 0.5, 0.2, 0.0, 0.2),
            ("occlusion:M5", 0.5, 0.2, 150 / 255, 0.2),
            ("occlusion:M6", 0.5, 0.2, 1.0, 0.2),
        ],
    )
    def test_occlusion_parameters(self, name, p, d, fill, pe):
        perspective, erasing = build_preset(name).transforms
        assert perspective.p == p and perspective.distortion_scale == d
        assert perspective.fill == pytest.approx([fill] * 3)
        assert erasing.p == pe and erasing.scale == (0.02, 0.33) and erasing.ratio == (0.3, 3.3)
        assert erasing.value == 0

    def test_unknown(self):
        with pytest.raises(VprkitError, match="unknown augmentation 'night:M7'"):
            build_preset("night:M7")

    def test_list_augments(self):
        out = CliRunner().invoke(main, ["train", "--list-augments"]).output
        assert "night:M6" in out and "occlusion:M3" in out


class TestMining:
    @pytest.fixture
    def source(self, train_root):
        return TripletSource.from_split(load_split(train_root, "train"))

    @staticmethod
    def utm_features(source):
        """Features = coordinates, so feature distance is metric distance."""

        def features(db_idx, q_idx):
            return (
                source.split.database.utm[db_idx].astype(np.float32),
                source.split.queries.utm[q_idx].astype(np.float32),
            )

        return features

    def test_unmapped_queries_dropped(self, source):
        assert source.dropped == 2 and len(source.queries) == 14

    @pytest.mark.parametrize("method", ["partial", "full", "random"])
    def test_positives_within_10m_negatives_outside_25m(self, source, method):
        rng = np.random.default_rng(0)
        groups = mine(source, source.queries[:6], self.utm_features(source), method, 3, 30, rng, {})
        db, q = source.split.database.utm, source.split.queries.utm
        for query, pos, *negs in groups:
            assert np.linalg.norm(db[pos] - q[query]) <= 10
            dists = np.linalg.norm(db[negs] - q[query], axis=1)
            assert (dists > 25).all() and len(set(negs)) == 3

    def test_hardest_first(self, source):
        groups = mine(
            source, source.queries[:6], self.utm_features(source), "full", 3, 30, np.random.default_rng(0), {}
        )
        db, q = source.split.database.utm, source.split.queries.utm
        for query, pos, *negs in groups:
            d = np.linalg.norm(db - q[query], axis=1)
            outside = np.flatnonzero(d > 25)
            expected = outside[np.argsort(d[outside], kind="stable")[:3]]
            assert negs == expected.tolist()
            assert pos == np.argmin(np.where(d <= 10, d, np.inf))

    def test_too_few_negatives(self, source):
        with pytest.raises(VprkitError, match="negative candidates"):
            mine(
                source,
                source.queries[:2],
                self.utm_features(source),
                "full",
                40,
                30,
                np.random.default_rng(0),
                {},
            )


class TestLoss:
    def test_equals_torch_triplet_margin_loss(self):
        feats = torch.randn(2 * 5, 7)
        got = triplet_loss(feats, 2, 3, 0.1)
        f = feats.view(2, 5, 7)
        ref = (
            sum(
                torch.nn.TripletMarginLoss(margin=0.1, reduction="sum")(
                    f[g, 0:1], f[g, 1:2], f[g, 2 + n : 3 + n]
                )
                for g in range(2)
                for n in range(3)
            )
            / 6
        )
        torch.testing.assert_close(got, ref)

    @pytest.mark.parametrize("aggregation", ["gem", "netvlad"])
    def test_steps_lower_the_loss_on_a_fixed_batch(self, aggregation):
        torch.manual_seed(0)
        model = VPRModel(ModelConfig(aggregation=aggregation, weights="none", clusters=4)).train()
        images = torch.randn(2 * 4, 3, 48, 48)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        losses = []
        for _ in range(6):
            loss = triplet_loss(model(images), 2, 2, 0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < losses[0]


class TestRun:
    def test_run_folder_and_extract_from_best(self, train_root, tmp_path):
        run = tmp_path / "run"
        best = train(
            small_config(train_root, aggregation="netvlad", clusters=4, augment=["night:M2", "occlusion:M1"]),
            run,
            progress=False,
        )
        assert best == run / "best.pth" and best.exists() and (run / "last.pth").exists()
        config = json.loads((run / "config.json").read_text())
        assert config["augment"] == ["night:M2", "occlusion:M1"] and config["cache_refresh"] == 3
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows if "val_recalls" in r] == [0, 1, 2]
        assert len([r for r in rows if "loss" in r]) == 4
        assert (run / "curves.png").stat().st_size > 1000 and "epoch 2" in (run / "train.log").read_text()
        model = load_model_from_checkpoint(best)
        assert model.config.aggregation == "netvlad" and model.config.clusters == 4
        out = tmp_path / "e.h5"
        result = CliRunner().invoke(
            main,
            [
                "extract",
                str(train_root),
                "--split",
                "val",
                "-o",
                str(out),
                "--checkpoint",
                str(best),
                "--resize",
                *map(str, SIZE),
                "--workers",
                "0",
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output

    def test_resume_gives_the_same_weights(self, train_root, tmp_path, monkeypatch):
        config = small_config(
            train_root, augment=["occlusion:M4"], scheduler="cosine", optimizer="adamw", weight_decay=0.01
        )
        train(config, tmp_path / "a", progress=False)
        interrupt_training_at(monkeypatch, 3)
        with pytest.raises(KeyboardInterrupt):
            train(
                small_config(
                    train_root,
                    augment=["occlusion:M4"],
                    scheduler="cosine",
                    optimizer="adamw",
                    weight_decay=0.01,
                ),
                tmp_path / "b",
                progress=False,
            )
        monkeypatch.undo()
        train(None, tmp_path / "b", resume=True, progress=False)
        a = torch.load(tmp_path / "a/last.pth", weights_only=True)
        b = torch.load(tmp_path / "b/last.pth", weights_only=True)
        for key, value in a["model_state_dict"].items():
            torch.testing.assert_close(b["model_state_dict"][key], value, rtol=0, atol=0, msg=key)
        assert a["state"]["epoch"] == b["state"]["epoch"] == 2

    def test_sizes_adapt_to_small_datasets(self, train_root, tmp_path):
        train(
            small_config(train_root, queries_per_epoch=500, cache_refresh=100, neg_samples=900, epochs=1),
            tmp_path / "r",
            progress=False,
        )
        config = json.loads((tmp_path / "r/config.json").read_text())
        assert config["queries_per_epoch"] == 14 and config["cache_refresh"] == 14
        assert config["neg_samples"] == 30


class TestRefusals:
    @pytest.mark.parametrize(
        "kw, pattern",
        [
            ({"augment": ["night:M9"]}, "unknown augmentation"),
            ({"optimizer": "rmsprop"}, "unknown optimizer"),
            ({"batch_size": 0}, "^batch_size must be at least 1, got 0$"),
            ({"lr": 0}, "^lr and margin must be positive"),
        ],
    )
    def test_bad_options(self, train_root, tmp_path, kw, pattern):
        with pytest.raises(VprkitError, match=pattern):
            train(small_config(train_root, **kw), tmp_path / "x", progress=False)

    def test_existing_run_and_missing_resume(self, train_root, tmp_path):
        (tmp_path / "x").mkdir()
        (tmp_path / "x/last.pth").write_text("")
        with pytest.raises(VprkitError, match="already holds a run"):
            train(small_config(train_root), tmp_path / "x", progress=False)
        with pytest.raises(VprkitError, match="no last.pth"):
            train(None, tmp_path / "y", resume=True, progress=False)

    def test_missing_val_split(self, tmp_path):
        root = generate_dataset(tmp_path / "d", {"train": (20, 8)}, size=SIZE)
        with pytest.raises(VprkitError, match="split folder .*val does not exist"):
            train(small_config(root), tmp_path / "x", progress=False)

    def test_cli_needs_root_and_out(self):
        result = CliRunner().invoke(main, ["train"])
        assert result.exit_code != 0 and "give ROOT and --out" in result.output


class TestRecipes:
    """Named recipes (vprkit.train.recipes): the fields they set, explicit options winning, the
    record in config.json, runs from before recipes."""

    def test_every_recipe_sets_known_fields_and_checks(self):
        import dataclasses

        from vprkit import choices
        from vprkit.train.recipes import RECIPES, describe_recipes

        assert choices.RECIPES == tuple(RECIPES) == tuple(n for n, _, _ in describe_recipes())
        known = {f.name for f in dataclasses.fields(TrainConfig)} - {"root", "recipe"}
        for name, recipe in RECIPES.items():
            assert recipe["about"] and set(recipe["fields"]) <= known, name
            config = config_from_recipe(name, root="r")
            config.check()
            assert config.recipe == name
            assert {k: getattr(config, k) for k in recipe["fields"]} == recipe["fields"]

    def test_the_benchmark_recipe_is_the_defaults_and_the_papers_are_table_iii(self):
        defaults = TrainConfig(root="r")
        benchmark = config_from_recipe("benchmark", root="r")
        assert dataclasses_without_recipe(benchmark) == dataclasses_without_recipe(defaults)
        for name, optimizer, lr, scheduler in (
            ("paper-adamw", "adamw", 1e-4, "none"),
            ("paper-asgd", "asgd", 0.1, "none"),
            ("paper-adamw-plateau", "adamw", 1e-4, "plateau"),
            ("paper-asgd-cosine", "asgd", 0.1, "cosine"),
        ):
            config = config_from_recipe(name, root="r")
            assert (config.optimizer, config.lr, config.weight_decay, config.scheduler) == (
                optimizer,
                lr,
                1e-3,
                scheduler,
            ), name

    def test_overrides_win_and_refusals(self):
        config = config_from_recipe("paper-asgd-cosine", root="r", lr=0.05, epochs=2)
        assert (config.optimizer, config.lr, config.scheduler, config.epochs) == ("asgd", 0.05, "cosine", 2)
        assert config_from_recipe(None, root="r") == TrainConfig(root="r")
        with pytest.raises(VprkitError, match="unknown recipe 'fast'; choose one of benchmark, "):
            config_from_recipe("fast", root="r")
        with pytest.raises(VprkitError, match="unknown recipe 'fast'"):
            TrainConfig(root="r", recipe="fast").check()

    @pytest.fixture
    def cli_config(self, monkeypatch, train_root, tmp_path):
        """``cli_config(*options)``: the TrainConfig that ``vprkit train`` builds (not run)."""
        import vprkit.train

        made = []

        def fake_train(config, run_dir, progress=True):
            made.append(config)
            return run_dir / "best.pth"

        monkeypatch.setattr(vprkit.train, "train", fake_train)

        def get(*options):
            result = CliRunner().invoke(main, ["train", str(train_root), "-o", str(tmp_path / "r"), *options])
            assert result.exit_code == 0, result.output
            return made.pop()

        return get

    def test_cli_recipe_sets_the_fields_and_explicit_options_win(self, cli_config):
        plain = cli_config()
        assert plain.recipe is None and (plain.optimizer, plain.lr) == ("adam", 1e-5)
        config = cli_config("--recipe", "paper-adamw-plateau")
        assert (config.recipe, config.optimizer, config.lr, config.weight_decay, config.scheduler) == (
            "paper-adamw-plateau",
            "adamw",
            1e-4,
            1e-3,
            "plateau",
        )
        # given explicitly, even with the default's value: the option wins
        config = cli_config(
            "--recipe", "paper-adamw-plateau", "--lr", "1e-5", "--scheduler", "none", "--epochs", "2"
        )
        assert (config.optimizer, config.lr, config.weight_decay, config.scheduler, config.epochs) == (
            "adamw",
            1e-5,
            1e-3,
            "none",
            2,
        )

    def test_cli_unknown_recipe_and_listing(self, train_root, tmp_path):
        result = CliRunner().invoke(
            main, ["train", str(train_root), "-o", str(tmp_path / "r"), "--recipe", "paper-sgd"]
        )
        assert result.exit_code == 2
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
        assert "unknown recipe 'paper-sgd'; choose one of benchmark, paper-adamw" in lines[0]
        assert not (tmp_path / "r").exists()
        listing = CliRunner().invoke(main, ["train", "--list-recipes"])
        assert listing.exit_code == 0
        assert "paper-asgd-cosine" in listing.output and "Table III" in listing.output
        assert "paper-asgd-cosine" in CliRunner().invoke(main, ["train", "--help"]).output

    def test_config_json_records_the_recipe(self, train_root, tmp_path):
        run = tmp_path / "run"
        result = CliRunner().invoke(
            main,
            [
                "train",
                str(train_root),
                "-o",
                str(run),
                "--recipe",
                "paper-asgd-cosine",
                "--weights",
                "none",
                "--resize",
                *map(str, SIZE),
                "--queries-per-epoch",
                "6",
                "--cache-refresh",
                "3",
                "--batch-size",
                "2",
                "--negatives",
                "2",
                "--neg-samples",
                "10",
                "--epochs",
                "1",
                "--infer-batch-size",
                "8",
                "--workers",
                "0",
                "--device",
                "cpu",
                "--lr",
                "0.01",
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output
        config = json.loads((run / "config.json").read_text())
        assert config["recipe"] == "paper-asgd-cosine"
        assert (config["optimizer"], config["lr"], config["weight_decay"], config["scheduler"]) == (
            "asgd",
            0.01,
            1e-3,
            "cosine",
        )
        assert TrainConfig.load(run / "config.json").recipe == "paper-asgd-cosine"
        refused = CliRunner().invoke(main, ["train", "--resume", str(run), "--recipe", "benchmark"])
        assert refused.exit_code != 0 and "--recipe starts a new run" in refused.output

    def test_resume_of_a_run_from_before_recipes(self, train_root, tmp_path, monkeypatch):
        """A config.json without 'recipe' (vprkit before recipes) loads and resumes."""
        run = tmp_path / "old"
        interrupt_training_at(monkeypatch, 2)
        with pytest.raises(KeyboardInterrupt):
            train(small_config(train_root, epochs=1), run, progress=False)
        monkeypatch.undo()
        stored = json.loads((run / "config.json").read_text())
        del stored["recipe"]
        (run / "config.json").write_text(json.dumps(stored, indent=2) + "\n")
        assert TrainConfig.load(run / "config.json").recipe is None
        result = CliRunner().invoke(main, ["train", "--resume", str(run), "--quiet"])
        assert result.exit_code == 0, result.output
        assert (run / "best.pth").exists() and "recipe" not in json.loads((run / "config.json").read_text())


def dataclasses_without_recipe(config: TrainConfig) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(config).items() if k != "recipe"}


# a config.json as the previous release (0.2.0.dev0 before the nested model) wrote it: every
# field of its TrainConfig, the model's flat
PREVIOUS_RELEASE_CONFIG = """{
  "format": "vprkit.train",
  "root": "/data/pitts30k",
  "backbone": "resnet18conv5",
  "aggregation": "netvlad",
  "clusters": 32,
  "weights": "none",
  "checkpoint": null,
  "l2": null,
  "fc_output_dim": 128,
  "resize": [240, 320],
  "train_split": "train",
  "val_split": "val",
  "mining": "full",
  "negatives": 5,
  "neg_samples": 500,
  "margin": 0.2,
  "queries_per_epoch": 2000,
  "cache_refresh": 500,
  "batch_size": 8,
  "infer_batch_size": 32,
  "epochs": 3,
  "patience": 2,
  "optimizer": "adamw",
  "lr": 0.0001,
  "weight_decay": 0.001,
  "scheduler": "plateau",
  "augment": ["night:M1"],
  "recalls": [1, 5],
  "seed": 7,
  "workers": 1,
  "device": "cpu",
  "amp": true,
  "channels_last": false,
  "recipe": "paper-adamw-plateau"
}
"""


class TestNestedModel:
    """TrainConfig.model is a ModelConfig; config.json of the previous release (flat) loads."""

    def test_a_previous_release_config_loads_nested_with_equal_values(self, tmp_path):
        (tmp_path / "config.json").write_text(PREVIOUS_RELEASE_CONFIG)
        config = TrainConfig.load(tmp_path / "config.json")
        old = json.loads(PREVIOUS_RELEASE_CONFIG)
        assert config.model == ModelConfig(
            backbone="resnet18conv5", aggregation="netvlad", clusters=32, weights="none", fc_output_dim=128
        )
        for key in ("backbone", "aggregation", "clusters", "weights", "checkpoint", "l2", "fc_output_dim"):
            assert getattr(config.model, key) == old[key], key
        rest = {k: v for k, v in old.items() if k != "format" and not hasattr(config.model, k)}
        assert rest and all(
            getattr(config, k) == (tuple(v) if k in ("resize", "recalls") else v) for k, v in rest.items()
        ), rest
        # written back in the nested form, which loads to the same config
        data = json.loads(config.to_json())
        assert data["model"] == config.model.to_dict() and "backbone" not in data
        (tmp_path / "config.json").write_text(config.to_json())
        assert TrainConfig.load(tmp_path / "config.json") == config

    def test_component_options_round_trip(self, tmp_path):
        model = ModelConfig(weights="none").with_overrides(["aggregation.p=3.5"])
        config = TrainConfig(root="r", model=model)
        config.check()
        (tmp_path / "config.json").write_text(config.to_json())
        assert TrainConfig.load(tmp_path / "config.json").model.aggregation_options == {"p": 3.5}

    def test_a_config_mixing_both_forms_is_refused(self, tmp_path):
        data = json.loads(TrainConfig(root="r").to_json())
        data["clusters"] = 64
        (tmp_path / "config.json").write_text(json.dumps(data))
        with pytest.raises(VprkitError, match="unknown key 'clusters'"):
            TrainConfig.load(tmp_path / "config.json")

    def test_the_model_is_checked_with_the_options_wording(self):
        with pytest.raises(VprkitError, match="^clusters must be at least 1"):
            TrainConfig(root="r", model=ModelConfig(aggregation="netvlad", clusters=0)).check()
        with pytest.raises(VprkitError, match="zoo"):
            TrainConfig(root="r", model=ModelConfig(model="cosplace_resnet101_128")).check()

    def test_cli_set_overrides_component_options(self, monkeypatch, train_root, tmp_path):
        import vprkit.train

        made = []
        monkeypatch.setattr(
            vprkit.train,
            "train",
            lambda config, run_dir, progress=None: made.append(config) or run_dir / "best.pth",
        )

        def run(*options):
            return CliRunner().invoke(main, ["train", str(train_root), "-o", str(tmp_path / "r"), *options])

        result = run(
            "--aggregation",
            "netvlad",
            "--set",
            "aggregation.clusters=32",
            "--set",
            "aggregation.fc_output_dim=128",
        )
        assert result.exit_code == 0, result.output
        assert (made[-1].model.aggregation, made[-1].model.clusters, made[-1].model.fc_output_dim) == (
            "netvlad",
            32,
            128,
        )
        result = run("--set", "aggregation.clusters")
        assert result.exit_code != 0 and "Error: " in result.output
        assert "COMPONENT.OPTION=VALUE" in result.output and "Traceback" not in result.output
        refused = CliRunner().invoke(
            main, ["train", "--resume", str(tmp_path / "r"), "--set", "aggregation.clusters=32"]
        )
        assert refused.exit_code != 0 and "--set configures a new run" in refused.output
