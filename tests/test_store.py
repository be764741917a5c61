import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import GEM, header, write_file

import vprkit.store as store
from vprkit.errors import VprkitError
from vprkit.store import DescriptorFile, Header, parse_scale_spec, parse_scales, partial_path


class TestScaleParsing:
    def test_lists(self):
        assert parse_scales("1,2,3") == (1, 2, 3)
        assert parse_scale_spec("1+3") == (1, 3)

    @pytest.mark.parametrize("text", ["", "0", "1,1", "a", "1.5", "-1"])
    def test_bad(self, text):
        with pytest.raises(VprkitError, match="bad scale list"):
            parse_scales(text)


class TestDescriptorFile:
    def test_round_trip(self, tmp_path):
        rng = np.random.default_rng(0)
        db, q = rng.random((7, 5), dtype=np.float32), rng.random((3, 5), dtype=np.float32)
        path = write_file(tmp_path / "a.h5", db, q)
        assert not partial_path(path).exists()
        with DescriptorFile(path) as f:
            assert f.scales == [1] and f.dim == 5 and f.num("database") == 7
            assert f.names("queries")[2] == "@2@5@.jpg"
            np.testing.assert_array_equal(f.read_rows("database", (1,), 0, 7), db)
            blocks = list(f.iter_blocks("database", (1,), 3))
            assert [s for s, _ in blocks] == [0, 3, 6]
            np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), db)
            assert f.model == {"backbone": "x"} and f.aggregation == GEM

    def test_float16_storage(self, tmp_path):
        db = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
        path = write_file(tmp_path / "h.h5", db, db[:2], dtype="float16")
        with DescriptorFile(path) as f:
            assert f.h5["scales/1/database"].dtype == np.float16
            rows = f.read_rows("database", (1,), 0, 4)
        assert rows.dtype == np.float32
        np.testing.assert_allclose(rows, db, atol=1e-3)

    def test_rows_are_chunked(self, tmp_path):
        path = write_file(tmp_path / "c.h5", np.ones((10, 4), np.float32), np.ones((2, 4), np.float32))
        with h5py.File(path) as f:
            assert f["scales/1/database"].chunks == (10, 4)

    def test_incomplete_file_refused(self, tmp_path):
        part = write_file(
            tmp_path / "p.h5", np.ones((2, 3), np.float32), np.ones((1, 3), np.float32), complete=False
        )
        with pytest.raises(VprkitError, match="is incomplete"):
            DescriptorFile(part)
        with pytest.raises(VprkitError, match="unfinished extraction left a .partial"):
            DescriptorFile(tmp_path / "p.h5")

    def test_other_hdf5_refused(self, tmp_path):
        with h5py.File(tmp_path / "other.h5", "w") as f:
            f["x"] = np.ones(3)
        with pytest.raises(VprkitError, match="not a vprkit descriptor file"):
            DescriptorFile(tmp_path / "other.h5")

    def test_not_hdf5_refused(self, tmp_path):
        (tmp_path / "text.h5").write_text("hello")
        with pytest.raises(VprkitError, match="not an HDF5 file"):
            DescriptorFile(tmp_path / "text.h5")

    def test_other_format_version_refused(self, tmp_path):
        path = write_file(tmp_path / "v.h5", np.ones((2, 3), np.float32), np.ones((1, 3), np.float32))
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = 99
        with pytest.raises(VprkitError, match="format version 99"):
            DescriptorFile(path)

    def test_unknown_scale(self, tmp_path):
        path = write_file(tmp_path / "s.h5", np.ones((2, 3), np.float32), np.ones((1, 3), np.float32))
        with DescriptorFile(path) as f, pytest.raises(VprkitError, match="scale 2 is not in"):
            f.read_rows("database", (1, 2), 0, 2)

    def test_non_finite_rows_are_reported_with_their_name(self, tmp_path):
        db = np.ones((4, 3), np.float32)
        db[2, 1] = np.nan
        path = write_file(tmp_path / "n.h5", db, np.ones((1, 3), np.float32))
        with DescriptorFile(path) as f, pytest.raises(VprkitError, match=r"row 2 \(@2@0@.jpg\)"):
            f.read_rows("database", (1,), 0, 4)


REPO = Path(__file__).resolve().parents[1]


def _plain(path: Path, db: np.ndarray, q: np.ndarray, **kw) -> Path:
    return write_file(path, db, q, **kw)


