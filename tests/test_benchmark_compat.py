"""vprkit reproduces the Deep Visual Geo-localization Benchmark when loading its checkpoints.

The oracle (``tests/reference/benchmark.py``) is an independent re-implementation of the
benchmark's network (here the ``resnet18conv4`` backbone with a GeM or NetVLAD head) and of its
test loop (ToTensor + ImageNet Normalize at native size, ``faiss.IndexFlatL2``, positives within
25 m found by scikit-learn, the benchmark's Recall@N loop). It imports nothing from vprkit.
Random but seeded weights (including BatchNorm running statistics, so eval mode matters) are
saved in the checkpoint shapes the benchmark writes, then vprkit is run through its command line:

- the stored descriptors equal the oracle's to 1e-4;
- ``vprkit evaluate --json -`` gives exactly the oracle's Recall@N;
- the architecture is inferred from the keys, and a contradicting option is a one-line error.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from reference.benchmark import (
    RECALL_VALUES,
    benchmark_paths,
    benchmark_utms,
    build_reference,
    reference_features,
    reference_test,
    save_benchmark_checkpoint,
)
from torch import nn

from vprkit.cli import main
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.models import infer_architecture, load_model_from_checkpoint
from vprkit.models.checkpoints import read_checkpoint
from vprkit.store import DescriptorFile

AGGREGATIONS = ("gem", "netvlad")
# bare state dict / benchmark's checkpoint dict, each without and with DataParallel's prefix
CHECKPOINT_SHAPES = ("bare", "bare_module", "benchmark", "benchmark_module")
# run end to end through the CLI (the other two shapes are covered by the cheaper tests):
# each of the two axes, container and prefix, is exercised both ways
EXTRACTED_SHAPES = ("bare", "benchmark_module")
IMAGE_SIZE = (96, 128)
N_DATABASE, N_QUERIES = 40, 20
ATOL = 1e-4


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_dataset")
    return generate_dataset(root, {"test": (N_DATABASE, N_QUERIES)}, size=IMAGE_SIZE, seed=0)


class Reference:
    """One aggregation's reference network, its checkpoints, features and recalls."""

    def __init__(self, aggregation: str, root: Path, folder: Path):
        self.aggregation = aggregation
        self.model = build_reference(aggregation, seed={"gem": 11, "netvlad": 23}[aggregation])
        self.checkpoints = {
            shape: save_benchmark_checkpoint(self.model, folder / f"{aggregation}_{shape}.pth", shape)
            for shape in CHECKPOINT_SHAPES
        }
        test = root / "images" / "test"
        self.db_paths = benchmark_paths(test / "database")
        self.q_paths = benchmark_paths(test / "queries")
        self.database = reference_features(self.model, self.db_paths)
        self.queries = reference_features(self.model, self.q_paths)
        self.recalls = reference_test(
            self.database, self.queries, benchmark_utms(self.db_paths), benchmark_utms(self.q_paths)
        )


@pytest.fixture(scope="module")
def references(dataset_root, tmp_path_factory) -> dict[str, Reference]:
    folder = tmp_path_factory.mktemp("bench_checkpoints")
    return {agg: Reference(agg, dataset_root, folder) for agg in AGGREGATIONS}


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def extracted(dataset_root, references, tmp_path_factory):
    """``extracted(aggregation, shape)``: the descriptor file vprkit writes (cached)."""
    folder = tmp_path_factory.mktemp("bench_extract")
    cache: dict[tuple[str, str], Path] = {}

    def get(aggregation: str, shape: str) -> Path:
        if (aggregation, shape) not in cache:
            out = folder / f"{aggregation}_{shape}.h5"
            result = run_cli(
                "extract",
                dataset_root,
                "-o",
                out,
                "--checkpoint",
                references[aggregation].checkpoints[shape],
                "--native-size",
                "--workers",
                "0",
                "--device",
                "cpu",
                "--quiet",
            )
            assert result.exit_code == 0, result.output + repr(result.exception)
            assert out.is_file()
            cache[(aggregation, shape)] = out
        return cache[(aggregation, shape)]

    return get


