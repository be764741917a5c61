"""Shared fixtures: small generated datasets and descriptor files, and the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vprkit.data.synthetic import generate_dataset
from vprkit.extract.split import ExtractOptions, extract
from vprkit.models import ModelConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VPRKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
SIZE = (64, 80)


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "images").is_dir():
        pytest.skip(f"real dataset {name} not found at {path} (set VPRKIT_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def small_root(tmp_path_factory) -> Path:
    """A generated dataset: test split with 24 database images and 12 queries (2 unmapped)."""
    root = tmp_path_factory.mktemp("small")
    return generate_dataset(root, {"test": (24, 12), "train": (16, 8)}, size=SIZE, seed=1)


def options(**kw) -> ExtractOptions:
    base = dict(scales=(1,), resize=SIZE, batch_size=5, workers=0, device="cpu")
    base.update(kw)
    return ExtractOptions(**base)


def config(aggregation: str = "gem", **kw) -> ModelConfig:
    return ModelConfig(backbone="resnet18conv4", aggregation=aggregation, weights="none", **kw)


@pytest.fixture(scope="session")
def gem_file(small_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gem") / "gem.h5"
    return extract(small_root, out, config("gem"), options(scales=(1, 2, 3)), progress=False)


@pytest.fixture(scope="session")
def netvlad_file(small_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("netvlad") / "netvlad.h5"
    return extract(small_root, out, config("netvlad", clusters=8), options(scales=(1, 2, 3)), progress=False)