class TestLightImport:
    def test_import_store_loads_neither_torch_nor_sklearn(self):
        code = (
            "import sys, vprkit.store; print(','.join(m for m in ('torch', 'sklearn') if m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
        )
        assert out.stdout.strip() == "", f"import vprkit.store imported {out.stdout.strip()}"

    def test_roles_are_shared_with_the_datasets(self):
        from vprkit.data import datasets

        assert datasets.ROLES is store.ROLES == ("database", "queries")

    def test_no_raw_hdf5_outside_the_store(self):
        raw = re.compile(r"^\s*(import h5py|from h5py)|\.h5\[", re.MULTILINE)
        found = [
            str(p.relative_to(REPO))
            for p in (REPO / "vprkit").rglob("*.py")
            if p.parent.name != "store" and raw.search(p.read_text(encoding="utf-8"))
        ]
        assert found == []


class TestHeader:
    def test_attrs_round_trip(self):
        header = Header(
            model={"backbone": "x", "n": [1, 2]},
            aggregation=GEM,
            dataset={"split": "test"},
            preprocessing={"resize": None},
            dtype="float16",
        )
        attrs = header.to_attrs()
        assert attrs["model"] == '{"backbone": "x", "n": [1, 2]}' and attrs["dtype"] == "float16"
        assert Header.from_attrs(attrs) == header
        assert Header.of(header.to_dict()) == header and Header.of(header) is header

    @pytest.mark.parametrize("bad", ["[1, 2]", "not json", "x" * (store.MAX_ATTR_CHARS + 1)])
    def test_damaged_attrs_raise(self, bad):
        attrs = Header({}, GEM, {}, {}, "float32").to_attrs()
        attrs["dataset"] = bad
        with pytest.raises(ValueError):
            Header.from_attrs(attrs)

    def test_file_and_writer_share_it(self, tmp_path):
        path = _plain(tmp_path / "h.h5", np.ones((2, 3), np.float32), np.ones((1, 3), np.float32))
        with DescriptorFile(path) as f:
            assert f.header == Header.of(header()) and f.model == f.header.model


class TestAccessors:
    def test_attributes_of_the_file_and_its_scales(self, tmp_path):
        db = np.arange(12, dtype=np.float32).reshape(4, 3)
        path = _plain(tmp_path / "a.h5", db, db[:2], dtype="float16")
        with DescriptorFile(path) as f:
            assert f.complete and f.format_version == 1
            assert f.vprkit_version and f.created.endswith("+00:00")
            assert f.image_size(1) is None and f.rows_done("queries", 1) == 2
            assert f.stat_specs(1) == {"count": ((), "<i8")}
            desc, stats = f.read_raw("database", 1, 1, 3)
            assert desc.dtype == np.float16 and desc.tolist() == db[1:3].tolist()
            assert stats["count"].tolist() == [1, 1]
            assert f.read_stats("queries", 1, 0, 2)["count"].tolist() == [1, 1]
            assert f.aggregation_arrays() == {} and f.combine_record() is None
            with pytest.raises(VprkitError, match="scale 2 is not in"):
                f.image_size(2)

    def test_aggregation_arrays_and_combine_record_round_trip(self, tmp_path):
        out = tmp_path / "e.h5"
        pca = {
            "mean": np.zeros(3, np.float32),
            "components": np.eye(2, 3, dtype=np.float32),
            "explained_variance": np.ones(2, np.float32),
            "whiten": True,
            "fitted_on": "a.h5:database",
            "rows": 7,
            "method": "exact",
        }
        with store.writing(out) as o:
            w = o.create(header(), *_lists(2, 1))
            w.write_aggregation_arrays({"centroids": np.full((2, 3), 0.5, np.float32)})
            w.write_combine_record({"inputs": [{"dim": 3}, {"dim": 1}], "weights": None}, [pca, None])
            _fill(w, 2, 1, 2)
        assert o.written == out
        with DescriptorFile(out) as f:
            assert f.aggregation_arrays()["centroids"].tolist() == [[0.5] * 3] * 2
            spec, pcas = f.combine_record()
            assert spec == {"inputs": [{"dim": 3}, {"dim": 1}], "weights": None}
            assert pcas[1] is None and pcas[0]["whiten"] is True and pcas[0]["rows"] == 7
            np.testing.assert_array_equal(pcas[0]["components"], pca["components"])


