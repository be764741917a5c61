"""Query views and the benchmark's six test methods, computed from stored descriptors.

The oracle is ``tests/reference/test_methods.py`` (an independent re-implementation of the
benchmark's ``_test_query_transform`` and ``test``, importing nothing from vprkit) on top of the
benchmark network of ``tests/reference/benchmark.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from reference.benchmark import build_reference, save_benchmark_checkpoint
from reference.test_methods import (
    benchmark_features,
    benchmark_test,
    load_normalized,
    query_transform,
)
from reference.test_methods import merge_maj_voting as ref_maj_voting
from reference.test_methods import merge_nearest_crop as ref_nearest_crop

from vprkit.cli import main
from vprkit.data.images import load_image, normalize, preprocess, view_image
from vprkit.data.synthetic import generate_dataset
from vprkit.descriptors.views import (
    TEST_METHODS,
    VIEWS,
    merge_maj_voting,
    merge_nearest_crop,
    parse_views,
    query_rows_for,
    top_n_voting,
)
from vprkit.errors import VprkitError
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.extract.split import ExtractOptions, extract
from vprkit.models import ModelConfig
from vprkit.store import DescriptorFile

RESIZE = (96, 128)
ALL_VIEWS = ",".join(VIEWS)
# (H, W) the queries are saved at: the benchmark's size, portrait, wide, square and small
QUERY_SIZES = [(96, 128), (120, 100), (90, 150), (80, 80), (72, 96)]


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def varied_dataset(root: Path) -> Path:
    """A generated test split whose queries have several sizes and aspect ratios."""
    generate_dataset(root, {"test": (36, 15)}, size=RESIZE, seed=3)
    for i, path in enumerate(sorted((root / "images/test/queries").glob("*.jpg"))):
        h, w = QUERY_SIZES[i % len(QUERY_SIZES)]
        with Image.open(path) as im:
            resized = im.convert("RGB").resize((w, h), Image.BILINEAR)
        resized.save(path, quality=95)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return varied_dataset(tmp_path_factory.mktemp("views_data"))


class Reference:
    """A benchmark network, its checkpoint and vprkit's file of it with every view."""

    def __init__(self, aggregation: str, root: Path, folder: Path):
        self.model = build_reference(aggregation, seed={"gem": 5, "netvlad": 9}[aggregation])
        self.checkpoint = save_benchmark_checkpoint(self.model, folder / f"{aggregation}.pth", "benchmark")
        self.file = folder / f"{aggregation}.h5"
        result = run_cli(
            "extract",
            root,
            "-o",
            self.file,
            "--checkpoint",
            self.checkpoint,
            "--resize",
            *RESIZE,
            "--views",
            ALL_VIEWS,
            "--scales",
            "1,2",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--quiet",
        )
        assert result.exit_code == 0, result.output + repr(result.exception)


@pytest.fixture(scope="module")
def references(root, tmp_path_factory) -> dict[str, Reference]:
    folder = tmp_path_factory.mktemp("views_models")
    return {agg: Reference(agg, root, folder) for agg in ("gem", "netvlad")}


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --------------------------------------------------------------------------- preprocessing
class TestViewImages:
    """Each view's images against the oracle's torchvision calls."""

    @pytest.mark.parametrize("size", QUERY_SIZES + [(94, 130)])
    @pytest.mark.parametrize("view", ["single_query", "central_crop", "five_crops"])
    def test_equals_benchmark_transform(self, tmp_path, view, size):
        path = tmp_path / "q.png"
        rng = np.random.default_rng(size[0] * 1000 + size[1])
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        ours = preprocess(load_image(path), RESIZE, (1,), view)[0]
        theirs = query_transform(load_normalized(path), view, RESIZE)
        assert ours.shape == theirs.shape
        assert max_abs_diff(ours, theirs) < 1e-5

    def test_shapes(self):
        image = normalize(torch.rand(3, 120, 100))
        assert view_image(image, "single_query", RESIZE).shape == (3, 115, 96)
        assert view_image(image, "central_crop", RESIZE).shape == (3, 96, 128)
        assert view_image(image, "five_crops", RESIZE).shape == (5, 3, 96, 96)

    def test_five_crops_order_is_torchvisions(self):
        image = torch.arange(96 * 160, dtype=torch.float32).view(1, 96, 160).expand(3, -1, -1)
        crops = view_image(image, "five_crops", RESIZE)
        assert torch.equal(crops[0], image[:, :, :96])  # top-left
        assert torch.equal(crops[1], image[:, :, -96:])  # top-right
        assert torch.equal(crops[4], image[:, :, 32:128])  # centre

    def test_scales_of_a_view(self):
        image = torch.rand(3, 120, 100)
        at = preprocess(image, RESIZE, (1, 2, 3), "five_crops")
        assert [tuple(t.shape) for t in at] == [(5, 3, 96, 96), (5, 3, 48, 48), (5, 3, 32, 32)]

    def test_views_need_a_resize(self):
        with pytest.raises(ValueError, match="needs a resize"):
            preprocess(torch.rand(3, 20, 20), None, (1,), "central_crop")


