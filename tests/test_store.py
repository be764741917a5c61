import h5py
import numpy as np
import pytest
from helpers import GEM, write_file

from vprkit.errors import VprkitError
from vprkit.store import DescriptorFile, parse_scale_spec, parse_scales, partial_path


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
        part = write_file(tmp_path / "p.h5", np.ones((2, 3), np.float32),
                          np.ones((1, 3), np.float32), complete=False)
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
