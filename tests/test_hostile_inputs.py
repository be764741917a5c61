"""Hostile inputs: names that are not UTF-8, broken links, wide images, malformed EXIF GPS tags and
CSV files, splits that escape the root, half-done imports, and damaged report inputs.

Each one gives a result or one clear line naming the file (``Error: ...`` from the CLI), never a
traceback, a silent skip or a silently wrong value.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vprkit.cli import main
from vprkit.data import importing as dataset_import
from vprkit.data.datasets import ImageList, list_images, load_split, shown
from vprkit.data.images import ImageScalesDataset, load_image
from vprkit.data.importing import GpsTagError, exif_latlon, import_images
from vprkit.errors import VprkitError
from vprkit.report.markdown import write_report

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BAD_NAME = b"@1@2@\xff.jpg"  # not valid UTF-8


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def assert_one_line_error(args, *fragments, code: int = 1) -> str:
    """The CLI fails with exit code ``code`` (2: a value the option refuses) and exactly one line
    ``Error: ...`` holding ``fragments``."""
    got, output = run_cli(*args)
    lines = output.splitlines()
    assert got == code and len(lines) == 1 and lines[0].startswith("Error: "), output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_one_line(err: VprkitError, *fragments) -> None:
    text = str(err)
    assert "\n" not in text and "\r" not in text and text.isprintable(), repr(text)
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def image(path: Path, colour=(9, 9, 9), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def bad_name_file(folder: Path, name: bytes = BAD_NAME) -> bytes:
    """A file whose name is not valid UTF-8 (skips where the file system refuses such names)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(os.path.join(os.fsencode(folder), name), os.O_CREAT | os.O_WRONLY, 0o644)
    except OSError as err:
        pytest.skip(f"this file system refuses names that are not UTF-8 ({err.strerror})")
    os.close(fd)
    return name


def dataset(root: Path) -> Path:
    image(root / "images/test/database/@0@0@.jpg")
    image(root / "images/test/queries/@0@1@.jpg")
    return root


# --------------------------------------------------------------------------- EXIF GPS photos
_TYPES = {"byte": 1, "ascii": 2, "long": 4, "rational": 5, "srational": 10, "double": 12}


def _entry(tag: int, kind: str, values) -> tuple[int, int, int, bytes]:
    if kind == "ascii":
        data = values.encode("latin-1") + b"\0"
        count = len(data)
    else:
        fmt = {"byte": ">B", "long": ">I", "rational": ">II", "srational": ">ii", "double": ">d"}[kind]
        data = b"".join(struct.pack(fmt, *(v if isinstance(v, tuple) else (v,))) for v in values)
        count = len(values)
    return tag, _TYPES[kind], count, data


def exif_bytes(tags: dict[int, tuple[str, object]]) -> bytes:
    """Raw EXIF (big-endian TIFF) with a GPS IFD holding exactly ``tags`` (tag -> (type, values)),
    so that tags Pillow would refuse to write (text degrees, zero denominators) can be made."""
    entries = sorted(_entry(tag, kind, values) for tag, (kind, values) in tags.items())
    gps_offset = 8 + 2 + 12 + 4
    data_offset = gps_offset + 2 + 12 * len(entries) + 4
    out = b"MM\x00\x2a" + struct.pack(">I", 8)
    out += struct.pack(">H", 1) + struct.pack(">HHII", 0x8825, 4, 1, gps_offset) + struct.pack(">I", 0)
    body, extra = struct.pack(">H", len(entries)), b""
    for tag, kind, count, data in entries:
        if len(data) <= 4:
            body += struct.pack(">HHI", tag, kind, count) + data.ljust(4, b"\0")
        else:
            body += struct.pack(">HHII", tag, kind, count, data_offset + len(extra))
            extra += data + (b"\0" if len(data) % 2 else b"")
    return b"Exif\x00\x00" + out + body + struct.pack(">I", 0) + extra