# --------------------------------------------------------------------------- the merges
def random_results(rng, queries: int, k: int, n_db: int):
    """Search results of 5 crops: sorted distances, distinct labels per crop, duplicates across
    crops."""
    d = np.sort(rng.random((5 * queries, k)).astype(np.float32), axis=1)
    p = np.stack([rng.choice(n_db, size=k, replace=False) for _ in range(5 * queries)])
    return d, p.astype(np.int64)


class TestMerges:
    @pytest.mark.parametrize("k,n_db", [(20, 30), (5, 7), (3, 3), (20, 1000)])
    def test_nearest_crop_equals_reference(self, k, n_db):
        d, p = random_results(np.random.default_rng(k + n_db), 40, k, n_db)
        _, ours = merge_nearest_crop(d, p, k)
        assert np.array_equal(ours, ref_nearest_crop(d, p, k))

    @pytest.mark.parametrize("weight", [0.01, 0.1, 0.0])
    @pytest.mark.parametrize("k,n_db", [(20, 30), (5, 7), (12, 15)])
    def test_maj_voting_equals_reference(self, k, n_db, weight):
        d, p = random_results(np.random.default_rng(7 * k + n_db), 40, k, n_db)
        _, ours = merge_maj_voting(d, p, k, weight)
        assert np.array_equal(ours, ref_maj_voting(d, p, k, weight))

    def test_duplicates_across_crops_keep_the_closest(self):
        p = np.array([[3, 1], [1, 4], [3, 5], [6, 3], [1, 2]])
        d = np.array([[0.5, 0.6], [0.1, 0.9], [0.4, 0.7], [0.2, 0.3], [0.8, 0.95]], np.float32)
        dist, pred = merge_nearest_crop(d, p, 2)
        assert pred.tolist() == [[1, 6]] and dist[0].tolist() == pytest.approx([0.1, 0.2])

    def test_ties_keep_the_crops_order(self):
        p = np.array([[7, 8], [9, 7], [8, 9], [10, 11], [12, 13]])
        d = np.full((5, 2), 0.5, np.float32)
        _, pred = merge_nearest_crop(d, p, 2)
        assert pred.tolist() == [[7, 8]]  # first crop first: the stable order

    def test_fewer_database_rows_than_candidates(self):
        # 2 database images, k = 2: every crop finds both; 10 candidates, 2 distinct
        p = np.array([[0, 1], [1, 0], [0, 1], [0, 1], [1, 0]])
        d = np.array([[1, 2], [0.5, 3], [1, 2], [1, 2], [0.7, 4]], np.float32)
        for merge in (merge_nearest_crop, merge_maj_voting):
            _, pred = merge(d, p, 2)
            assert pred.tolist() == [[1, 0]]

    def test_padding_where_the_search_had_too_few_rows(self):
        p = np.array([[0, -1], [0, -1], [0, -1], [0, -1], [0, -1]])
        d = np.array([[1, np.inf]] * 5, np.float32)
        dist, pred = merge_nearest_crop(d, p, 2)
        assert pred.tolist() == [[0, -1]] and np.isinf(dist[0, 1])

    def test_voting_reorders(self):
        # nearest_crop ranks 7 first; image 1, the top-1 of three crops, wins the vote
        p = np.array([[7, 8], [1, 8], [1, 9], [1, 10], [11, 12]])
        d = np.array([[0.100, 0.2], [0.105, 0.3], [0.106, 0.3], [0.107, 0.3], [0.5, 0.6]], np.float32)
        assert merge_nearest_crop(d, p, 2)[1].tolist() == [[7, 1]]
        dist, pred = merge_maj_voting(d, p, 2, 0.01)
        assert pred.tolist() == [[1, 7]]
        # top-1: 3 votes -> -0.03; top-5 (= all 2 columns): 3 votes -> -0.006; top-10: -0.003
        assert dist[0, 0] == pytest.approx(0.105 - 0.03 - 0.006 - 0.003, abs=1e-6)

    def test_top_n_voting_in_place(self):
        p = np.array([[4, 5], [4, 6], [7, 5], [8, 9], [4, 1]])
        d = np.ones((5, 2), np.float32)
        top_n_voting(p, d, 1, 0.1)  # 4 is the top-1 of three crops
        assert d[:, 0].tolist() == pytest.approx([0.7, 0.7, 1, 1, 0.7])
        assert (d[:, 1] == 1).all()

    def test_five_crops_mean_is_not_normalised(self):
        rows = np.random.default_rng(0).random((10, 4)).astype(np.float32)
        mean = query_rows_for("five_crops", rows)
        assert mean.shape == (2, 4) and np.allclose(mean, rows.reshape(2, 5, 4).mean(axis=1))

    def test_bad_shapes_refused(self):
        with pytest.raises(ValueError, match="5 x queries"):
            merge_nearest_crop(np.ones((4, 2)), np.ones((4, 2), np.int64), 2)