def _lists(n_db: int, n_q: int):
    names = {
        "database": [f"@{i}@0@.jpg" for i in range(n_db)],
        "queries": [f"@{i}@5@.jpg" for i in range(n_q)],
    }
    utm = {
        "database": np.c_[np.arange(n_db), np.zeros(n_db)],
        "queries": np.c_[np.arange(n_q), np.full(n_q, 5.0)],
    }
    return names, utm


def _fill(writer, n_db: int, n_q: int, dim: int, scale: int = 1) -> None:
    writer.add_scale(scale, dim, {}, (8, 10))
    for role, n in (("database", n_db), ("queries", n_q)):
        writer.write(role, scale, 0, np.full((n, dim), scale, np.float32), {})
        writer.commit_rows(role, [scale], n)


class TestWriting:
    def test_writes_renames_and_releases_the_lock(self, tmp_path):
        out = tmp_path / "w.h5"
        with store.writing(out) as o:
            assert out.with_name("w.h5.lock").exists()
            _fill(o.create(header(), *_lists(3, 2)), 3, 2, 4)
            assert o.partial.exists() and not out.exists()
        assert o.written == out and not o.partial.exists()
        assert not out.with_name("w.h5.lock").exists()
        with DescriptorFile(out) as f:
            assert f.num("database") == 3 and f.image_size(1) == (8, 10)

    def test_a_second_writer_is_refused(self, tmp_path):
        out = tmp_path / "l.h5"
        with store.writing(out), pytest.raises(VprkitError, match="another vprkit process"):
            with store.writing(out):
                pass

    def test_an_error_removes_the_partial_and_keeps_the_old_file(self, tmp_path):
        out = _plain(tmp_path / "k.h5", np.ones((2, 3), np.float32), np.ones((1, 3), np.float32))
        before = out.read_bytes()
        with pytest.raises(RuntimeError, match="boom"), store.writing(out, overwrite=True) as o:
            o.create(header(), *_lists(2, 1))
            raise RuntimeError("boom")
        assert out.read_bytes() == before and not o.partial.exists() and o.written is None

    def test_a_resumable_output_keeps_its_rows_and_resumes(self, tmp_path):
        out = tmp_path / "r.h5"
        with pytest.raises(KeyboardInterrupt), store.writing(out, resumable=True) as o:
            w = o.create(header(), *_lists(3, 2))
            w.add_scale(1, 4, {}, None)
            w.write("database", 1, 0, np.ones((3, 4), np.float32), {})
            w.commit_rows("database", [1], 3)
            raise KeyboardInterrupt
        assert o.partial.exists() and not out.exists()
        with store.writing(out, resumable=True) as o:
            w = o.resume()
            assert w.header() == Header.of(header()) and w.rows_done("database", [1]) == 3
            w.write("queries", 1, 0, np.ones((2, 4), np.float32), {})
            w.commit_rows("queries", [1], 2)
        with DescriptorFile(out) as f:
            assert f.read_rows("database", (1,), 0, 3).tolist() == [[1.0] * 4] * 3

    def test_a_damaged_partial_is_started_again(self, tmp_path):
        out = tmp_path / "d.h5"
        partial_path(out).write_bytes(b"\x89HDF garbage")
        with store.writing(out, resumable=True) as o, pytest.warns(UserWarning, match="damaged"):
            assert o.resume() is None and not o.partial.exists()

    def test_a_linked_partial_is_refused(self, tmp_path):
        out = tmp_path / "s.h5"
        target = tmp_path / "precious"
        target.write_text("precious")
        partial_path(out).symlink_to(target)
        with store.writing(out, resumable=True) as o, pytest.raises(VprkitError, match="symbolic link"):
            o.resume()
        assert target.read_text() == "precious"

    def test_extend_copies_the_complete_file(self, tmp_path):
        out = tmp_path / "x.h5"
        with store.writing(out) as o:
            _fill(o.create(header(), *_lists(3, 2)), 3, 2, 4)
        with DescriptorFile(out) as f:
            created = f.created
        with store.writing(out, resumable=True) as o:
            with o.complete_file() as existing:
                assert existing.scales == [1]
            _fill(o.extend(), 3, 2, 4, scale=2)
        with DescriptorFile(out) as f:
            assert f.scales == [1, 2] and f.created == created
            assert f.read_rows("queries", (2,), 0, 2).tolist() == [[2.0] * 4] * 2
        with store.writing(out, overwrite=True) as o:
            assert o.complete_file() is None
