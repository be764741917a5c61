"""Ensembles: concatenation and PCA against numpy / scikit-learn, alignment, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_file
from sklearn.decomposition import PCA, IncrementalPCA

from vprkit.cli import main
from vprkit.ensemble.combining import EnsembleTransform, combine
from vprkit.errors import VprkitError
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.store import DescriptorFile, partial_path


def rows(path: Path, role: str, spec=(1,)) -> np.ndarray:
    with DescriptorFile(path) as f:
        return f.read_rows(role, spec, 0, f.num(role))


def permuted_copy(src: Path, dst: Path, role: str, perm: np.ndarray) -> Path:
    """The same descriptor file with the rows of ``role`` in another order."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:

        def reorder(name, obj):
            if (
                isinstance(obj, h5py.Dataset)
                and (name.startswith(f"{role}/") or f"/{role}" in name)
                and name[:6] != "model/"
            ):
                obj[...] = obj[()][perm]

        f.visititems(reorder)
    return dst


class TestConcatenation:
    def test_plain_concat_equals_numpy(self, gem_file, netvlad_file, tmp_path):
        out = combine([gem_file, netvlad_file], tmp_path / "cat.h5", progress=False)
        for role in ("database", "queries"):
            expected = np.concatenate([rows(gem_file, role), rows(netvlad_file, role)], axis=1)
            np.testing.assert_array_equal(rows(out, role), expected)
        with DescriptorFile(out) as f:
            assert f.dim == 256 + 8 * 256 and f.model["type"] == "ensemble"
            assert f.names("database") == DescriptorFile(gem_file).names("database")

    def test_per_input_scales_and_pyramids(self, gem_file, netvlad_file, tmp_path):
        out = combine([gem_file, netvlad_file], tmp_path / "s.h5", scales=["1+2+3", "2"], progress=False)
        expected = np.concatenate(
            [rows(gem_file, "queries", (1, 2, 3)), rows(netvlad_file, "queries", (2,))], axis=1
        )
        np.testing.assert_array_equal(rows(out, "queries"), expected)

    def test_weights(self, gem_file, netvlad_file, tmp_path):
        out = combine([gem_file, netvlad_file], tmp_path / "w.h5", weights=[2.0, 1.0], progress=False)
        a, b = rows(gem_file, "database"), rows(netvlad_file, "database")
        joined = np.concatenate(
            [2 * a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)],
            axis=1,
        )
        joined /= np.linalg.norm(joined, axis=1, keepdims=True)
        np.testing.assert_allclose(rows(out, "database"), joined, rtol=1e-5, atol=1e-7)

    def test_rows_aligned_by_name(self, gem_file, netvlad_file, tmp_path):
        perm = np.random.default_rng(0).permutation(24)
        shuffled = permuted_copy(netvlad_file, tmp_path / "shuffled.h5", "database", perm)
        assert DescriptorFile(shuffled).names("database") != DescriptorFile(gem_file).names("database")
        out = combine([gem_file, shuffled], tmp_path / "a.h5", progress=False)
        reference = combine([gem_file, netvlad_file], tmp_path / "b.h5", progress=False)
        np.testing.assert_array_equal(rows(out, "database"), rows(reference, "database"))
        assert evaluate_file(out).recalls == evaluate_file(reference).recalls


@pytest.fixture
def pair(tmp_path):
    """A narrow (8-D, like GeM) and a wide (64-D, like NetVLAD) file of the same 300 + 40 images."""
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((64, 64)).astype(np.float32)  # correlated dimensions
    a = write_file(
        tmp_path / "a.h5", rng.random((300, 8), dtype=np.float32), rng.random((40, 8), dtype=np.float32)
    )
    b = write_file(
        tmp_path / "b.h5",
        rng.standard_normal((300, 64)).astype(np.float32) @ mix,
        rng.standard_normal((40, 64)).astype(np.float32) @ mix,
    )
    return a, b