# --------------------------------------------------------------------------- the benchmark
class TestBenchmarkParity:
    """A benchmark checkpoint: stored views equal the oracle's features, and ``vprkit evaluate
    --test-method M`` equals the benchmark's Recall@N for every method."""

    @pytest.mark.parametrize("aggregation", ["gem", "netvlad"])
    @pytest.mark.parametrize(
        "method", ["hard_resize", "single_query", "central_crop", "five_crops", "nearest_crop"]
    )
    def test_stored_rows_equal_benchmark_features(self, root, references, aggregation, method):
        ref = references[aggregation]
        split = root / "images/test"
        db_paths = sorted((split / "database").glob("*.jpg"))
        q_paths = sorted((split / "queries").glob("*.jpg"))
        database, queries = benchmark_features(ref.model, db_paths, q_paths, method, RESIZE)
        with DescriptorFile(ref.file) as f:
            view = TEST_METHODS[method]
            stored = f.read_rows("queries", (1,), 0, f.num_rows("queries", view), view)
            ours = query_rows_for(method, stored)
            assert max_abs_diff(f.read_rows("database", (1,), 0, f.num("database")), database) < 1e-4
        assert ours.shape == queries.shape
        assert max_abs_diff(ours, queries) < 1e-4

    @pytest.mark.parametrize("aggregation", ["gem", "netvlad"])
    @pytest.mark.parametrize("method", list(TEST_METHODS))
    def test_recalls_equal_benchmark(self, root, references, aggregation, method):
        ref = references[aggregation]
        expected = benchmark_test(ref.model, root, method, RESIZE)["recalls"]
        result = run_cli("evaluate", ref.file, "--test-method", method, "--json", "-")
        assert result.exit_code == 0, result.output
        row = json.loads(result.output)[0]
        assert row["test_method"] == method
        assert row["majority_weight"] == (0.01 if method == "maj_voting" else None)
        assert [row["recalls"][str(n)] for n in (1, 5, 10, 20)] == pytest.approx(expected.tolist(), abs=1e-9)

    def test_methods_differ(self, references):
        """The views are not the same rows under other names."""
        with DescriptorFile(references["gem"].file) as f:
            rows = {
                v: f.read_rows("queries", (1,), 0, f.num("queries"), v)
                for v in ("hard_resize", "single_query", "central_crop")
            }
        assert max_abs_diff(rows["hard_resize"], rows["central_crop"]) > 1e-3
        assert max_abs_diff(rows["hard_resize"], rows["single_query"]) > 1e-3

    @pytest.mark.parametrize("method", ["five_crops", "maj_voting"])
    def test_pyramid_without_the_model(self, references, tmp_path, method):
        """Every method at a pyramid, from a copy of the file alone (no checkpoint)."""
        copy = tmp_path / "alone.h5"
        copy.write_bytes(references["gem"].file.read_bytes())
        result = run_cli("evaluate", copy, "--test-method", method, "--scale", "1+2", "--json", "-")
        assert result.exit_code == 0, result.output
        with DescriptorFile(copy) as f:
            crops = f.read_rows("queries", (1, 2), 0, f.num_rows("queries", "five_crops"), "five_crops")
            single = [
                f.read_rows("queries", (s,), 0, f.num_rows("queries", "five_crops"), "five_crops")
                for s in (1, 2)
            ]
        assert crops.shape == single[0].shape
        assert max_abs_diff(crops, single[0]) > 1e-4  # a pyramid, not scale 1
        assert json.loads(result.output)[0]["scale"] == "1+2"

    def test_predictions_record_the_method(self, references, tmp_path):
        out = tmp_path / "p.csv"
        result = run_cli(
            "evaluate",
            references["gem"].file,
            "--test-method",
            "nearest_crop",
            "--predictions",
            out,
            "--recalls",
            "1,5",
        )
        assert result.exit_code == 0, result.output
        lines = out.read_text().splitlines()
        header, first = lines[0].split(","), lines[1].split(",")
        assert header[6] == "method" and first[6] == "nearest_crop"
        assert len(lines) == 1 + 15 * 5

    def test_approximate_index(self, references):
        exact = evaluate_file(references["gem"].file, test_method="nearest_crop")
        approx = evaluate_file(references["gem"].file, test_method="nearest_crop", index="Flat")
        assert approx.recalls == exact.recalls and approx.search.startswith("approximate")

    def test_info_lists_the_views(self, references):
        result = run_cli("info", references["gem"].file, "--json", "-")
        assert json.loads(result.output)["views"] == {"1": list(VIEWS), "2": list(VIEWS)}


