"""Build a benchmark-layout dataset from your own geotagged photos.

Coordinates come from a CSV file (columns ``name,lat,lon``; ``name`` relative to the image folder)
or from the photos' EXIF GPS tags, and are converted to UTM with the ``utm`` package. Each image
is linked (or copied) to ``ROOT/images/SPLIT/ROLE/@east@north@zone@letter@lat@lon@@@@@@@stem@.ext``.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import utm
from PIL import Image

from .datasets import IMAGE_EXTENSIONS, ROLES, list_images
from .errors import VprkitError

GPS_IFD = 0x8825


def _rational(value) -> float:
    return float(value[0]) / float(value[1]) if isinstance(value, tuple) else float(value)


def exif_latlon(path: Path) -> tuple[float, float] | None:
    """(lat, lon) in degrees from a photo's EXIF GPS tags, or None when it has none."""
    try:
        with Image.open(path) as im:
            gps = im.getexif().get_ifd(GPS_IFD)
    except Exception as err:
        raise VprkitError(f"cannot read image {path}: {err}") from None
    if not gps or 2 not in gps or 4 not in gps:
        return None

    def degrees(dms, ref) -> float:
        d, m, s = (_rational(v) for v in dms)
        value = d + m / 60 + s / 3600
        return -value if ref in ("S", "W") else value

    return degrees(gps[2], gps.get(1, "N")), degrees(gps[4], gps.get(3, "E"))


def read_coordinates_csv(path: Path) -> dict[str, tuple[float, float]]:
    """name -> (lat, lon) from a CSV with a header naming name, lat and lon columns."""
    aliases = {"name": ("name", "file", "filename", "image", "path"),
               "lat": ("lat", "latitude"), "lon": ("lon", "lng", "long", "longitude")}
    try:
        handle = open(path, newline="")
    except OSError as err:
        raise VprkitError(f"cannot read coordinates file {path}: {err.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        cols = {}
        for key, names in aliases.items():
            found = [fields[n] for n in names if n in fields]
            if not found:
                raise VprkitError(f"{path}: no {key} column (expected one of {', '.join(names)})")
            cols[key] = found[0]
        out = {}
        for line, row in enumerate(reader, start=2):
            try:
                out[row[cols["name"]].strip()] = (float(row[cols["lat"]]), float(row[cols["lon"]]))
            except (TypeError, ValueError):
                raise VprkitError(f"{path} line {line}: bad latitude/longitude") from None
    return out


def benchmark_name(lat: float, lon: float, stem: str, suffix: str) -> str:
    east, north, zone, letter = utm.from_latlon(lat, lon)
    stem = stem.replace("@", "_")
    return f"@{east:.2f}@{north:.2f}@{zone}@{letter}@{lat:.6f}@{lon:.6f}@@@@@@@{stem}@{suffix}"


def import_images(
    images: str | Path,
    root: str | Path,
    split: str = "test",
    role: str = "database",
    coordinates: str | Path | None = None,
    copy: bool = False,
    skip_missing: bool = False,
) -> dict:
    """Link or copy the photos under ``images`` into the benchmark layout; returns counts."""
    images, root = Path(images), Path(root)
    if role not in ROLES:
        raise VprkitError(f"unknown role {role!r}; expected database or queries")
    if not images.is_dir():
        raise VprkitError(f"image folder {images} does not exist")
    names = list_images(images)
    if not names:
        raise VprkitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images}")
    table = read_coordinates_csv(Path(coordinates)) if coordinates else None
    target = root / "images" / split / role
    target.mkdir(parents=True, exist_ok=True)
    written, skipped = 0, []
    for name in names:
        src = images / name
        latlon = table.get(name) if table is not None else exif_latlon(src)
        if latlon is None:
            if not skip_missing:
                where = f"in {coordinates}" if table is not None else "in its EXIF GPS tags"
                raise VprkitError(f"no coordinates for {src} {where} (use --skip-missing to skip)")
            skipped.append(name)
            continue
        try:
            dest_name = benchmark_name(*latlon, Path(name).stem, Path(name).suffix.lower())
        except utm.error.OutOfRangeError as err:
            raise VprkitError(f"{src}: coordinates {latlon} out of range ({err})") from None
        dest = target / dest_name
        if dest.exists() or dest.is_symlink():
            raise VprkitError(f"{dest} already exists (two photos at the same place and name?)")
        if copy:
            shutil.copy2(src, dest)
        else:
            os.symlink(src.resolve(), dest)
        written += 1
    return {"written": written, "skipped": len(skipped), "folder": str(target),
            "first_skipped": skipped[0] if skipped else None}
