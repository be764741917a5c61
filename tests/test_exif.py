"""EXIF orientation: images are decoded upright wherever vprkit reads pixels or sizes."""

from __future__ import annotations

import io
import shutil
import warnings

import numpy as np
import pytest
import torch
from conftest import config, options
from PIL import Image

from vprkit.data.datasets import dataset_info, load_split
from vprkit.data.images import load_image, read_image
from vprkit.data.synthetic import generate_dataset
from vprkit.extract.split import extract
from vprkit.store import DescriptorFile

ORIENTATION = 0x0112

# What the viewer must do to the stored pixels to see them upright (the EXIF definitions), as
# numpy operations on (H, W, ...) arrays, independent of Pillow: ``stored = TO_STORED[o](upright)``.
TO_STORED = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, 1),  # stored turned 90 degrees anticlockwise: turn it clockwise
    7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),
    8: lambda a: np.rot90(a, -1),  # stored turned clockwise: turn it anticlockwise
}


def upright_rgb(height=32, width=48, seed=0) -> np.ndarray:
    """A smooth, asymmetric (H, W, 3) picture: gradients and a few 8-pixel-aligned blocks."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, (x + 2 * y) * 255 / (width + 2 * height)], -1)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        r, c = int(rng.integers(0, height // 8)) * 8, int(rng.integers(0, width // 8)) * 8
        rgb[r : r + 8, c : c + 8] = rng.integers(0, 256, 3)
    return np.ascontiguousarray(rgb.astype(np.uint8))


def exif_with(orientation) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def save(path, array: np.ndarray, exif=None, **kwargs):
    image = Image.fromarray(np.ascontiguousarray(array))
    if exif is None:
        image.save(path, **kwargs)
    else:
        image.save(path, exif=exif, **kwargs)
    return path


def plain_decode(path) -> torch.Tensor:
    """What vprkit decoded before orientation was applied: Pillow's RGB of the stored pixels."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).copy()
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255


class TestOrientation:
    @pytest.mark.parametrize("orientation", sorted(TO_STORED))
    def test_png_with_exif_loads_exactly_upright(self, tmp_path, orientation):
        upright = upright_rgb()
        save(tmp_path / "up.png", upright)
        path = save(tmp_path / "turned.png", TO_STORED[orientation](upright), exif_with(orientation))
        with Image.open(path) as im:  # the EXIF block is really there
            assert im.getexif()[ORIENTATION] == orientation
        loaded = load_image(path)
        assert loaded.shape == (3, 32, 48)
        assert torch.equal(loaded, load_image(tmp_path / "up.png"))

    @pytest.mark.parametrize("orientation", [3, 6, 8])
    def test_jpeg_phone_photo_loads_upright(self, tmp_path, orientation):
        upright = upright_rgb()
        save(tmp_path / "up.jpg", upright, quality=95)
        path = save(
            tmp_path / "turned.jpg", TO_STORED[orientation](upright), exif_with(orientation), quality=95
        )
        loaded, reference = load_image(path), load_image(tmp_path / "up.jpg")
        assert loaded.shape == reference.shape == (3, 32, 48)
        difference = (loaded - reference).abs()
        assert float(difference.mean()) < 0.01 and float(difference.max()) < 0.15  # JPEG error
        as_stored = plain_decode(path)  # the tolerance does tell orientations apart
        if as_stored.shape == reference.shape:
            assert float((as_stored - reference).abs().mean()) > 0.1

    def test_read_image_is_upright_and_hashes_the_file(self, tmp_path):
        import hashlib

        upright = upright_rgb()
        save(tmp_path / "up.png", upright)
        path = save(tmp_path / "turned.png", TO_STORED[6](upright), exif_with(6))
        image, digest = read_image(path)
        assert torch.equal(image, load_image(tmp_path / "up.png"))
        assert digest == hashlib.sha256(path.read_bytes()).digest()

    def test_wide_grey_modes_are_turned_too(self, tmp_path):
        grey = np.arange(8 * 12, dtype=np.uint16).reshape(8, 12) * 600
        save(tmp_path / "up16.png", grey)
        path = save(tmp_path / "turned16.png", TO_STORED[6](grey), exif_with(6))
        with Image.open(path) as im:
            assert im.mode in ("I;16", "I")  # (older Pillow reads 16-bit PNGs as I)
        loaded = load_image(path)
        assert torch.equal(loaded, load_image(tmp_path / "up16.png"))
        expected = torch.from_numpy(grey.astype(np.float32) / 65535).expand(3, -1, -1)
        assert torch.equal(loaded, expected)

    @pytest.mark.parametrize("compression", [None, "tiff_lzw"])
    @pytest.mark.parametrize("orientation", [3, 6, 8])
    def test_float_tiff_with_orientation(self, tmp_path, compression, orientation):
        values = np.linspace(0, 1, 8 * 12, dtype=np.float32).reshape(8, 12)
        path = save(
            tmp_path / "turned.tif",
            TO_STORED[orientation](values),
            exif_with(orientation),
            compression=compression,
        )
        loaded = load_image(path)
        # recent Pillow turns a TIFF itself as it loads it, and drops the tag: never turned twice
        assert torch.equal(loaded, torch.from_numpy(values).expand(3, -1, -1))