# --------------------------------------------------------------------------- extract and refusals
def small_config() -> ModelConfig:
    return ModelConfig(backbone="resnet18conv4", aggregation="gem", weights="none")


def small_options(**kw) -> ExtractOptions:
    base = dict(scales=(1,), resize=(48, 64), batch_size=4, workers=0, device="cpu")
    base.update(kw)
    return ExtractOptions(**base)


class TestExtractViews:
    def test_extend_with_views_keeps_the_rows(self, root, tmp_path):
        out = tmp_path / "e.h5"
        extract(root, out, small_config(), small_options(scales=(1, 2)), progress=False)
        with DescriptorFile(out) as f:
            before = f.read_rows("queries", (1,), 0, f.num("queries"))
            assert f.views() == ["hard_resize"]
        extract(
            root,
            out,
            small_config(),
            small_options(scales=(1, 2), views=("hard_resize", "five_crops")),
            progress=False,
        )
        full = tmp_path / "full.h5"
        extract(
            root,
            full,
            small_config(),
            small_options(scales=(1, 2), views=("hard_resize", "five_crops")),
            progress=False,
        )
        with DescriptorFile(out) as f, DescriptorFile(full) as g:
            assert f.views() == ["hard_resize", "five_crops"]
            assert np.array_equal(f.read_rows("queries", (1,), 0, f.num("queries")), before)
            n = f.num_rows("queries", "five_crops")
            assert n == 5 * f.num("queries")
            for scales in ((1,), (1, 2)):
                assert (
                    max_abs_diff(
                        f.read_rows("queries", scales, 0, n, "five_crops"),
                        g.read_rows("queries", scales, 0, n, "five_crops"),
                    )
                    < 1e-5
                )
            assert f.image_size(2, "five_crops") == (24, 24)

    def test_done_when_the_file_holds_them(self, root, tmp_path, caplog):
        out = tmp_path / "d.h5"
        opts = small_options(views=("hard_resize", "central_crop"))
        extract(root, out, small_config(), opts, progress=False)
        stamp = out.stat().st_mtime_ns
        with caplog.at_level("INFO", logger="vprkit"):  # (the library logs; only the CLI prints)
            extract(root, out, small_config(), opts)
        assert out.stat().st_mtime_ns == stamp
        assert "nothing to do" in caplog.text

    def test_interrupted_view_pass_resumes(self, root, tmp_path, monkeypatch):
        from vprkit.store import DescriptorWriter

        out = tmp_path / "r.h5"
        opts = small_options(views=("hard_resize", "five_crops"))
        real = DescriptorWriter.commit_rows

        def interrupt(self, role, scales, rows, view="hard_resize"):
            real(self, role, scales, rows, view)
            if view == "five_crops":
                raise KeyboardInterrupt

        monkeypatch.setattr(DescriptorWriter, "commit_rows", interrupt)
        with pytest.raises(KeyboardInterrupt):
            extract(root, out, small_config(), opts, progress=False)
        monkeypatch.undo()
        assert not out.exists()
        extract(root, out, small_config(), opts, progress=False)
        reference = extract(root, tmp_path / "ref.h5", small_config(), opts, progress=False)
        with DescriptorFile(out) as f, DescriptorFile(reference) as g:
            n = f.num_rows("queries", "five_crops")
            assert np.array_equal(
                f.read_rows("queries", (1,), 0, n, "five_crops"),
                g.read_rows("queries", (1,), 0, n, "five_crops"),
            )

    def test_native_size_refused(self, root, tmp_path):
        with pytest.raises(VprkitError, match="relative to resize"):
            extract(
                root,
                tmp_path / "n.h5",
                small_config(),
                small_options(resize=None, views=("five_crops",)),
                progress=False,
            )

    def test_unknown_view_refused(self):
        with pytest.raises(VprkitError, match="unknown view 'six_crops'"):
            parse_views("hard_resize,six_crops")
        assert parse_views("five_crops,hard_resize,five_crops") == ("hard_resize", "five_crops")

    def test_missing_view_names_the_option(self, root, tmp_path):
        out = extract(root, tmp_path / "m.h5", small_config(), small_options(), progress=False)
        result = run_cli("evaluate", out, "--test-method", "maj_voting")
        assert result.exit_code == 1
        assert "no five_crops query descriptors" in result.output
        assert "--views five_crops" in result.output
        assert len(result.output.strip().splitlines()) == 1

    def test_unknown_method_is_a_usage_error(self, root, tmp_path):
        result = run_cli("evaluate", tmp_path / "x.h5", "--test-method", "six_crops")
        assert result.exit_code == 2 and "test method" in result.output


