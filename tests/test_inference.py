"""vprkit.extract.inference: the one place where extraction and training run a network over images."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from vprkit import devices
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.extract import clusters as netvlad_init
from vprkit.extract import inference
from vprkit.extract import split as extract
from vprkit.extract.split import ExtractOptions
from vprkit.models import ModelConfig, build_model
from vprkit.train import TrainConfig, resume, trainer
from vprkit.train.validation import _inference_options

SIZE = (32, 40)


def test_training_does_not_import_extract():
    code = (
        "import sys, vprkit.train, vprkit.train.trainer; "
        "print(sorted(m for m in sys.modules if m.startswith('vprkit.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = result.stdout
    assert "vprkit.extract.inference" in loaded and "vprkit.train.trainer" in loaded
    assert "vprkit.extract.split" not in loaded


def test_extract_runs_the_inference_module():
    assert extract.resolve_device is devices.resolve_device
    assert extract.cpu_has_bf16 is devices.cpu_has_bf16
    assert netvlad_init.sample_local_features is inference.sample_local_features  # extract's k-means
    assert extract._fold_batch_norm is inference.fold_batch_norm
    assert extract._infer is inference.infer_batch
    assert extract._loader is inference.image_loader
    assert extract._check_items is inference.check_items
    assert extract._half_dtype is devices.half_dtype
    assert trainer.resolve_device is devices.resolve_device
    assert trainer.sample_local_features is inference.sample_local_features


def test_extract_options_are_inference_options():
    """One options type: ExtractOptions extends InferenceOptions (vprkit.extract.options), so
    their shared fields have one default; training's inference takes those it does not set."""
    from vprkit.extract import options

    assert issubclass(ExtractOptions, inference.InferenceOptions)
    assert inference.InferenceOptions is options.InferenceOptions
    assert ExtractOptions is options.ExtractOptions
    config = TrainConfig(root="x", resize=SIZE, infer_batch_size=3, workers=0, device="cpu", seed=7)
    assert dataclasses.asdict(_inference_options(config)) == {
        **dataclasses.asdict(inference.InferenceOptions()),
        "resize": SIZE,
        "batch_size": 3,
        "workers": 0,
        "device": "cpu",
        "seed": 7,
    }


def test_same_descriptors_with_either_options(tmp_path):
    root = generate_dataset(tmp_path, {"test": (5, 3)}, size=SIZE, seed=1)
    from vprkit.data.datasets import load_split

    paths = load_split(root, "test").database.paths()
    torch.manual_seed(0)
    model = build_model(ModelConfig(weights="none")).eval()
    device = devices.resolve_device("cpu")
    a = inference.compute_descriptors(
        model, paths, inference.InferenceOptions(resize=SIZE, batch_size=2, workers=0), device
    )
    b = inference.compute_descriptors(
        model, paths, ExtractOptions(resize=SIZE, batch_size=2, workers=0), device
    )
    assert a.shape == (5, model.output_dim) and a.dtype == np.float32
    assert np.array_equal(a, b)
    batch = next(
        iter(
            inference.image_loader(
                paths, ExtractOptions(resize=SIZE, batch_size=2, workers=0), (1, 2), device
            )
        )
    )
    (d1, stats1), (d2, _) = inference.infer_batch(model, batch, (1, 2), device, False)
    assert np.array_equal(d1, a[:2]) and d2.shape == d1.shape and stats1["count"].shape == (2,)


def test_resume_is_train_with_resume(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(trainer, "train", lambda *a, **kw: calls.append((a, kw)) or "best")
    assert resume(tmp_path, progress=False) == "best"  # False: no progress (None)
    assert calls == [((None, tmp_path), {"resume": True, "progress": None})]


def test_resume_without_a_run_is_refused(tmp_path):
    with pytest.raises(VprkitError, match="no last.pth"):
        resume(tmp_path / "absent", progress=False)