class TestAsBefore:
    """Images without an orientation to apply decode exactly as before."""

    @pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
    @pytest.mark.parametrize("suffix", [".jpg", ".png"])
    def test_no_exif_is_byte_identical(self, tmp_path, mode, suffix):
        im = Image.fromarray(upright_rgb()).convert(mode)
        if suffix == ".jpg" and mode in ("P", "RGBA"):
            im = im.convert("RGB")
        path = tmp_path / f"x{suffix}"
        im.save(path)
        with Image.open(path) as opened:
            assert ORIENTATION not in opened.getexif()
        assert torch.equal(load_image(path), plain_decode(path))

    @pytest.mark.parametrize("exif", [exif_with(1), {0x010F: "Camera maker"}])
    def test_exif_without_a_turn_is_byte_identical(self, tmp_path, exif):
        block = Image.Exif()
        for key, value in dict(exif).items():
            block[key] = value
        path = save(tmp_path / "x.jpg", upright_rgb(), block)
        assert torch.equal(load_image(path), plain_decode(path))

    def test_benchmark_like_images_are_byte_identical(self, tmp_path):
        root = generate_dataset(tmp_path / "ds", {"test": (4, 3)}, size=(64, 80), seed=3)
        paths = sorted((root / "images/test").rglob("*.jpg"))
        assert len(paths) == 7
        for path in paths:
            assert torch.equal(load_image(path), plain_decode(path)), path

    @pytest.mark.parametrize("value", [0, 9, 65535])
    def test_orientation_values_out_of_range_keep_the_stored_image(self, tmp_path, value):
        exif = Image.Exif()
        exif[ORIENTATION] = value
        path = save(tmp_path / "x.png", upright_rgb(), exif)
        assert torch.equal(load_image(path), plain_decode(path))


class TestBrokenExif:
    BLOCKS = {
        "garbage": b"Exif\x00\x00garbage",
        "one byte": b"\x00",
        "truncated IFD": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00",
        "offset past the end": b"Exif\x00\x00MM\x00*\x00\x00\xff\xff",
    }

    @pytest.mark.parametrize("suffix", [".jpg", ".png"])
    @pytest.mark.parametrize("case", sorted(BLOCKS))
    def test_kept_as_stored_with_no_new_warnings(self, tmp_path, suffix, case):
        path = tmp_path / f"x{suffix}"
        Image.fromarray(upright_rgb()).save(path, exif=self.BLOCKS[case])
        assert self.BLOCKS[case].removeprefix(b"Exif\x00\x00") in path.read_bytes()
        with warnings.catch_warnings(record=True) as plain:
            warnings.simplefilter("always")
            expected = plain_decode(path)  # (Pillow's JPEG opener itself may warn)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            loaded = load_image(path)
        assert torch.equal(loaded, expected)
        assert [str(w.message) for w in seen] == [str(w.message) for w in plain]

    def test_a_truncated_turned_jpeg_still_fails_to_decode(self, tmp_path):
        data = io.BytesIO()
        Image.fromarray(upright_rgb()).save(data, "JPEG", exif=exif_with(6))
        path = tmp_path / "cut.jpg"
        path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
        with pytest.raises(OSError):
            load_image(path)