class TestDownstream:
    """Shards and ensembles keep the views."""

    def test_merged_shards_equal_one_extraction(self, root, tmp_path):
        opts = dict(views=("hard_resize", "five_crops", "single_query"), scales=(1, 2))
        whole = extract(root, tmp_path / "w.h5", small_config(), small_options(**opts), progress=False)
        shards = [
            extract(
                root, tmp_path / "s.h5", small_config(), small_options(shard=(i, 3), **opts), progress=False
            )
            for i in range(3)
        ]
        result = run_cli("merge", *shards, "-o", tmp_path / "m.h5", "--quiet")
        assert result.exit_code == 0, result.output
        with DescriptorFile(whole) as f, DescriptorFile(tmp_path / "m.h5") as g:
            assert g.views() == f.views()
            for view in f.views():
                n = f.num_rows("queries", view)
                assert (
                    max_abs_diff(
                        f.read_rows("queries", (1, 2), 0, n, view), g.read_rows("queries", (1, 2), 0, n, view)
                    )
                    < 1e-5
                )

    def test_ensemble_per_view(self, root, tmp_path):
        views = ("hard_resize", "five_crops")
        a = extract(root, tmp_path / "a.h5", small_config(), small_options(views=views), progress=False)
        b = extract(
            root,
            tmp_path / "b.h5",
            ModelConfig(backbone="resnet18conv4", aggregation="netvlad", clusters=4, weights="none"),
            small_options(views=views + ("central_crop",)),
            progress=False,
        )
        out = tmp_path / "ens.h5"
        result = run_cli("combine", a, b, "-o", out)
        assert result.exit_code == 0, result.output
        assert "no central_crop query view" in result.output
        with DescriptorFile(out) as e, DescriptorFile(a) as fa, DescriptorFile(b) as fb:
            assert e.views() == ["hard_resize", "five_crops"]
            n = e.num_rows("queries", "five_crops")
            expected = np.concatenate(
                [
                    fa.read_rows("queries", (1,), 0, n, "five_crops"),
                    fb.read_rows("queries", (1,), 0, n, "five_crops"),
                ],
                axis=1,
            )
            assert max_abs_diff(e.read_rows("queries", (1,), 0, n, "five_crops"), expected) < 1e-6
        assert evaluate_file(out, test_method="maj_voting").queries == 15
