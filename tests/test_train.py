"""Training: presets, mining, loss, a step that learns, resume equivalence, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from click.testing import CliRunner
from helpers import interrupt_training_at

from vprkit.cli import main
from vprkit.datasets import load_split
from vprkit.errors import VprkitError
from vprkit.models import ModelConfig, VPRModel, load_model_from_checkpoint
from vprkit.synthetic import generate_dataset
from vprkit.train import TrainConfig, TripletSource, build_preset, mine, train, triplet_loss

SIZE = (32, 40)


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return generate_dataset(root, {"train": (30, 16), "val": (20, 10)}, size=SIZE, seed=4)


def small_config(root, **kw) -> TrainConfig:
    base = dict(root=str(root), weights="none", resize=SIZE, queries_per_epoch=6, cache_refresh=3,
                batch_size=2, negatives=2, neg_samples=10, epochs=2, infer_batch_size=8,
                workers=0, device="cpu", lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


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

    @pytest.mark.parametrize("name, p, d, fill, pe", [
        ("occlusion:M1", 0.33, 0.4, 0.0, 0.33), ("occlusion:M2", 0.33, 0.4, 150 / 255, 0.33),
        ("occlusion:M3", 0.33, 0.4, 1.0, 0.33), ("occlusion:M4", 0.5, 0.2, 0.0, 0.2),
        ("occlusion:M5", 0.5, 0.2, 150 / 255, 0.2), ("occlusion:M6", 0.5, 0.2, 1.0, 0.2)])
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
            return (source.split.database.utm[db_idx].astype(np.float32),
                    source.split.queries.utm[q_idx].astype(np.float32))
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
        groups = mine(source, source.queries[:6], self.utm_features(source), "full", 3, 30,
                      np.random.default_rng(0), {})
        db, q = source.split.database.utm, source.split.queries.utm
        for query, pos, *negs in groups:
            d = np.linalg.norm(db - q[query], axis=1)
            outside = np.flatnonzero(d > 25)
            expected = outside[np.argsort(d[outside], kind="stable")[:3]]
            assert negs == expected.tolist()
            assert pos == np.argmin(np.where(d <= 10, d, np.inf))

    def test_too_few_negatives(self, source):
        with pytest.raises(VprkitError, match="negative candidates"):
            mine(source, source.queries[:2], self.utm_features(source), "full", 40, 30,
                 np.random.default_rng(0), {})


class TestLoss:
    def test_equals_torch_triplet_margin_loss(self):
        feats = torch.randn(2 * 5, 7)
        got = triplet_loss(feats, 2, 3, 0.1)
        f = feats.view(2, 5, 7)
        ref = sum(torch.nn.TripletMarginLoss(margin=0.1, reduction="sum")(
            f[g, 0:1], f[g, 1:2], f[g, 2 + n: 3 + n]) for g in range(2) for n in range(3)) / 6
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
        best = train(small_config(train_root, aggregation="netvlad", clusters=4,
                                  augment=["night:M2", "occlusion:M1"]), run, progress=False)
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
        result = CliRunner().invoke(main, ["extract", str(train_root), "--split", "val", "-o",
                                           str(out), "--checkpoint", str(best), "--resize",
                                           *map(str, SIZE), "--workers", "0", "--quiet"])
        assert result.exit_code == 0, result.output

    def test_resume_gives_the_same_weights(self, train_root, tmp_path, monkeypatch):
        config = small_config(train_root, augment=["occlusion:M4"], scheduler="cosine",
                              optimizer="adamw", weight_decay=0.01)
        train(config, tmp_path / "a", progress=False)
        interrupt_training_at(monkeypatch, 3)
        with pytest.raises(KeyboardInterrupt):
            train(small_config(train_root, augment=["occlusion:M4"], scheduler="cosine",
                               optimizer="adamw", weight_decay=0.01), tmp_path / "b",
                  progress=False)
        monkeypatch.undo()
        train(None, tmp_path / "b", resume=True, progress=False)
        a = torch.load(tmp_path / "a/last.pth", weights_only=True)
        b = torch.load(tmp_path / "b/last.pth", weights_only=True)
        for key, value in a["model_state_dict"].items():
            torch.testing.assert_close(b["model_state_dict"][key], value, rtol=0, atol=0, msg=key)
        assert a["state"]["epoch"] == b["state"]["epoch"] == 2

    def test_sizes_adapt_to_small_datasets(self, train_root, tmp_path):
        train(small_config(train_root, queries_per_epoch=500, cache_refresh=100, neg_samples=900,
                           epochs=1), tmp_path / "r", progress=False)
        config = json.loads((tmp_path / "r/config.json").read_text())
        assert config["queries_per_epoch"] == 14 and config["cache_refresh"] == 14
        assert config["neg_samples"] == 30


class TestRefusals:
    @pytest.mark.parametrize("kw, pattern", [
        ({"augment": ["night:M9"]}, "unknown augmentation"),
        ({"optimizer": "rmsprop"}, "unknown --optimizer"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"lr": 0}, "--lr"),
    ])
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