class TestPCA:
    def test_paper_semantics_only_wider_inputs_reduced(self, pair, tmp_path):
        a, b = pair
        out = combine([a, b], tmp_path / "p.h5", pca=16, progress=False)
        sk = PCA(n_components=16, svd_solver="full").fit(rows(b, "database"))
        for role in ("database", "queries"):
            expected = np.concatenate([rows(a, role), sk.transform(rows(b, role))], axis=1)
            np.testing.assert_allclose(rows(out, role), expected, rtol=1e-4, atol=1e-4)
        with DescriptorFile(out) as f:
            assert f.dim == 8 + 16
            assert f.model["inputs"][0]["pca"] is None and f.model["inputs"][1]["pca"]["dim"] == 16

    def test_fit_on_queries_and_database_with_whitening(self, pair, tmp_path):
        a, b = pair
        out = combine(
            [a, b], tmp_path / "q.h5", pca=8, pca_fit="queries+database", whiten=True, progress=False
        )
        fit = np.concatenate([rows(b, "queries"), rows(b, "database")])
        sk = PCA(n_components=8, whiten=True, svd_solver="full").fit(fit)
        np.testing.assert_allclose(
            rows(out, "queries")[:, 8:], sk.transform(rows(b, "queries")), rtol=1e-4, atol=1e-4
        )
        np.testing.assert_array_equal(rows(out, "queries")[:, :8], rows(a, "queries"))  # 8 <= 8: kept

    def test_fit_file_of_the_same_model(self, gem_file, netvlad_file, tmp_path):
        out = combine(
            [gem_file, netvlad_file],
            tmp_path / "f.h5",
            pca=8,
            pca_fit=[gem_file, netvlad_file],
            progress=False,
        )
        for i, (src, cols) in enumerate(((gem_file, slice(0, 8)), (netvlad_file, slice(8, 16)))):
            fit = np.concatenate([rows(src, "queries"), rows(src, "database")])
            sk = PCA(n_components=8, svd_solver="full").fit(fit)
            np.testing.assert_allclose(
                rows(out, "database")[:, cols],
                sk.transform(rows(src, "database")),
                rtol=1e-3,
                atol=1e-4,
                err_msg=f"input {i}",
            )
        with pytest.raises(VprkitError, match="made by another model"):
            combine(
                [gem_file, netvlad_file],
                tmp_path / "g.h5",
                pca=8,
                pca_fit=[netvlad_file, netvlad_file],
                progress=False,
            )
        with pytest.raises(VprkitError, match="2 input.* reduced by PCA but 1 pca_fit"):
            combine(
                [gem_file, netvlad_file], tmp_path / "h.h5", pca=8, pca_fit=[netvlad_file], progress=False
            )

    def test_streamed_incremental_fit(self, pair, tmp_path):
        a, b = pair
        out = combine([a, b], tmp_path / "i.h5", pca=16, block_rows=64, pca_memory_bytes=0, progress=False)
        fit = rows(b, "database")
        sk = IncrementalPCA(n_components=16, batch_size=64)
        for start in range(0, 300, 64):
            sk.partial_fit(fit[start : min(300, start + 64)])
        np.testing.assert_allclose(rows(out, "database")[:, 8:], sk.transform(fit), rtol=1e-3, atol=1e-3)
        with DescriptorFile(out) as f:
            assert "incremental" in f.model["inputs"][1]["pca"]["method"]

    def test_stored_transform_applies_to_new_descriptors(self, pair, tmp_path):
        a, b = pair
        out = combine([a, b], tmp_path / "t.h5", pca=16, progress=False)
        transform = EnsembleTransform.from_file(out)
        sk = PCA(n_components=16, svd_solver="full").fit(rows(b, "database"))
        rng = np.random.default_rng(1)
        new_a, new_b = rng.random((5, 8), dtype=np.float32), rng.random((5, 64), dtype=np.float32)
        np.testing.assert_allclose(
            transform.apply([new_a, new_b]),
            np.concatenate([new_a, sk.transform(new_b)], axis=1),
            rtol=1e-4,
            atol=1e-4,
        )
        np.testing.assert_allclose(
            transform.apply([rows(a, "queries"), rows(b, "queries")]),
            rows(out, "queries"),
            rtol=1e-5,
            atol=1e-5,
        )
        with pytest.raises(VprkitError, match="input 2 has 8 dimensions"):
            transform.apply([new_a, new_a])