def gps_photo(path: Path, tags: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(path, "JPEG", exif=exif_bytes(tags))
    return path


def good_gps(lat=45.0625, lon=7.6625) -> dict:
    def dms(value):
        d = int(value)
        m = int((value - d) * 60)
        s = round((value - d - m / 60) * 3600 * 1000)
        return [(d, 1), (m, 1), (s, 1000)]

    return {
        1: ("ascii", "N" if lat >= 0 else "S"),
        2: ("rational", dms(abs(lat))),
        3: ("ascii", "E" if lon >= 0 else "W"),
        4: ("rational", dms(abs(lon))),
    }


def with_tags(**changes) -> dict:
    tags = good_gps()
    for key, value in changes.items():
        tags[int(key[1:])] = value
    return tags


MALFORMED_GPS = {
    "zero denominator": with_tags(t2=("rational", [(45, 0), (3, 1), (45, 1)])),
    "all 0/0": with_tags(t2=("rational", [(0, 0), (0, 0), (0, 0)])),
    "text degrees": with_tags(t2=("ascii", "45 3 45")),
    "NaN degrees": with_tags(t2=("double", [math.nan, 0.0, 0.0])),
    "infinite longitude": with_tags(t4=("double", [math.inf, 0.0, 0.0])),
    "two values": with_tags(t2=("rational", [(45, 1), (3, 1)])),
    "one value": with_tags(t2=("rational", [(45, 1)])),
    "four values": with_tags(t4=("rational", [(7, 1), (39, 1), (45, 1), (1, 1)])),
    "latitude 95": with_tags(t2=("rational", [(95, 1), (0, 1), (0, 1)])),
    "longitude 200": with_tags(t4=("rational", [(200, 1), (0, 1), (0, 1)])),
    "minutes 75": with_tags(t2=("rational", [(45, 1), (75, 1), (0, 1)])),
    "negative degrees": with_tags(t2=("srational", [(-45, 1), (3, 1), (45, 1)])),
    "reference Q": with_tags(t1=("ascii", "Q")),
    "empty reference": with_tags(t3=("ascii", "")),
    "numeric reference": with_tags(t1=("byte", [1])),
}


# --------------------------------------------------------------------------- 1. image names
class TestImageNamesNotUtf8:
    def test_list_images_refuses_with_the_escaped_name(self, tmp_path):
        image(tmp_path / "@0@0@.jpg")
        bad_name_file(tmp_path)
        with pytest.raises(VprkitError) as err:
            list_images(tmp_path)
        assert_one_line(err.value, "@1@2@\\xff.jpg", "not valid UTF-8", "rename")

    def test_a_folder_name_that_is_not_utf8(self, tmp_path):
        bad_name_file(tmp_path, b"d\xfe")  # (skips where the file system refuses the name)
        os.remove(os.path.join(os.fsencode(tmp_path), b"d\xfe"))
        image(tmp_path / os.fsdecode(b"d\xfe") / "@1@1@.jpg")
        with pytest.raises(VprkitError) as err:
            ImageList.from_folder(tmp_path)
        assert_one_line(err.value, "d\\xfe/@1@1@.jpg", "not valid UTF-8")

    def test_non_image_files_with_bad_names_are_ignored(self, tmp_path):
        image(tmp_path / "@0@0@.jpg")
        bad_name_file(tmp_path, b"notes\xff.txt")
        assert list_images(tmp_path) == ["@0@0@.jpg"]

    def test_cli_dataset_info(self, tmp_path):
        root = dataset(tmp_path / "ds")
        bad_name_file(root / "images/test/queries")
        assert_one_line_error(["dataset", "info", root], "@1@2@\\xff.jpg", "not valid UTF-8")

    def test_import_refuses_before_creating_anything(self, tmp_path):
        gps_photo(tmp_path / "photos/a.jpg", good_gps())
        bad_name_file(tmp_path / "photos")
        assert_one_line_error(
            ["dataset", "import", tmp_path / "photos", tmp_path / "ds"], "\\xff", "not valid UTF-8"
        )
        assert not (tmp_path / "ds").exists()


class TestImageEntriesThatAreNotFiles:
    def test_broken_symbolic_link(self, tmp_path):
        image(tmp_path / "@0@0@.jpg")
        (tmp_path / "@1@1@.jpg").symlink_to(tmp_path / "gone.jpg")
        with pytest.raises(VprkitError) as err:
            list_images(tmp_path)
        assert_one_line(err.value, "@1@1@.jpg", "broken symbolic link")

    def test_link_to_a_folder_named_like_an_image(self, tmp_path):
        (tmp_path / "real").mkdir()
        (tmp_path / "x.jpg").symlink_to(tmp_path / "real")
        with pytest.raises(VprkitError) as err:
            list_images(tmp_path)
        assert_one_line(err.value, "x.jpg", "folder")

    def test_folder_named_like_an_image(self, tmp_path):
        (tmp_path / "sub/y.PNG").mkdir(parents=True)
        with pytest.raises(VprkitError) as err:
            list_images(tmp_path)
        assert_one_line(err.value, "sub/y.PNG", "folder")

    @pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
    def test_named_pipe_named_like_an_image(self, tmp_path):
        os.mkfifo(tmp_path / "z.jpeg")
        with pytest.raises(VprkitError) as err:
            list_images(tmp_path)
        assert_one_line(err.value, "z.jpeg", "not a regular file")

    def test_several_problems_name_the_first_and_count_the_rest(self, tmp_path):
        for name in ("b.jpg", "a.jpg", "c.jpg"):
            (tmp_path / name).symlink_to(tmp_path / "missing")
        with pytest.raises(VprkitError) as err:
            list_images(tmp_path)
        assert_one_line(err.value, "a.jpg", "and 2 more")

    def test_valid_links_to_images_keep_working(self, tmp_path):
        root = dataset(tmp_path / "ds")
        target = image(tmp_path / "elsewhere/pic.jpg")
        (root / "images/test/database/@5@5@.jpg").symlink_to(target)
        split = load_split(root, "test")
        assert split.database.names == ["@0@0@.jpg", "@5@5@.jpg"]

    def test_cli_names_the_broken_link(self, tmp_path):
        root = dataset(tmp_path / "ds")
        (root / "images/test/database/@3@3@.jpg").symlink_to(tmp_path / "nowhere.jpg")
        assert_one_line_error(["dataset", "info", root], "@3@3@.jpg", "broken symbolic link")


class TestShown:
    @pytest.mark.parametrize(
        "raw, expected",
        [
            ("plain name.jpg", "plain name.jpg"),
            ("a\nb", "a\\nb"),
            ("\x1b[31m", "\\x1b[31m"),
            (os.fsdecode(b"x\xff"), "x\\xff"),
            ("caf\u00e9", "caf\u00e9"),
            ("\u202e", "\\u202e"),
        ],
    )
    def test_escapes_control_and_undecodable(self, raw, expected):
        assert shown(raw) == expected


# --------------------------------------------------------------------------- 2. wide images
def png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG written by hand: grey (H, W), grey+alpha (H, W, 2), RGB or RGBA."""
    a = np.asarray(array, dtype=">u2")
    a = a[..., None] if a.ndim == 2 else a
    height, width, channels = a.shape
    raw = b"".join(b"\0" + a[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


GRADIENT16 = np.linspace(0, 65535, 96).round().astype(np.uint16)[None, :].repeat(10, 0)


class TestWideImages:
    def test_16bit_grey_png_matches_the_8bit_version(self, tmp_path):
        Image.fromarray(GRADIENT16).save(tmp_path / "g16.png")
        assert Image.open(tmp_path / "g16.png").mode.startswith("I")
        eight = np.round(GRADIENT16 / 65535 * 255).astype(np.uint8)
        Image.fromarray(eight).save(tmp_path / "g8.png")
        wide, narrow = load_image(tmp_path / "g16.png"), load_image(tmp_path / "g8.png")
        assert wide.shape == narrow.shape == (3, 10, 96) and wide.dtype == torch.float32
        assert (wide - narrow).abs().max() <= 1 / 255
        assert wide.min() == 0 and wide.max() == 1 and torch.equal(wide[0], wide[2])

    @pytest.mark.parametrize("channels", [2, 3, 4])
    def test_16bit_colour_and_alpha_pngs(self, tmp_path, channels):
        planes = [GRADIENT16, GRADIENT16[:, ::-1], GRADIENT16, np.full_like(GRADIENT16, 65535)]
        array = np.stack(planes[:channels] if channels != 2 else [GRADIENT16, planes[3]], -1)
        tensor = load_image(png16(tmp_path / "c.png", array))
        expected = torch.from_numpy(GRADIENT16 / 65535).float()
        assert (tensor[0] - expected).abs().max() <= 1 / 255
        if channels >= 3:
            assert (tensor[1] - expected.flip(-1)).abs().max() <= 1 / 255

    def test_float_image_in_0_1_round_trips(self, tmp_path):
        values = np.random.default_rng(0).random((12, 20), dtype=np.float32)
        Image.fromarray(values).save(tmp_path / "f.tiff", format="TIFF")
        os.rename(tmp_path / "f.tiff", tmp_path / "f.png")  # Pillow opens by content
        tensor = load_image(tmp_path / "f.png")
        assert tensor.shape == (3, 12, 20)
        assert all(torch.equal(tensor[c], torch.from_numpy(values)) for c in range(3))

    def test_float_image_beyond_1_is_scaled_by_its_maximum(self, tmp_path):
        values = np.linspace(-1, 4, 50, dtype=np.float32).reshape(5, 10)
        Image.fromarray(values).save(tmp_path / "f.tiff")
        tensor = load_image(tmp_path / "f.tiff")
        assert np.allclose(tensor[1].numpy(), np.maximum(values, 0) / 4)

    def test_float_image_with_nan_is_an_error_in_one_line(self, tmp_path):
        values = np.zeros((4, 4), dtype=np.float32)
        values[1, 2] = np.nan
        Image.fromarray(values).save(tmp_path / "n.tiff")
        with pytest.raises(ValueError, match="NaN"):
            load_image(tmp_path / "n.tiff")
        _, images, error, _ = ImageScalesDataset([tmp_path / "n.tiff"], None, (1,))[0]
        assert images is None and "n.tiff" in error and "\n" not in error

    @pytest.mark.parametrize("top, divisor", [(65535, 65535), (1000, 65535), (1_000_000, 1_000_000)])
    def test_32bit_integer_grey(self, tmp_path, top, divisor):
        values = np.linspace(0, top, 40).astype(np.int32).reshape(4, 10)
        Image.fromarray(values).save(tmp_path / "i.tiff")
        assert Image.open(tmp_path / "i.tiff").mode == "I"
        tensor = load_image(tmp_path / "i.tiff")
        assert np.allclose(tensor[0].numpy(), values / divisor, atol=1e-6)

    @pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "1"])
    def test_8bit_images_as_before(self, tmp_path, mode):
        rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8))
        im = rgb.convert(mode)
        path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
        im.save(path)
        with Image.open(path) as opened:
            expected = torch.from_numpy(np.asarray(opened.convert("RGB")).copy())
        assert torch.equal(load_image(path), expected.permute(2, 0, 1).float() / 255)


# --------------------------------------------------------------------------- 3. dataset import
class TestImportCsv:
    def photos(self, tmp_path) -> Path:
        image(tmp_path / "photos/a.jpg")
        image(tmp_path / "photos/b.jpg")
        return tmp_path / "photos"

    def test_latin1_csv_is_refused_naming_the_file(self, tmp_path):
        touch(tmp_path / "c.csv", "name,lat,lon\na.jpg,45,7\ncaf\u00e9.jpg,45,7\n".encode("latin-1"))
        with pytest.raises(VprkitError) as err:
            import_images(self.photos(tmp_path), tmp_path / "ds", coordinates=tmp_path / "c.csv")
        assert_one_line(err.value, "c.csv", "not UTF-8", "line 3")
        assert not (tmp_path / "ds").exists()
        assert_one_line_error(
            ["dataset", "import", tmp_path / "photos", tmp_path / "ds", "--csv", tmp_path / "c.csv"],
            "c.csv",
            "not UTF-8",
        )

    def test_utf8_bom_is_accepted(self, tmp_path):
        touch(tmp_path / "c.csv", "\ufeffName,Lat,Lon\r\na.jpg,45,7\r\nb.jpg,45.001,7\r\n".encode())
        done = import_images(self.photos(tmp_path), tmp_path / "ds", coordinates=tmp_path / "c.csv")
        assert done["written"] == 2

    @pytest.mark.parametrize(
        "rows, fragment",
        [
            ("a.jpg,nan,7", "line 2"),
            ("a.jpg,45,inf", "line 2"),
            ("a.jpg,95,7", "out of range"),
            ("a.jpg,45,200", "out of range"),
            ("a.jpg,45", "line 2"),
            ("a.jpg,north,7", "line 2"),
            ("a.jpg,45,7\nb.jpg,1,1\na.jpg,46,7", "line 2"),
            (",45,7", "no image name"),
            ("a.jpg,4_5,7", "latitude"),
            ("a.jpg,45,7_0.5", "longitude"),
            ("a.jpg,45,0x7", "longitude"),
            ("a.jpg,45,\u0667", "longitude"),
        ],
    )
    def test_bad_rows(self, tmp_path, rows, fragment):
        touch(tmp_path / "c.csv", f"name,lat,lon\n{rows}\n".encode())
        with pytest.raises(VprkitError) as err:
            import_images(self.photos(tmp_path), tmp_path / "ds", coordinates=tmp_path / "c.csv")
        assert_one_line(err.value, "c.csv", fragment)
        assert not (tmp_path / "ds").exists()

    def test_name_column_last_and_a_short_row(self, tmp_path):
        touch(tmp_path / "c.csv", b"lat,lon,name\n45,7\n")
        with pytest.raises(VprkitError) as err:
            import_images(self.photos(tmp_path), tmp_path / "ds", coordinates=tmp_path / "c.csv")
        assert_one_line(err.value, "c.csv line 2")

    @FUZZ
    @given(content=st.binary(max_size=200))
    def test_random_csv_bytes_import_or_one_line(self, tmp_path_factory, content):
        tmp = tmp_path_factory.mktemp("csv")
        touch(tmp / "c.csv", b"name,lat,lon\n" + content)
        try:
            import_images(self.photos(tmp), tmp / "ds", coordinates=tmp / "c.csv", skip_missing=True)
        except VprkitError as err:
            assert_one_line(err)
            assert not (tmp / "ds").exists()


class TestImportMalformedGps:
    @pytest.mark.parametrize("case", sorted(MALFORMED_GPS))
    def test_refused_naming_the_photo(self, tmp_path, case):
        gps_photo(tmp_path / "photos/bad.jpg", MALFORMED_GPS[case])
        with pytest.raises(GpsTagError) as err:
            exif_latlon(tmp_path / "photos/bad.jpg")
        assert_one_line(err.value, "bad.jpg", "malformed EXIF GPS")

    @pytest.mark.parametrize("case", ["zero denominator", "text degrees", "latitude 95", "reference Q"])
    def test_cli_one_line_and_nothing_written(self, tmp_path, case):
        gps_photo(tmp_path / "photos/a.jpg", good_gps())
        gps_photo(tmp_path / "photos/bad.jpg", MALFORMED_GPS[case])
        assert_one_line_error(
            ["dataset", "import", tmp_path / "photos", tmp_path / "ds"], "bad.jpg", "malformed EXIF GPS"
        )
        assert not (tmp_path / "ds").exists()

    def test_skip_missing_counts_them_as_skipped(self, tmp_path):
        gps_photo(tmp_path / "photos/a.jpg", good_gps())
        for i, case in enumerate(sorted(MALFORMED_GPS)):
            gps_photo(tmp_path / f"photos/bad{i:02d}.jpg", MALFORMED_GPS[case])
        done = import_images(tmp_path / "photos", tmp_path / "ds", skip_missing=True)
        assert done["written"] == 1 and done["skipped"] == len(MALFORMED_GPS)
        assert done["first_skipped"] == "bad00.jpg"

    def test_good_tags_still_read(self, tmp_path):
        gps_photo(tmp_path / "p.jpg", good_gps(-33.857, -151.215))
        lat, lon = exif_latlon(tmp_path / "p.jpg")
        assert lat == pytest.approx(-33.857, abs=1e-6) and lon == pytest.approx(-151.215, abs=1e-6)

    def test_pillow_written_tags_with_nonsense_values(self, tmp_path):
        """What Pillow itself writes: a 2-tuple and a latitude of 95 degrees."""
        for name, value in (("short.jpg", (1.0, 2.0)), ("far.jpg", (95.0, 0.0, 0.0))):
            exif = Image.Exif()
            gps = exif.get_ifd(0x8825)
            gps[1], gps[2], gps[3], gps[4] = "N", value, "E", (7.0, 0.0, 0.0)
            Image.new("RGB", (8, 8)).save(tmp_path / name, exif=exif)
            with pytest.raises(GpsTagError, match=name):
                exif_latlon(tmp_path / name)

    @FUZZ
    @given(
        lat=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=4),
        ref=st.text(st.characters(codec="ascii", exclude_characters="\0"), max_size=3),
    )
    def test_random_gps_tags_give_a_position_or_one_line(self, tmp_path_factory, lat, ref):
        tmp = tmp_path_factory.mktemp("gps")
        gps_photo(tmp / "photos/p.jpg", with_tags(t1=("ascii", ref), t2=("rational", lat)))
        try:
            done = import_images(tmp / "photos", tmp / "ds")
        except VprkitError as err:
            assert_one_line(err, "p.jpg")
            assert not (tmp / "ds").exists()
        else:
            split = load_split(tmp / "ds", "test", queries_optional=True)  # database only
            assert done["written"] == 1 and np.isfinite(split.database.utm).all()


class TestImportSplitName:
    @pytest.mark.parametrize(
        "split", ["", ".", "..", "a/b", "../../escape", "/abs/x", "a\\b", "x\ny", os.fsdecode(b"s\xff")]
    )
    def test_refused_before_creating_anything(self, tmp_path, split):
        gps_photo(tmp_path / "photos/a.jpg", good_gps())
        with pytest.raises(VprkitError) as err:
            import_images(tmp_path / "photos", tmp_path / "root/ds", split=split)
        assert_one_line(err.value, "bad split", "plain folder name")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]

    def test_cli(self, tmp_path):
        gps_photo(tmp_path / "photos/a.jpg", good_gps())
        assert_one_line_error(
            ["dataset", "import", tmp_path / "photos", tmp_path / "ds", "--split", "../up"],
            "unknown split",
            "'../up'",
            code=2,
        )  # a Choice of splits
        assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]

    def test_a_plain_new_split_is_fine(self, tmp_path):
        gps_photo(tmp_path / "photos/a.jpg", good_gps())
        assert import_images(tmp_path / "photos", tmp_path / "ds", split="val")["written"] == 1


class TestImportLeavesNothingBehind:
    def photos(self, tmp_path, n=4, missing=(2,)) -> Path:
        for i in range(n):
            path = tmp_path / f"photos/p{i}.jpg"
            if i in missing:
                image(path)
            else:
                gps_photo(path, good_gps(45.0 + i / 1000, 7.0))
        return tmp_path / "photos"

    def tree(self, folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))

    def test_third_photo_without_coordinates(self, tmp_path):
        photos = self.photos(tmp_path)
        assert_one_line_error(["dataset", "import", photos, tmp_path / "ds"], "no coordinates", "p2.jpg")
        assert not (tmp_path / "ds").exists()

    def test_existing_dataset_keeps_its_files(self, tmp_path):
        photos = self.photos(tmp_path, missing=())
        import_images(photos, tmp_path / "ds", split="test")
        before = self.tree(tmp_path / "ds")
        gps_photo(photos / "p9.jpg", good_gps(46.0, 7.0))
        with pytest.raises(VprkitError) as err:
            import_images(photos, tmp_path / "ds", split="test", copy=True)
        assert_one_line(err.value, "already exists")
        assert self.tree(tmp_path / "ds") == before

    def test_two_photos_mapping_to_one_destination(self, tmp_path):
        gps_photo(tmp_path / "photos/a/x.jpg", good_gps())
        gps_photo(tmp_path / "photos/b/x.jpg", good_gps())
        with pytest.raises(VprkitError) as err:
            import_images(tmp_path / "photos", tmp_path / "ds")
        assert_one_line(err.value, "a/x.jpg", "b/x.jpg", "would both be")
        assert not (tmp_path / "ds").exists()

    def test_at_signs_collide_with_underscores(self, tmp_path):
        gps_photo(tmp_path / "photos/a@b.jpg", good_gps())
        gps_photo(tmp_path / "photos/a_b.jpg", good_gps())
        with pytest.raises(VprkitError, match="would both be"):
            import_images(tmp_path / "photos", tmp_path / "ds")
        assert not (tmp_path / "ds").exists()

    def test_name_too_long_for_the_file_system(self, tmp_path):
        gps_photo(tmp_path / "photos" / ("n" * 230 + ".jpg"), good_gps())
        with pytest.raises(VprkitError, match="longer than 255 bytes"):
            import_images(tmp_path / "photos", tmp_path / "ds")
        assert not (tmp_path / "ds").exists()

    def test_a_file_in_the_way(self, tmp_path):
        photos = self.photos(tmp_path, missing=())
        touch(tmp_path / "ds/images", b"not a folder")
        assert_one_line_error(["dataset", "import", photos, tmp_path / "ds"], "ds/images", "not a folder")
        assert self.tree(tmp_path / "ds") == ["images"]

    @pytest.mark.parametrize("copy", [False, True])
    def test_a_write_failing_half_way_is_undone(self, tmp_path, monkeypatch, copy):
        photos = self.photos(tmp_path, n=5, missing=())
        (tmp_path / "ds").mkdir()  # exists before: kept; the folders below it: removed
        calls = []
        real = dataset_import.copy_exclusive if copy else os.symlink

        def failing(src, dest, *args, **kwargs):
            calls.append(dest)
            if len(calls) == 3:  # (copy_exclusive removes its own partial file)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
            return real(src, dest, *args, **kwargs)

        if copy:
            monkeypatch.setattr(dataset_import, "copy_exclusive", failing)
        else:
            monkeypatch.setattr(dataset_import.os, "symlink", failing)
        with pytest.raises(VprkitError) as err:
            import_images(photos, tmp_path / "ds", copy=copy)
        monkeypatch.undo()
        assert_one_line(err.value, "No space left on device", "nothing was imported", "2 file(s)")
        assert self.tree(tmp_path / "ds") == []
        assert import_images(photos, tmp_path / "ds", copy=copy)["written"] == 5

    def test_names_in_messages_are_escaped(self, tmp_path):
        image(tmp_path / "photos/bad\nname\x1b.jpg")
        line = assert_one_line_error(
            ["dataset", "import", tmp_path / "photos", tmp_path / "ds"], "no coordinates"
        )
        assert "bad\\nname\\x1b.jpg" in line

    def test_all_skipped_creates_no_folders(self, tmp_path):
        photos = self.photos(tmp_path, n=2, missing=(0, 1))
        done = import_images(photos, tmp_path / "ds", skip_missing=True)
        assert done["written"] == 0 and done["skipped"] == 2 and not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- 4. markdown report
def evaluation_row(**changes) -> dict:
    row = {
        "file": "/x/gem.h5",
        "scale": "1",
        "recalls": {"1": 50.0, "5": 75.0, "10": 80.0},
        "queries": 10,
        "database": 20,
        "dim": 256,
        "threshold": 25.0,
        "queries_without_positives": 0,
        "seconds": 0.1,
        "model": "resnet18conv4+gem",
        "dataset": "small/test",
        "search": "exact",
    }
    row.update(changes)
    return row


def without(key: str) -> dict:
    row = evaluation_row()
    del row[key]
    return row


CONFIG = {
    "backbone": "resnet18conv4",
    "aggregation": "gem",
    "optimizer": "adamw",
    "lr": 1e-4,
    "weight_decay": 1e-3,
    "scheduler": "plateau",
    "augment": ["night:M2"],
    "epochs": 2,
}
METRICS = [
    {"epoch": 0, "val_recalls": {"1": 10.0, "5": 20.0}},
    {"epoch": 1, "refresh": 1, "loss": 0.1, "lr": 1e-4},
    {"epoch": 1, "val_recalls": {"1": 12.5, "5": 30.0}},
]


def run_folder(folder: Path, config=None, metrics: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = CONFIG if config is None else config
    (folder / "config.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    if metrics is None:
        metrics = "\n".join(json.dumps(r) for r in METRICS).encode() + b"\n"
    (folder / "metrics.jsonl").write_bytes(metrics)
    return folder


BAD_EVALUATIONS = {
    "an object": b'{"recalls": {"1": 1}}',
    "empty list": b"[]",
    "a row that is a list": json.dumps([[1, 2]]).encode(),
    "recalls a list": json.dumps([evaluation_row(recalls=[50.0, 75.0])]).encode(),
    "recalls empty": json.dumps([evaluation_row(recalls={})]).encode(),
    "recall a NaN string": json.dumps([evaluation_row(recalls={"1": "NaN"})]).encode(),
    "recall NaN": b'[{"file": "a.h5", "scale": "1", "queries": 1, "database": 1, "dim": 4, '
    b'"threshold": 25, "recalls": {"1": NaN}}]',
    "recall Infinity": json.dumps([evaluation_row(recalls={"1": math.inf})]).encode(),
    "recall a boolean": json.dumps([evaluation_row(recalls={"1": True})]).encode(),
    "recall 150": json.dumps([evaluation_row(recalls={"1": 150.0})]).encode(),
    "recall key x": json.dumps([evaluation_row(recalls={"x": 1.0})]).encode(),
    "no file": json.dumps([without("file")]).encode(),
    "no scale": json.dumps([without("scale")]).encode(),
    "no dim": json.dumps([without("dim")]).encode(),
    "no queries": json.dumps([without("queries")]).encode(),
    "no threshold": json.dumps([without("threshold")]).encode(),
    "dim a string": json.dumps([evaluation_row(dim="256")]).encode(),
    "dim 1.5": json.dumps([evaluation_row(dim=1.5)]).encode(),
    "scale null": json.dumps([evaluation_row(scale=None)]).encode(),
    "file a number": json.dumps([evaluation_row(file=3)]).encode(),
    "model a list": json.dumps([evaluation_row(model=["x"])]).encode(),
    "rows with other N": json.dumps([evaluation_row(), evaluation_row(recalls={"1": 1.0})]).encode(),
    "huge threshold": json.dumps([evaluation_row(threshold=10**400)]).encode(),
    "not JSON": b"[{'file': 1}]",
    "latin-1 bytes": json.dumps([evaluation_row(model="caf\u00e9")], ensure_ascii=False).encode("latin-1"),
    "nested deeply": b"[" * 100_000,
    "a 5000-digit integer": b"[" + b"1" * 5000 + b"]",
}


class TestReportEvaluationJson:
    @pytest.mark.parametrize("case", sorted(BAD_EVALUATIONS))
    def test_one_line_naming_the_file(self, tmp_path, case):
        touch(tmp_path / "eval.json", BAD_EVALUATIONS[case])
        with pytest.raises(VprkitError) as err:
            write_report([tmp_path / "eval.json"], tmp_path / "r.md")
        assert_one_line(err.value, "eval.json")
        assert not (tmp_path / "r.md").exists()

    @pytest.mark.parametrize("case", ["recalls a list", "no file", "latin-1 bytes", "nested deeply"])
    def test_cli(self, tmp_path, case):
        touch(tmp_path / "eval.json", BAD_EVALUATIONS[case])
        assert_one_line_error(["report", tmp_path / "eval.json", "-o", tmp_path / "r.md"], "eval.json")

    def test_messages_say_what(self, tmp_path):
        for case, fragment in (
            ("no dim", "row 1 has no 'dim'"),
            ("latin-1 bytes", "not UTF-8"),
            ("recall a NaN string", "not a percentage"),
            ("rows with other N", "row 2"),
        ):
            touch(tmp_path / "eval.json", BAD_EVALUATIONS[case])
            with pytest.raises(VprkitError, match=fragment):
                write_report([tmp_path / "eval.json"], tmp_path / "r.md")

    def test_pipes_and_newlines_in_names_do_not_break_the_table(self, tmp_path):
        rows = [evaluation_row(file="/x/a|b.h5", model="m|1\nx"), evaluation_row(scale="1+2")]
        touch(tmp_path / "eval|x.json", json.dumps(rows).encode())
        text = write_report([tmp_path / "eval|x.json"], tmp_path / "r.md").read_text()
        table = [line for line in text.splitlines() if line.startswith("| ")]
        cells = {line.replace("\\|", "").count("|") for line in table}
        assert len(table) == 4 and cells == {8}
        assert "| a\\|b.h5 | m\\|1\\nx | 1 | 256 | 50.0 | 75.0 | 80.0 |" in text
        assert "## eval|x" in text

    def test_a_good_file_still_reports(self, tmp_path):
        touch(tmp_path / "eval.json", json.dumps([evaluation_row()]).encode())
        text = write_report([tmp_path / "eval.json"], tmp_path / "r.md").read_text()
        assert "| gem.h5 | resnet18conv4+gem | 1 | 256 | 50.0 | 75.0 | 80.0 |" in text

    @FUZZ
    @given(
        key=st.sampled_from(sorted(evaluation_row())),
        value=st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
            ),
            max_leaves=6,
        ),
    )
    def test_random_values_give_a_report_or_one_line(self, tmp_path_factory, key, value):
        tmp = tmp_path_factory.mktemp("eval")
        touch(tmp / "eval.json", json.dumps([evaluation_row(**{key: value})]).encode())
        try:
            write_report([tmp / "eval.json"], tmp / "r.md")
        except VprkitError as err:
            assert_one_line(err, "eval.json")
        else:
            assert (tmp / "r.md").read_text().startswith("# vprkit report")


BAD_CONFIGS = {
    f"no {key}": {k: v for k, v in CONFIG.items() if k != key}
    for key in ("backbone", "aggregation", "optimizer", "lr", "weight_decay", "scheduler", "augment")
}
BAD_CONFIGS.update(
    {
        "lr a string": dict(CONFIG, lr="0.1"),
        "lr NaN": dict(CONFIG, lr=math.nan),
        "augment a string": dict(CONFIG, augment="night"),
        "backbone a number": dict(CONFIG, backbone=18),
        "a list": [CONFIG],
        "weight decay true": dict(CONFIG, weight_decay=True),
    }
)


class TestReportRunFolder:
    def test_broken_metrics_line_is_named_by_number(self, tmp_path):
        lines = [json.dumps(r).encode() for r in METRICS]
        run = run_folder(
            tmp_path / "run", metrics=b"\n".join(lines[:2] + [b"", b'{"epoch": 2, "val']) + b"\n"
        )
        with pytest.raises(VprkitError) as err:
            write_report([run], tmp_path / "r.md")
        assert_one_line(err.value, "metrics.jsonl line 4", "not valid JSON")
        assert_one_line_error(["report", run, "-o", tmp_path / "r.md"], "metrics.jsonl line 4")

    @pytest.mark.parametrize(
        "line, fragment",
        [
            (b"[1, 2]", "not an object"),
            (b'{"epoch": 1, "val_recalls": "high"}', "val_recalls"),
            (b'{"val_recalls": {"5": 1}}', "epoch"),
            (b'{"epoch": 1, "val_recalls": {"5": "NaN"}}', "number"),
            (b'{"epoch": 1, "val_recalls": {"5": NaN}}', "number"),
            (b'"val_recalls"', "not an object"),
            (b'{"epoch": true, "val_recalls": {"5": 1}}', "epoch"),
            (b"\xff\xfe{}", "not UTF-8"),
        ],
    )
    def test_bad_metrics_rows(self, tmp_path, line, fragment):
        run = run_folder(tmp_path / "run", metrics=json.dumps(METRICS[0]).encode() + b"\n" + line)
        with pytest.raises(VprkitError) as err:
            write_report([run], tmp_path / "r.md")
        assert_one_line(err.value, "metrics.jsonl", "line 2", fragment)

    @pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
    def test_config_without_what_the_table_uses(self, tmp_path, case):
        config = BAD_CONFIGS[case]
        run = run_folder(tmp_path / "run", config=json.dumps(config).encode())
        with pytest.raises(VprkitError) as err:
            write_report([run], tmp_path / "r.md")
        assert_one_line(err.value, "config.json")

    @pytest.mark.parametrize(
        "data, fragment",
        [
            (b"{not json", "not valid JSON"),
            (b'{"backbone": "r\xe9snet"}', "not UTF-8"),
            (b"", "not valid JSON"),
        ],
    )
    def test_config_that_is_not_json(self, tmp_path, data, fragment):
        run = run_folder(tmp_path / "run", config=data)
        assert_one_line_error(["report", run, "-o", tmp_path / "r.md"], "config.json", fragment)

    def test_notes_that_are_not_utf8(self, tmp_path):
        run = run_folder(tmp_path / "run")
        touch(tmp_path / "notes.md", b"caf\xe9")
        assert_one_line_error(
            ["report", run, "-o", tmp_path / "r.md", "--notes", tmp_path / "notes.md"],
            "notes.md",
            "not UTF-8",
        )

    def test_run_name_with_a_pipe(self, tmp_path):
        run = run_folder(tmp_path / "run|1", config=dict(CONFIG, scheduler="a|b"))
        text = write_report([run], tmp_path / "r.md").read_text()
        assert "| run\\|1 | resnet18conv4+gem | adamw | 0.0001 | 0.001 | a\\|b | night:M2 | 1 |" in text

    def test_a_good_run_still_reports(self, tmp_path):
        text = write_report([run_folder(tmp_path / "run")], tmp_path / "r.md").read_text()
        assert (
            "| run | resnet18conv4+gem | adamw | 0.0001 | 0.001 | plateau | night:M2 | 1 | "
            "10.0 / 20.0 | 12.5 / 30.0 (1) |" in text
        )

    @FUZZ
    @given(
        lines=st.lists(
            st.binary(max_size=30)
            | st.sampled_from(
                [json.dumps(r).encode() for r in METRICS] + [b"{}", b'{"epoch": 3, "val_recalls": {}}']
            ),
            max_size=6,
        )
    )
    def test_random_metrics_lines_give_a_report_or_one_line(self, tmp_path_factory, lines):
        run = run_folder(tmp_path_factory.mktemp("runs") / "run", metrics=b"\n".join(lines))
        try:
            write_report([run], run.parent / "r.md")
        except VprkitError as err:
            assert_one_line(err, "metrics.jsonl")
        else:
            assert "| run | resnet18conv4+gem |" in (run.parent / "r.md").read_text()
