from pathlib import Path

import numpy as np
import pytest

from vprkit.data.datasets import (
    dataset_info,
    list_images,
    load_split,
    parse_utm,
    positives_within,
)
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


class TestParseUtm:
    def test_full_name(self):
        assert parse_utm("@585000.25@4477000.5@17@T@37.1@-122.0@@@@@@pano@.jpg") == (585000.25, 4477000.5)

    def test_only_required_fields(self):
        assert parse_utm("sub/dir/@1@2@.png") == (1.0, 2.0)

    @pytest.mark.parametrize("name", ["photo.jpg", "@abc@1@.jpg", "@1@.jpg", "@nan@1@.jpg"])
    def test_unparsable_names_error_with_the_name(self, name):
        with pytest.raises(VprkitError, match="photo|abc|@1@|nan"):
            parse_utm(name)


class TestListImages:
    def test_sorted_recursive_and_extensions(self, tmp_path):
        for name in ["b/@1@1@.jpg", "a/@2@2@.JPEG", "@3@3@.png", "@4@4@.txt", "c/@5@5@.gif"]:
            touch(tmp_path / name)
        assert list_images(tmp_path) == ["@3@3@.png", "a/@2@2@.JPEG", "b/@1@1@.jpg"]


class TestLoadSplit:
    def test_generated_split(self, small_root):
        split = load_split(small_root, "test")
        assert len(split.database) == 24 and len(split.queries) == 12
        assert split.database.names == sorted(split.database.names)
        assert split.database.utm.shape == (24, 2) and split.database.utm.dtype == np.float64

    def test_missing_root(self, tmp_path):
        with pytest.raises(VprkitError, match="does not exist"):
            load_split(tmp_path / "nope", "test")

    def test_missing_split_lists_found_splits(self, small_root):
        with pytest.raises(VprkitError, match="found splits: test, train"):
            load_split(small_root, "val")

    def test_empty_role(self, tmp_path):
        (tmp_path / "images/test/database").mkdir(parents=True)
        touch(tmp_path / "images/test/queries/@1@1@.jpg")
        with pytest.raises(VprkitError, match="no images .*database"):
            load_split(tmp_path, "test")

    def test_unparsable_name_is_an_error_naming_the_file(self, tmp_path):
        touch(tmp_path / "images/test/database/@1@1@.jpg")
        touch(tmp_path / "images/test/queries/holiday.jpg")
        with pytest.raises(VprkitError, match="holiday.jpg"):
            load_split(tmp_path, "test")

    def test_skip_unparsable_warns_and_counts(self, tmp_path):
        touch(tmp_path / "images/test/database/@1@1@.jpg")
        touch(tmp_path / "images/test/queries/@1@1@.jpg")
        touch(tmp_path / "images/test/queries/holiday.jpg")
        with pytest.warns(UserWarning, match="skipped 1 file"):
            split = load_split(tmp_path, "test", skip_unparsable=True)
        assert split.queries.skipped == ["holiday.jpg"] and len(split.queries) == 1


class TestPositives:
    def test_radius_is_inclusive_and_sorted_by_distance(self):
        db = np.array([[0, 0], [0, 25], [0, 25.01], [0, 10], [0, -3]], dtype=float)
        q = np.array([[0, 0], [1000, 1000]], dtype=float)
        pos = positives_within(db, q, 25.0)
        assert pos[0].tolist() == [0, 4, 3, 1]
        assert pos[1].tolist() == []

    def test_dataset_info(self, small_root):
        rows = {(r["split"], r["role"]): r for r in dataset_info(small_root)}
        assert rows[("test", "database")]["images"] == 24
        assert rows[("test", "queries")]["queries_without_positives"] == 2
        assert rows[("test", "queries")]["sizes"] == {"64x80": 12}  # H x W, as --resize takes it


def test_generated_dataset_is_deterministic(tmp_path):
    a = generate_dataset(tmp_path / "a", {"test": (5, 3)}, size=(32, 40), seed=3)
    b = generate_dataset(tmp_path / "b", {"test": (5, 3)}, size=(32, 40), seed=3)
    for name in list_images(a / "images/test/queries"):
        assert (a / "images/test/queries" / name).read_bytes() == (
            b / "images/test/queries" / name
        ).read_bytes()
