"""Tests of the benchmark test-method oracle (tests/reference/test_methods.py) against hand computations."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from reference.test_methods import (
    METHODS,
    benchmark_features,
    benchmark_test,
    load_normalized,
    merge_maj_voting,
    merge_nearest_crop,
    positives,
    query_transform,
    top_n_voting,
)

RESIZE = (96, 128)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
EAST, NORTH = 500000.0, 4000000.0
# query (H, W), database image it shows (None: unrelated image), east offset from that image
QUERIES = [
    ((96, 128), 0, 3.0),
    ((120, 100), 2, -4.0),
    ((90, 150), 4, 2.0),
    ((94, 200), 1, 3.0),
    ((96, 128), None, 0.0),
]
N_DB = 6
FLOAT_MAX = np.finfo(np.float32).max


class L2Norm(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=1)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), L2Norm()
    )


def smooth_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return small.resize((size[1], size[0]), Image.BICUBIC)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    db_dir, q_dir = base / "images/test/database", base / "images/test/queries"
    db_dir.mkdir(parents=True)
    q_dir.mkdir(parents=True)
    rng = np.random.default_rng(3)
    db_images = []
    for i in range(N_DB):  # 30 m apart, so a query 2-4 m from image i has exactly one positive
        db_images.append(smooth_image(rng, (96, 128)))
        db_images[-1].save(db_dir / f"@{EAST + 30 * i:.2f}@{NORTH:.2f}@@.jpg", quality=95)
    for n, ((h, w), source, offset) in enumerate(QUERIES):
        if source is None:
            smooth_image(rng, (h, w)).save(q_dir / f"@{EAST + 90000 + n:.2f}@{NORTH:.2f}@@.jpg")
        else:
            image = db_images[source].resize((w, h), Image.BILINEAR)
            image.save(q_dir / f"@{EAST + 30 * source + offset:.2f}@{NORTH:.2f}@@.jpg", quality=95)
    return base


def paths(root, role: str) -> list[str]:
    return sorted(str(p) for p in (root / "images/test" / role).glob("*.jpg"))


def expected_positive_count() -> int:
    return sum(source is not None for _, source, _ in QUERIES)


# --------------------------------------------------------------------------- transforms


def test_load_normalized_is_totensor_then_imagenet_normalize(tmp_path):
    path = tmp_path / "@1@2@@.jpg"
    smooth_image(np.random.default_rng(0), (30, 40)).save(path)
    pixels = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
    expected = ((pixels - MEAN) / STD).transpose(2, 0, 1)
    got = load_normalized(path)
    assert got.shape == (3, 30, 40) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    "size, single",
    [((96, 128), (96, 128)), ((120, 100), (115, 96)), ((90, 150), (96, 160)), ((94, 200), (96, 204))],
)
def test_transform_shapes(size, single):
    img = torch.randn(3, *size)
    assert query_transform(img, "hard_resize", RESIZE).shape == (3, 96, 128)
    assert query_transform(img, "single_query", RESIZE).shape == (3, *single)
    assert query_transform(img, "central_crop", RESIZE).shape == (3, 96, 128)
    for method in ("five_crops", "nearest_crop", "maj_voting"):
        assert query_transform(img, method, RESIZE).shape == (5, 3, 96, 96)


def test_single_query_resizes_shorter_side_keeping_aspect():
    img = torch.randn(3, 120, 100)
    # shorter side (W = 100) -> 96, longer side int(96 * 120 / 100) = 115
    expected = TF.resize(img, [115, 96])
    assert torch.equal(query_transform(img, "single_query", RESIZE), expected)


@pytest.mark.parametrize("size, resized", [((120, 100), (115, 96)), ((90, 150), (96, 160))])
def test_five_crops_order_is_tl_tr_bl_br_center(size, resized):
    img = torch.randn(3, *size)
    big = TF.resize(img, list(resized))
    crops = query_transform(img, "five_crops", RESIZE)
    s = 96
    h, w = resized
    top, left = int(round((h - s) / 2)), int(round((w - s) / 2))
    expected = [
        big[:, :s, :s],
        big[:, :s, -s:],
        big[:, -s:, :s],
        big[:, -s:, -s:],
        big[:, top : top + s, left : left + s],
    ]
    for c in range(5):
        assert torch.equal(crops[c], expected[c]), c
    for method in ("nearest_crop", "maj_voting"):
        assert torch.equal(query_transform(img, method, RESIZE), crops)


def test_central_crop_uses_nearest_interpolation():
    img = torch.randn(3, 120, 100)
    # scale = max(96 / 120, 128 / 100) = 1.28 -> floor(120 * 1.28) = 153 rows, 128 columns;
    # nearest source index floor(i / 1.28) = floor(i * 0.78125), exact in float32
    rows = np.minimum(np.floor(np.arange(153) * 0.78125).astype(int), 119)
    cols = np.minimum(np.floor(np.arange(128) * 0.78125).astype(int), 99)
    scaled = img[:, rows][:, :, cols]
    top = int(round((153 - 96) / 2))  # round(28.5) = 28
    expected = scaled[:, top : top + 96, :]
    got = query_transform(img, "central_crop", RESIZE)
    assert torch.equal(got, expected)
    bilinear = torch.nn.functional.interpolate(img[None], scale_factor=1.28, mode="bilinear")[0]
    assert not torch.allclose(got, TF.center_crop(bilinear, list(RESIZE)), atol=1e-3)


def test_central_crop_zero_pads_when_floor_loses_a_pixel():
    # 94 * (96 / 94) < 96 in floating point: interpolate gives 95 rows and center_crop pads a zero row
    assert math.floor(94 * (96 / 94)) == 95
    img = torch.randn(3, 94, 200) + 10.0
    got = query_transform(img, "central_crop", RESIZE)
    assert got.shape == (3, 96, 128)
    assert torch.count_nonzero(got[:, -1]) == 0
    assert bool((got[:, :-1] > 0).all())


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError):
        query_transform(torch.zeros(3, 8, 8), "ten_crops", RESIZE)


# --------------------------------------------------------------------------- nearest_crop merge


def test_nearest_crop_merge_drops_duplicates_keeping_the_closest():
    preds = np.array([[4, 2, 9], [2, 4, 7], [4, 7, 2], [9, 4, 2], [7, 9, 4]], np.int64)
    dists = np.array(
        [[0.30, 0.50, 0.90], [0.20, 0.60, 0.70], [0.35, 0.40, 0.80], [0.25, 0.55, 0.65], [0.45, 0.52, 0.95]],
        np.float32,
    )
    before = (preds.copy(), dists.copy())
    # candidates by distance: 2@.20, 9@.25, 4@.30, 4@.35, 7@.40 ... -> [2, 9, 4]
    assert merge_nearest_crop(dists, preds, 3).tolist() == [[2, 9, 4]]
    assert np.array_equal(preds, before[0]) and np.array_equal(dists, before[1])


def test_nearest_crop_merge_rows_are_grouped_per_query():
    preds = np.array(
        [[1, 2], [1, 3], [1, 4], [1, 5], [1, 6], [7, 8], [8, 7], [9, 8], [7, 9], [8, 9]], np.int64
    )
    dists = np.array(
        [
            [0.5, 0.6],
            [0.4, 0.9],
            [0.45, 0.95],
            [0.41, 0.96],
            [0.42, 0.35],
            [0.10, 0.20],
            [0.05, 0.30],
            [0.15, 0.25],
            [0.12, 0.13],
            [0.07, 0.08],
        ],
        np.float32,
    )
    # query 0: 6@.35, 1@.40 ; query 1: 8@.05, 8@.07, 9@.08 -> [8, 9]
    assert merge_nearest_crop(dists, preds, 2).tolist() == [[6, 1], [8, 9]]


def test_nearest_crop_merge_ties():
    # the same label tied across crops is kept once
    preds = np.array([[5, 1], [5, 2], [3, 5], [4, 6], [6, 7]], np.int64)
    dists = np.array([[0.1, 0.5], [0.1, 0.6], [0.3, 0.7], [0.4, 0.8], [0.2, 0.9]], np.float32)
    assert merge_nearest_crop(dists, preds, 2).tolist() == [[5, 6]]
    # different labels tied at the smallest distance: both come first, the order is numpy's
    # default (unstable) argsort's, as in the benchmark
    preds = np.array([[3, 1, 9], [8, 2, 9], [1, 3, 9], [4, 6, 9], [6, 7, 9]], np.int64)
    dists = np.array(
        [[0.2, 0.5, 0.91], [0.2, 0.6, 0.92], [0.3, 0.7, 0.93], [0.4, 0.8, 0.94], [0.25, 0.9, 0.95]],
        np.float32,
    )
    got = merge_nearest_crop(dists, preds, 3)[0]
    assert set(got[:2].tolist()) == {3, 8} and got[2] == 6
    first_two = preds.reshape(-1)[np.argsort(dists.reshape(-1))[:2]]
    assert got[:2].tolist() == first_two.tolist()


def faiss_search(db: np.ndarray, queries: np.ndarray, k: int):
    index = faiss.IndexFlatL2(db.shape[1])
    index.add(db.astype(np.float32))
    return index.search(queries.astype(np.float32), k)


def test_nearest_crop_merge_with_fewer_database_rows_than_k():
    db = np.array([[0.0, 0.0], [10.0, 0.0]])
    crops = np.array(
        [
            [1, 0],
            [2, 0],
            [8.5, 0],
            [3, 0],
            [4, 0],  # query 0: closest is 0, then 1
            [9, 0],
            [8, 0],
            [1.5, 0],
            [7, 0],
            [6, 0],
        ],
        np.float64,
    )  # query 1: 1, then 0
    dists, preds = faiss_search(db, crops, 4)
    assert (preds[:, 2:] == -1).all() and (dists[:, 2:] == FLOAT_MAX).all()  # faiss padding
    assert merge_nearest_crop(dists, preds, 4).tolist() == [[0, 1, -1, -1], [1, 0, -1, -1]]
    # k - 1 database rows: exactly k distinct labels including the -1, which sorts last
    db3 = np.array([[0.0, 0.0], [10.0, 0.0], [30.0, 0.0]])
    dists, preds = faiss_search(db3, crops[:5], 4)
    assert merge_nearest_crop(dists, preds, 4).tolist() == [[0, 1, 2, -1]]


def test_merges_reject_bad_shapes():
    with pytest.raises(ValueError):
        merge_nearest_crop(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.int64), 3)
    with pytest.raises(ValueError):
        merge_maj_voting(np.zeros((5, 3), np.float32), np.zeros((5, 3), np.int64), 2, 0.01)


# --------------------------------------------------------------------------- maj_voting merge


VOTE_PREDS = np.array([[7, 1, 2], [1, 3, 4], [1, 5, 6], [1, 2, 3], [8, 9, 7]], np.int64)
VOTE_DISTS = np.array(
    [
        [0.100, 0.150, 0.600],
        [0.105, 0.700, 0.800],
        [0.106, 0.710, 0.810],
        [0.107, 0.720, 0.820],
        [0.108, 0.730, 0.830],
    ],
    np.float32,
)


def test_maj_voting_changes_the_order_versus_nearest_crop():
    assert merge_nearest_crop(VOTE_DISTS, VOTE_PREDS, 3).tolist() == [[7, 1, 8]]
    before = VOTE_DISTS.copy()
    # top1: label 1 is the first result of 3 crops -> -0.01 * 3 / 1 there;
    # top5 / top10 (all 3 columns): 1 seen 4 times (-0.008, -0.004), 7, 2 and 3 twice (-0.004, -0.002).
    # 1 ends at 0.105 - 0.03 - 0.012 = 0.063 < 7 at 0.100 - 0.006 = 0.094 < 8 at 0.108
    assert merge_maj_voting(VOTE_DISTS, VOTE_PREDS, 3, 0.01).tolist() == [[1, 7, 8]]
    assert np.array_equal(VOTE_DISTS, before)
    # a zero weight is nearest_crop
    assert merge_maj_voting(VOTE_DISTS, VOTE_PREDS, 3, 0.0).tolist() == [[7, 1, 8]]


def test_top_n_voting_edits_distances_in_place():
    dists = VOTE_DISTS.astype(np.float64)
    top_n_voting(VOTE_PREDS, dists, "top1", 0.01)
    expected = VOTE_DISTS.astype(np.float64)
    expected[1:4, 0] -= 0.03
    np.testing.assert_allclose(dists, expected, rtol=0, atol=1e-12)
    top_n_voting(VOTE_PREDS, dists, "top5", 0.01)
    top_n_voting(VOTE_PREDS, dists, "top10", 0.01)
    for label, count in ((1, 4), (7, 2), (2, 2), (3, 2)):
        expected[VOTE_PREDS == label] -= 0.01 * count * (1 / 5 + 1 / 10)
    np.testing.assert_allclose(dists, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("selected", [0, slice(0, 5)])
def test_numpy_chained_masked_subtraction_writes_through(selected):
    # the benchmark's ``distances[:, selected][mask] -= x``: basic indexing gives a view, so it edits
    distances = np.ones((5, 6), np.float32)
    mask = np.ones(distances[:, selected].shape, bool)
    distances[:, selected][mask] -= 0.5
    changed = np.zeros((5, 6), bool)
    changed[:, selected] = True
    assert np.all(distances[changed] == 0.5) and np.all(distances[~changed] == 1.0)


def test_top_n_voting_arithmetic_follows_numpy_scalar_promotion():
    # delta = 0.01 * np.int64(2) / 1 is a numpy float64 scalar: with numpy >= 2 (NEP 50) the
    # float32 distance is updated in float64 and rounded, with numpy 1.x in float32
    value = np.float32(0.10008999705314636)
    via_float64 = np.float32(np.float64(value) - 0.02)
    via_float32 = np.float32(value - np.float32(0.02))
    assert via_float64 != via_float32
    preds = np.array([[3, 1], [3, 2], [4, 5], [6, 7], [8, 9]], np.int64)
    dists = np.full((5, 2), 0.5, np.float32)
    dists[:2, 0] = value
    top_n_voting(preds, dists, "top1", 0.01)
    numpy2 = int(np.__version__.split(".")[0]) >= 2
    assert dists.dtype == np.float32
    assert dists[0, 0] == dists[1, 0] == (via_float64 if numpy2 else via_float32)


def test_maj_voting_with_fewer_database_rows_than_k():
    db = np.array([[0.0, 0.0], [10.0, 0.0], [4.0, 0.0]])
    crops = np.array([[0.5, 0], [1.5, 0], [8.5, 0], [3, 0], [4.4, 0]], np.float64)
    dists, preds = faiss_search(db, crops, 5)
    assert (preds[:, 3:] == -1).all()
    # closest: 2 @ 0.16 (crop at 4.4), 0 @ 0.25 (crop at 0.5), 1 @ 2.25 (crop at 8.5); the votes
    # (0 and 2 top1 twice, every label and the repeated -1 in all windows) keep that order
    assert merge_nearest_crop(dists, preds, 5).tolist() == [[2, 0, 1, -1, -1]]
    assert merge_maj_voting(dists, preds, 5, 0.01).tolist() == [[2, 0, 1, -1, -1]]


# --------------------------------------------------------------------------- features and test()


def test_positives_are_within_25_metres(root):
    pos = positives(paths(root, "database"), paths(root, "queries"))
    # sorted query names: east offsets 3 (db 0), 33 (db 1), 56 (db 2), 122 (db 4), far away
    assert [p.tolist() for p in pos] == [[0], [1], [2], [4], []]


@pytest.mark.parametrize("method", METHODS)
def test_benchmark_features_shapes_and_values(root, method):
    model = tiny_model()
    db_paths, q_paths = paths(root, "database"), paths(root, "queries")
    database, queries = benchmark_features(model, db_paths, q_paths, method, RESIZE, batch_size=4)
    nq = len(q_paths)
    assert database.dtype == queries.dtype == np.float32
    assert database.shape == (N_DB, 8)
    assert queries.shape == ((5 * nq, 8) if method in ("nearest_crop", "maj_voting") else (nq, 8))
    with torch.no_grad():
        expected_db = np.stack(
            [model(TF.resize(load_normalized(p), list(RESIZE))[None])[0].numpy() for p in db_paths]
        )
        np.testing.assert_allclose(database, expected_db, atol=1e-5)
        for i, p in enumerate(q_paths):
            img = query_transform(load_normalized(p), method, RESIZE)
            out = model(img if img.ndim == 4 else img[None]).numpy()
            if method == "five_crops":
                np.testing.assert_allclose(queries[i], out.mean(0), atol=1e-5)
            elif method in ("nearest_crop", "maj_voting"):
                np.testing.assert_allclose(queries[5 * i : 5 * i + 5], out, atol=1e-5)
            else:
                np.testing.assert_allclose(queries[i], out[0], atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_benchmark_test_runs_for_every_method(root, method):
    result = benchmark_test(tiny_model(), root, method, RESIZE)
    recalls = result["recalls"]
    assert recalls.shape == (4,)
    assert np.all((recalls >= 0) & (recalls <= 100)) and np.all(np.diff(recalls) >= 0)
    nq = len(QUERIES)
    assert result["predictions"].shape == (nq, 20)
    # 20 > 6 database images: every image is predicted, the rest is -1
    assert (result["predictions"][:, N_DB:] == -1).all()
    assert all(sorted(row[:N_DB].tolist()) == list(range(N_DB)) for row in result["predictions"])
    assert recalls[-1] == pytest.approx(100 * expected_positive_count() / nq)
    assert result["database"].shape == (N_DB, 8)
    assert len(result["queries"]) == (5 * nq if method in ("nearest_crop", "maj_voting") else nq)


@pytest.mark.parametrize("method", ["nearest_crop", "maj_voting"])
def test_benchmark_test_with_k_below_database_size(root, method):
    result = benchmark_test(tiny_model(), root, method, RESIZE, recall_values=(1, 2, 3))
    preds = result["predictions"]
    assert preds.shape == (len(QUERIES), 3) and (preds >= 0).all()
    assert all(len(set(row.tolist())) == 3 for row in preds)
    assert np.all(np.diff(result["recalls"]) >= 0)