class TestRefusals:
    def test_different_images(self, gem_file, tmp_path):
        from conftest import config, options

        from vprkit.data.synthetic import generate_dataset
        from vprkit.extract.split import extract

        other_root = generate_dataset(tmp_path / "o", {"test": (20, 12)}, size=(64, 80), seed=5)
        other = extract(other_root, tmp_path / "o.h5", config(), options(), progress=False)
        with pytest.raises(
            VprkitError,
            match="describe different database images: "
            r"4 only in gem.h5 \(e.g. .*db00020",
        ):
            combine([gem_file, other], tmp_path / "x.h5", progress=False)
        assert not (tmp_path / "x.h5").exists()

    @pytest.mark.parametrize("pca, pattern", [(30, "larger than the 24 rows"), (0, "positive number")])
    def test_pca_too_large(self, gem_file, netvlad_file, tmp_path, pca, pattern):
        with pytest.raises(VprkitError, match=pattern):
            combine([gem_file, netvlad_file], tmp_path / "x.h5", pca=pca, progress=False)

    def test_pca_larger_than_input_dim(self, gem_file, netvlad_file, tmp_path):
        from vprkit.ensemble.combining import fit_pca

        with DescriptorFile(gem_file) as f, pytest.raises(VprkitError, match="larger than the 256 dim"):
            fit_pca((1,), 300, [(f, "database")], False, 100, 1 << 30, "gem.h5")

    def test_unknown_scale(self, gem_file, netvlad_file, tmp_path):
        with pytest.raises(VprkitError, match="scale 4 is not in"):
            combine([gem_file, netvlad_file], tmp_path / "x.h5", scales="4", progress=False)

    def test_incomplete_input(self, gem_file, netvlad_file, tmp_path):
        shutil.copyfile(gem_file, tmp_path / "inc.h5")
        with h5py.File(tmp_path / "inc.h5", "r+") as f:
            f.attrs["complete"] = False
        with pytest.raises(VprkitError, match="is incomplete"):
            combine([tmp_path / "inc.h5", netvlad_file], tmp_path / "x.h5", progress=False)

    def test_existing_output_and_bad_weights(self, gem_file, netvlad_file, tmp_path):
        (tmp_path / "x.h5").write_text("keep me")
        with pytest.raises(VprkitError, match="exists; pass overwrite"):
            combine([gem_file, netvlad_file], tmp_path / "x.h5", progress=False)
        assert (tmp_path / "x.h5").read_text() == "keep me"
        with pytest.raises(VprkitError, match="weights needs 2"):
            combine([gem_file, netvlad_file], tmp_path / "y.h5", weights=[1.0], progress=False)
        assert not partial_path(tmp_path / "y.h5").exists()


class TestCli:
    def test_combine_then_one_table(self, gem_file, netvlad_file, tmp_path):
        runner = CliRunner()
        cat, pca = tmp_path / "cat.h5", tmp_path / "pca.h5"
        assert (
            runner.invoke(
                main, ["combine", str(gem_file), str(netvlad_file), "-o", str(cat), "--quiet"]
            ).exit_code
            == 0
        )
        result = runner.invoke(
            main, ["combine", str(gem_file), str(netvlad_file), "-o", str(pca), "--pca", "16", "--quiet"]
        )
        assert result.exit_code == 0, result.output
        import json

        result = runner.invoke(
            main, ["evaluate", str(gem_file), str(netvlad_file), str(cat), str(pca), "--json", "-"]
        )
        table = json.loads(result.output)
        assert [r["dim"] for r in table] == [256, 2048, 2304, 32]
        bad = runner.invoke(main, ["combine", str(gem_file), "-o", str(tmp_path / "z.h5")])
        assert bad.exit_code != 0 and "at least two" in bad.output and "Traceback" not in bad.output
        one = runner.invoke(
            main, ["combine", str(netvlad_file), "--pca", "16", "-o", str(tmp_path / "one.h5"), "--quiet"]
        )
        assert one.exit_code == 0, one.output
        with DescriptorFile(tmp_path / "one.h5") as f:  # a PCA-reduced NetVLAD alone
            assert f.dim == 16


def test_duplicate_names_refused(tmp_path):
    rng = np.random.default_rng(0)
    a = write_file(tmp_path / "a.h5", rng.normal(size=(4, 8)), rng.normal(size=(2, 8)))
    b = write_file(tmp_path / "b.h5", rng.normal(size=(4, 8)), rng.normal(size=(2, 8)))
    with h5py.File(b, "r+") as f:  # as another tool might write it: a name twice, in another order
        f["database/names"][:] = ["@1@0@.jpg", "@0@0@.jpg", "@1@0@.jpg", "@3@0@.jpg"]
    with pytest.raises(VprkitError, match=r"b.h5 lists the database image @1@0@.jpg more than once"):
        combine([a, b], tmp_path / "c.h5", progress=False)


def test_streamed_exact_pca_equals_full_svd(tmp_path):
    """Rows that do not fit the memory budget but whose D x D covariance does: exact PCA by the
    streamed covariance, equal to scikit-learn's full-SVD PCA (same signs)."""
    from helpers import write_file

    rng = np.random.default_rng(3)
    basis = rng.normal(size=(12, 48))
    db = rng.normal(size=(700, 12)) * np.linspace(4, 0.5, 12) @ basis + 3.0  # large mean
    q = rng.normal(size=(50, 12)) @ basis + 3.0
    a = write_file(tmp_path / "a.h5", db, q)
    out = combine(
        [a],
        tmp_path / "p.h5",
        pca=6,
        block_rows=128,
        pca_memory_bytes=48 * 48 * 8,
        whiten=True,
        progress=False,
    )
    sk = PCA(n_components=6, whiten=True, svd_solver="full").fit(db.astype(np.float32))
    with DescriptorFile(out) as f:
        assert f.model["inputs"][0]["pca"]["method"].startswith("exact, streamed")
        got = f.read_rows("queries", (1,), 0, 50)
    np.testing.assert_allclose(got, sk.transform(q.astype(np.float32)), rtol=1e-3, atol=1e-3)
