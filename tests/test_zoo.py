"""The zoo's integration: extract --model, everything downstream, vprkit models, refusals.

Each family's parity with its upstream release is in tests/test_zoo_<family>.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vprkit.cli import main
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.extract.split import ExtractOptions, extract
from vprkit.locate.photos import locate
from vprkit.models import ModelConfig, build_model
from vprkit.models.zoo import get_zoo_model, zoo_models
from vprkit.store import DescriptorFile

SMALL = "cosplace_resnet18_32"
SIZE = (64, 80)


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("zoo_data"), {"test": (20, 8)}, size=SIZE, seed=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A state dict in the upstream layout: the random architecture's own (the per-family
    tests check that layout against an independent reference)."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("zoo_ckpt") / "cosplace.pth"
    torch.save(get_zoo_model(SMALL).build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def zoo_file(root, checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo_file") / "cosplace.h5"
    result = run_cli(
        "extract",
        root,
        "-o",
        out,
        "--model",
        SMALL,
        "--checkpoint",
        checkpoint,
        "--resize",
        *SIZE,
        "--scales",
        "1,2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return out


class TestRegistry:
    def test_names_and_dimensions(self):
        models = zoo_models()
        assert SMALL in models
        for name, spec in models.items():
            assert name == spec.name and name == name.lower() and " " not in name
            assert spec.output_dim > 0 and spec.weights
            assert name.startswith(spec.family)

    def test_models_command(self):
        result = run_cli("models", "--json", "-")
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output)
        assert {r["name"] for r in rows} == set(zoo_models())
        table = run_cli("models", "--family", "cosplace")
        assert table.exit_code == 0 and SMALL in table.output

    def test_unknown_model(self):
        with pytest.raises(VprkitError, match="unknown model 'cosplace_resnet7_1'.*vprkit models"):
            get_zoo_model("cosplace_resnet7_1")


class TestExtract:
    def test_rows_are_the_networks(self, root, checkpoint, zoo_file):
        model = build_model(ModelConfig(model=SMALL, checkpoint=str(checkpoint))).eval()
        from vprkit.data.images import load_image, preprocess

        with DescriptorFile(zoo_file) as f:
            names = f.names("database")[:3]
            stored = f.read_rows("database", (1,), 0, 3)
            assert f.model["model"] == SMALL and f.dim == 32
        x = torch.stack(
            [preprocess(load_image(root / "images/test/database" / n), SIZE, (1,))[0] for n in names]
        )
        with torch.no_grad():
            assert np.abs(model(x).numpy() - stored).max() < 1e-4

    def test_the_file_records_what_the_network_describes(self, checkpoint, zoo_file):
        """A zoo network is a DescriptorNet as a classic one is: its record is the header's,
        with its parts for tables; no aggregation layer, no statistics, no pyramid rule."""
        from vprkit.models.protocol import InputRule
        from vprkit.models.zoo import ZooNetwork

        config = ModelConfig(model=SMALL, weights="none", checkpoint=str(checkpoint.resolve()))
        model = build_model(config).eval()
        assert isinstance(model, ZooNetwork) and not hasattr(model, "aggregation")
        assert model.label == SMALL and model.input_rule == InputRule()
        assert model.stats_spec() == {} and model.pyramid_params() == {"type": "none", "aggregation": SMALL}
        with DescriptorFile(zoo_file) as f:
            assert {**model.describe(), "netvlad_init": None} == f.model
            assert f.model["backbone"] == "ResNet-18" and f.aggregation == model.pyramid_params()
        with torch.no_grad():
            desc, stats = model.forward_with_stats(torch.rand(1, 3, *SIZE))
        assert desc.shape == (1, model.output_dim) and stats == {}

    def test_downstream(self, root, zoo_file, tmp_path):
        assert evaluate_file(zoo_file, "2").queries == 8
        with pytest.raises(VprkitError, match="no pyramid rule"):
            evaluate_file(zoo_file, "1+2")
        result = run_cli("evaluate", zoo_file)
        assert result.exit_code == 0 and SMALL in result.output
        gem = extract(
            root,
            tmp_path / "gem.h5",
            ModelConfig(weights="none"),
            ExtractOptions(resize=SIZE, workers=0, device="cpu"),
            progress=False,
        )
        ens = tmp_path / "ens.h5"
        assert run_cli("combine", zoo_file, gem, "-o", ens, "--quiet").exit_code == 0
        with DescriptorFile(ens) as f:
            assert f.dim == 32 + 256
        located = locate([root / "images/test/queries"], zoo_file, progress=False)
        assert len(located.located) == 8
        assert 100 * sum(loc.error_m <= 25 for loc in located.located) / 8 == pytest.approx(
            evaluate_file(zoo_file).recalls[1]
        )

    def test_half(self, root, checkpoint, tmp_path):
        out = extract(
            root,
            tmp_path / "h.h5",
            ModelConfig(model=SMALL, checkpoint=str(checkpoint)),
            ExtractOptions(resize=SIZE, workers=0, device="cpu", half=True),
            progress=False,
        )
        with DescriptorFile(out) as f:
            assert f.preprocessing["precision"] == "bfloat16" and f.num("database") == 20


class TestRefusals:
    def test_with_backbone(self, root, tmp_path):
        result = run_cli("extract", root, "-o", tmp_path / "x.h5", "--model", SMALL, "--backbone", "vgg16")
        assert result.exit_code == 1 and "whole network" in result.output

    def test_needs_weights(self, root, tmp_path):
        result = run_cli("extract", root, "-o", tmp_path / "x.h5", "--model", SMALL)
        assert result.exit_code == 1 and "--checkpoint FILE" in result.output
        assert len(result.output.strip().splitlines()) == 1

    def test_wrong_file(self, root, tmp_path):
        wrong = tmp_path / "wrong.pth"
        torch.save({"backbone.0.weight": torch.zeros(1)}, wrong)
        result = run_cli(
            "extract",
            root,
            "-o",
            tmp_path / "x.h5",
            "--model",
            SMALL,
            "--checkpoint",
            wrong,
            "--resize",
            *SIZE,
        )
        assert result.exit_code == 1 and "not a" in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_shards_merge_to_the_whole(root, checkpoint, zoo_file, tmp_path):
    config = ModelConfig(model=SMALL, checkpoint=str(checkpoint))
    shards = [
        extract(
            root,
            tmp_path / "s.h5",
            config,
            ExtractOptions(scales=(1, 2), resize=SIZE, workers=0, device="cpu", shard=(i, 2)),
            progress=False,
        )
        for i in range(2)
    ]
    assert run_cli("merge", *shards, "-o", tmp_path / "m.h5", "--quiet").exit_code == 0
    with DescriptorFile(zoo_file) as whole, DescriptorFile(tmp_path / "m.h5") as merged:
        for role in ("database", "queries"):
            n = whole.num(role)
            assert np.abs(whole.read_rows(role, (2,), 0, n) - merged.read_rows(role, (2,), 0, n)).max() < 1e-5