def fingerprint_of(model: nn.Module) -> dict[str, bytes]:
    """Every tensor of a state dict, by name, as bytes (weights and BatchNorm statistics)."""
    return {k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in model.state_dict().items()}


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# --------------------------------------------------------------------------- tests
class TestReferenceOracle:
    """The oracle itself: non-trivial weights, so that the comparisons below mean something."""

    def test_imports_nothing_from_vprkit(self):
        """Every oracle module of tests/reference."""
        tests = Path(__file__).resolve().parent
        code = (
            "import sys, pkgutil, importlib, reference; "
            "[importlib.import_module(f'reference.{m.name}') "
            "for m in pkgutil.iter_modules(reference.__path__)]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'vprkit'))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tests
        )
        assert out.stdout.strip() == "[]", out.stdout

    @pytest.mark.parametrize("aggregation", AGGREGATIONS)
    def test_eval_mode_matters(self, references, aggregation):
        """BatchNorm's running statistics are far from batch statistics: train mode differs."""
        model = copy.deepcopy(references[aggregation].model)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            evaluated = model.eval()(x)
            trained = model.train()(x)
        assert max_abs_diff(evaluated.numpy(), trained.numpy()) > 1e-2

    @pytest.mark.parametrize("aggregation", AGGREGATIONS)
    def test_state_dict_keys_are_the_benchmarks(self, references, aggregation):
        keys = set(references[aggregation].model.state_dict())
        assert {
            "backbone.0.weight",
            "backbone.1.running_var",
            "backbone.4.0.conv1.weight",
            "backbone.6.1.bn2.weight",
        } <= keys
        assert not any(k.startswith("backbone.7.") for k in keys)
        agg_keys = {k for k in keys if k.startswith("aggregation.")}
        expected = (
            {"aggregation.1.p"}
            if aggregation == "gem"
            else {"aggregation.centroids", "aggregation.conv.weight"}
        )
        assert agg_keys == expected

    def test_features_and_recalls_are_informative(self, references):
        for ref in references.values():
            assert ref.database.shape[0] == N_DATABASE and ref.queries.shape[0] == N_QUERIES
            assert np.isfinite(ref.database).all() and np.isfinite(ref.queries).all()
            # descriptors differ between images (not a collapsed constant network)
            assert np.ptp(ref.database, axis=0).max() > 1e-3
            # some queries are found, and the 2 generated queries past the mapped street
            # (no positive within 25 m) stay in the denominator
            assert ref.recalls[0] > 0
            assert ref.recalls[-1] <= 100.0 * (N_QUERIES - 2) / N_QUERIES
        assert references["gem"].database.shape[1] == 256
        assert references["netvlad"].database.shape[1] == 64 * 256