class TestSizes:
    def test_dataset_info_reports_upright_sizes(self, tmp_path):
        db, q = tmp_path / "ds/images/test/database", tmp_path / "ds/images/test/queries"
        db.mkdir(parents=True)
        q.mkdir(parents=True)
        upright = upright_rgb()  # 32 x 48 (H x W)
        save(db / "@0@0@@.jpg", upright)
        save(db / "@0@5@@.jpg", TO_STORED[6](upright), exif_with(6))
        save(db / "@0@9@@.png", TO_STORED[8](upright), exif_with(8))
        save(q / "@0@1@@.jpg", TO_STORED[3](upright), exif_with(3))
        save(q / "@0@2@@.jpg", TO_STORED[6](upright), b"Exif\x00\x00garbage")  # as stored
        rows = {row["role"]: row["sizes"] for row in dataset_info(tmp_path / "ds")}
        assert rows == {"database": {"32x48": 3}, "queries": {"32x48": 1, "48x32": 1}}


def test_extract_gives_the_same_descriptor_for_a_turned_query(tmp_path):
    """End to end: a query stored sideways with its EXIF orientation gives the descriptor of its
    upright copy (lossless PNG copies of the generated queries, so the pixels are equal)."""
    generated = generate_dataset(tmp_path / "gen", {"test": (6, 4)}, size=(64, 80), seed=2)
    roots = {}
    for kind in ("upright", "turned"):
        root = tmp_path / kind
        shutil.copytree(generated / "images/test/database", root / "images/test/database")
        (root / "images/test/queries").mkdir(parents=True)
        roots[kind] = root
    for i, path in enumerate(sorted((generated / "images/test/queries").iterdir())):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        name = path.name.replace(".jpg", ".png")
        save(roots["upright"] / "images/test/queries" / name, rgb)
        orientation = (6, 8, 3, 6)[i % 4]
        save(
            roots["turned"] / "images/test/queries" / name,
            TO_STORED[orientation](rgb),
            exif_with(orientation),
        )
    opts = options(resize=(64, 80), workers=0, device="cpu", batch_size=2)
    files = {
        kind: extract(root, tmp_path / f"{kind}.h5", config("gem"), opts, progress=False)
        for kind, root in roots.items()
    }
    split = load_split(roots["turned"], "test")
    with DescriptorFile(files["upright"]) as up, DescriptorFile(files["turned"]) as turned:
        assert turned.names("queries") == up.names("queries") == split.queries.names
        queries = turned.read_rows("queries", (1,), 0, 4)
        np.testing.assert_array_equal(queries, up.read_rows("queries", (1,), 0, 4))
        np.testing.assert_array_equal(
            turned.read_rows("database", (1,), 0, 6), up.read_rows("database", (1,), 0, 6)
        )
    # and the stored sideways pixels alone (no orientation applied) would give other descriptors
    stored = roots["turned"] / "images/test/queries"
    for path in stored.iterdir():
        Image.fromarray(np.asarray(Image.open(path).convert("RGB"))).save(path)  # EXIF dropped
    plain = extract(roots["turned"], tmp_path / "plain.h5", config("gem"), opts, progress=False)
    with DescriptorFile(plain) as f:
        assert not np.allclose(f.read_rows("queries", (1,), 0, 4), queries, atol=1e-3)