class TestBenchmarkCheckpoints:
    @pytest.mark.parametrize("shape", CHECKPOINT_SHAPES)
    @pytest.mark.parametrize("aggregation", AGGREGATIONS)
    def test_architecture_is_inferred(self, references, aggregation, shape):
        expected = {"backbone": "resnet18conv4", "aggregation": aggregation, "clusters": 64}
        ref = references[aggregation]
        assert infer_architecture(ref.model.state_dict()) == expected
        state, stored_config = read_checkpoint(ref.checkpoints[shape])
        assert stored_config is None
        assert set(state) == set(ref.model.state_dict())
        assert infer_architecture(state) == expected

    @pytest.mark.parametrize("shape", EXTRACTED_SHAPES)
    @pytest.mark.parametrize("aggregation", AGGREGATIONS)
    def test_descriptors_equal_reference(self, references, extracted, aggregation, shape):
        ref = references[aggregation]
        out = extracted(aggregation, shape)
        with h5py.File(out, "r") as h5:
            database = h5["scales/1/database"][()]
            queries = h5["scales/1/queries"][()]
            db_names = [n.decode() if isinstance(n, bytes) else n for n in h5["database/names"]]
            q_names = [n.decode() if isinstance(n, bytes) else n for n in h5["queries/names"]]
        assert db_names == [p.name for p in ref.db_paths]
        assert q_names == [p.name for p in ref.q_paths]
        assert database.shape == ref.database.shape and queries.shape == ref.queries.shape
        assert database.dtype == np.float32
        diff = max(max_abs_diff(database, ref.database), max_abs_diff(queries, ref.queries))
        print(f"{aggregation}/{shape}: max |vprkit - reference| = {diff:.3g}")
        assert diff <= ATOL
        # the library reader returns the same rows
        with DescriptorFile(out) as f:
            np.testing.assert_array_equal(f.read_rows("database", (1,), 0, N_DATABASE), database)
            np.testing.assert_array_equal(f.read_rows("queries", (1,), 0, N_QUERIES), queries)
            assert f.model["backbone"] == "resnet18conv4"
            assert f.model["aggregation"] == aggregation
            assert f.model["clusters"] == 64
            assert f.preprocessing["resize"] is None

    @pytest.mark.parametrize("shape", EXTRACTED_SHAPES)
    @pytest.mark.parametrize("aggregation", AGGREGATIONS)
    def test_recalls_equal_reference_exactly(self, references, extracted, aggregation, shape):
        ref = references[aggregation]
        result = run_cli("evaluate", extracted(aggregation, shape), "--json", "-")
        assert result.exit_code == 0, result.output + repr(result.exception)
        rows = json.loads(result.output)
        assert isinstance(rows, list) and len(rows) == 1
        recalls = rows[0]["recalls"]
        assert set(recalls) == {str(n) for n in RECALL_VALUES}
        got = [recalls[str(n)] for n in RECALL_VALUES]
        assert got == ref.recalls.tolist()  # exact, not approximate
        assert rows[0]["queries"] == N_QUERIES and rows[0]["database"] == N_DATABASE

    @pytest.mark.parametrize("aggregation", AGGREGATIONS)
    def test_contradicting_options_fail_in_one_line(self, references, dataset_root, tmp_path, aggregation):
        other = "netvlad" if aggregation == "gem" else "gem"
        for option, value in (("--aggregation", other), ("--backbone", "resnet50conv4")):
            out = tmp_path / f"{option.strip('-')}.h5"
            result = run_cli(
                "extract",
                dataset_root,
                "-o",
                out,
                "--checkpoint",
                references[aggregation].checkpoints["benchmark_module"],
                option,
                value,
                "--native-size",
                "--workers",
                "0",
                "--device",
                "cpu",
                "--quiet",
            )
            assert result.exit_code != 0
            assert "Traceback" not in result.output
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert len(lines) == 1, result.output
            assert lines[0].startswith("Error:"), result.output
            assert value in lines[0]
            assert not out.exists()

    @pytest.mark.parametrize("aggregation", AGGREGATIONS)
    def test_agreeing_and_contradicting_options_in_the_library(self, references, aggregation):
        path = references[aggregation].checkpoints["bare_module"]
        model = load_model_from_checkpoint(path, "resnet18conv4", aggregation)
        assert (model.config.backbone, model.config.aggregation) == ("resnet18conv4", aggregation)
        other = "netvlad" if aggregation == "gem" else "gem"
        with pytest.raises(VprkitError, match=f"--aggregation {other}"):
            load_model_from_checkpoint(path, None, other)


class TestLoadModelFromCheckpoint:
    @pytest.mark.parametrize("shape", CHECKPOINT_SHAPES)
    @pytest.mark.parametrize("aggregation", AGGREGATIONS)
    def test_eval_forward_equals_reference(self, references, aggregation, shape):
        ref = references[aggregation]
        model = load_model_from_checkpoint(ref.checkpoints[shape]).eval()
        assert fingerprint_of(model) == fingerprint_of(ref.model)
        x = torch.randn(2, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(42))
        with torch.no_grad():
            expected = ref.model.eval()(x)
            got = model(x)
        assert got.shape == expected.shape
        diff = max_abs_diff(got.numpy(), expected.numpy())
        print(f"load_model_from_checkpoint(...).eval() {aggregation}/{shape}: max diff {diff:.3g}")
        assert diff <= ATOL

    @pytest.mark.parametrize("aggregation", AGGREGATIONS)
    def test_loaded_model_is_ready_for_inference(self, references, aggregation):
        """``load_model_from_checkpoint(path)`` then ``model(x)`` is the benchmark's output."""
        ref = references[aggregation]
        model = load_model_from_checkpoint(ref.checkpoints["benchmark"])
        x = torch.randn(2, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(42))
        with torch.no_grad():
            expected = ref.model.eval()(x)
            got = model(x)
        assert max_abs_diff(got.numpy(), expected.numpy()) <= ATOL
        assert not model.training
