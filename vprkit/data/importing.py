"""Build a benchmark-layout dataset from your own geotagged photos.

Coordinates come from a CSV file (UTF-8, columns ``name,lat,lon``; ``name`` relative to the image
folder) or from the photos' EXIF GPS tags, and are converted to UTM with the ``utm`` package. Each
image is linked (or copied) to ``ROOT/images/SPLIT/ROLE/@east@north@zone@letter@lat@lon@@@@@@@stem@.ext``.

All photos of a dataset are projected into one UTM zone (``vprkit.geo.zones``: the zone of the
photos already under ``ROOT/images``, else ``--zone``, else the first photo's; photos too far from
it are refused).

An import is planned whole before anything is written: every photo's coordinates are read and
checked, every destination name is computed, and collisions (two photos mapping to one name, or a
file already there) are refused. A write that still fails removes what the import wrote (and the
folders it created), so a failed import leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from numbers import Real
from pathlib import Path

import utm
from PIL import Image

from vprkit.data.datasets import IMAGE_EXTENSIONS, ROLES, list_images
from vprkit.errors import VprkitError, shown
from vprkit.files import copy_exclusive
from vprkit.geo.zones import MAX_DEGREES_FROM_CENTRAL_MERIDIAN, DatasetZone, parse_zone
from vprkit.inputs import DATA_LIMIT, open_input, read_text
from vprkit.numbers import parse_float

__all__ = [
    "MAX_DEGREES_FROM_CENTRAL_MERIDIAN",
    "GpsTagError",
    "benchmark_name",
    "exif_latlon",
    "import_images",
    "read_coordinates_csv",
]

GPS_IFD = 0x8825
NAME_MAX = 255  # bytes in one file name on the common file systems


class GpsTagError(VprkitError):
    """A photo's EXIF GPS tags are there but cannot be read as a position."""


def _brief(value, limit: int = 60) -> str:
    """``repr(value)`` for a message: printable, and cut where long."""
    text = shown(repr(value))
    return text if len(text) <= limit else text[:limit] + "..."


def _rational(value) -> float:
    """One EXIF number (a rational, an integer or a float) as a float; ValueError otherwise."""
    if isinstance(value, tuple) and len(value) == 2:  # (numerator, denominator), older Pillow
        value = (float(value[0]) / float(value[1])) if float(value[1]) else math.nan
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{_brief(value)} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("a value is not finite (zero denominator?)")
    return number


def _degrees(dms, ref, ref_values: str, limit: float) -> float:
    if isinstance(dms, Real) and not isinstance(dms, bool):
        dms = (dms,)
    if not isinstance(dms, tuple) or len(dms) != 3:
        raise ValueError(f"expected 3 numbers (degrees, minutes, seconds), got {_brief(dms)}")
    d, m, s = (_rational(v) for v in dms)
    if min(d, m, s) < 0 or m > 60 or s > 60:
        raise ValueError(f"degrees, minutes, seconds {d:g}, {m:g}, {s:g} out of range")
    value = d + m / 60 + s / 3600
    if value > limit:
        raise ValueError(f"{value:g} degrees is beyond {limit:g}")
    if isinstance(ref, bytes):
        ref = ref.decode("latin-1")
    letter = ref.strip().rstrip("\0").upper() if isinstance(ref, str) else None
    if letter is None or len(letter) != 1 or letter not in ref_values:
        raise ValueError(f"reference {_brief(ref)} is not one of {', '.join(ref_values)}")
    return -value if letter == ref_values[1] else value


def exif_latlon(path: Path) -> tuple[float, float] | None:
    """(lat, lon) in degrees from a photo's EXIF GPS tags, or None when it has none.

    Tags that are there but malformed (zero denominators, wrong counts, text, NaN, a latitude
    beyond 90 degrees, an unknown N/S/E/W reference) raise ``GpsTagError`` naming the photo.
    """
    with open_input(path, "image") as handle:  # a regular file: never a FIFO or a device
        try:
            with Image.open(handle) as im:
                gps = im.getexif().get_ifd(GPS_IFD)
        except Exception as err:
            raise VprkitError(f"cannot read image {shown(path)}: {shown(err)}") from None
    if not gps or 2 not in gps or 4 not in gps:
        return None
    try:
        lat = _degrees(gps[2], gps.get(1, "N"), "NS", 90.0)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError) as err:
        raise GpsTagError(f"{shown(path)}: malformed EXIF GPS latitude: {err}") from None
    try:
        lon = _degrees(gps[4], gps.get(3, "E"), "EW", 180.0)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError) as err:
        raise GpsTagError(f"{shown(path)}: malformed EXIF GPS longitude: {err}") from None
    return lat, lon


def _valid_latlon(lat: float, lon: float) -> bool:
    return math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180


def read_coordinates_csv(path: Path) -> dict[str, tuple[float, float]]:
    """name -> (lat, lon) from a UTF-8 CSV (a BOM is fine) with a header naming name, lat and
    lon columns: a regular file (or a link to one) of at most ``vprkit.inputs.DATA_LIMIT``
    bytes (``vprkit.inputs.read_text``)."""
    aliases = {
        "name": ("name", "file", "filename", "image", "path"),
        "lat": ("lat", "latitude"),
        "lon": ("lon", "lng", "long", "longitude"),
    }
    where = shown(path)
    text = read_text(path, "coordinates file", DATA_LIMIT, encoding="utf-8-sig", hint="; save it as UTF-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        cols = {}
        for key, names in aliases.items():
            found = [fields[n] for n in names if n in fields]
            if not found:
                raise VprkitError(f"{where}: no {key} column (expected one of {', '.join(names)})")
            cols[key] = found[0]
        out: dict[str, tuple[float, float]] = {}
        first_line: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            name, lat, lon = (row.get(cols[k]) for k in ("name", "lat", "lon"))
            if not isinstance(name, str) or not name.strip():
                raise VprkitError(f"{where} line {line}: no image name")
            if not isinstance(lat, str) or not isinstance(lon, str):
                raise VprkitError(f"{where} line {line}: bad latitude/longitude (a column is missing)")
            latlon = (
                parse_float(lat, f"{where} line {line}: latitude"),
                parse_float(lon, f"{where} line {line}: longitude"),
            )
            if not _valid_latlon(*latlon):
                raise VprkitError(
                    f"{where} line {line}: latitude/longitude {_brief(lat)}, {_brief(lon)} "
                    "out of range (expected -90..90, -180..180)"
                )
            name = name.strip()
            if name in out and out[name] != latlon:
                raise VprkitError(
                    f"{where} line {line}: {shown(name)} already has other coordinates "
                    f"on line {first_line[name]}"
                )
            out[name] = latlon
            first_line.setdefault(name, line)
    except csv.Error as err:
        raise VprkitError(f"{where} line {reader.line_num}: {shown(err)}") from None
    return out


def benchmark_name(
    lat: float, lon: float, stem: str, suffix: str, utm_position: tuple[float, float, int, str] | None = None
) -> str:
    """The benchmark file name ``@east@north@zone@letter@lat@lon@...@stem@.ext`` of a photo;
    ``utm_position`` (east, north, zone, letter), e.g. in a dataset's zone, else the photo's
    own zone."""
    east, north, zone, letter = utm_position or utm.from_latlon(lat, lon)
    stem = stem.replace("@", "_")
    return f"@{east:.2f}@{north:.2f}@{zone}@{letter}@{lat:.6f}@{lon:.6f}@@@@@@@{stem}@{suffix}"


def check_split_name(split: str) -> str:
    """``split`` as one plain folder name under ROOT/images (nothing that escapes it)."""
    if (
        not isinstance(split, str)
        or not split
        or split in (".", "..")
        or any(sep in split for sep in ("/", "\\", os.sep, os.altsep or "/"))
        or Path(split).is_absolute()
        or not split.isprintable()
    ):
        raise VprkitError(
            f"bad split {_brief(split)}: expected a plain folder name such as train, val or test"
        )
    return split


def _folders_to_create(target: Path) -> list[Path]:
    """The folders of ``target`` (and above) that do not exist yet, outermost first; refuses a
    path where a file is in the way."""
    missing = []
    folder = target
    while not folder.is_dir():
        if folder.exists() or folder.is_symlink():
            raise VprkitError(f"{shown(folder)} exists and is not a folder")
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    return missing[::-1]


def _plan(
    images: Path, names: list[str], table, coordinates, target: Path, skip_missing: bool, zone: DatasetZone
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(source, destination) for every photo to write, and the names skipped; raises before
    anything is written."""
    plan: list[tuple[Path, Path]] = []
    skipped: list[str] = []
    sources: dict[str, Path] = {}
    for name in names:
        src = images / name
        try:
            latlon = table.get(name) if table is not None else exif_latlon(src)
        except GpsTagError as err:
            if not skip_missing:
                raise GpsTagError(f"{err} (use --skip-missing to skip such photos)") from None
            skipped.append(name)
            continue
        if latlon is None:
            if not skip_missing:
                where = f"in {shown(coordinates)}" if table is not None else "in its EXIF GPS tags"
                raise VprkitError(f"no coordinates for {shown(src)} {where} (use --skip-missing to skip)")
            skipped.append(name)
            continue
        try:
            lat, lon = latlon
            position = zone.project(src, lat, lon)
            dest_name = benchmark_name(lat, lon, Path(name).stem, Path(name).suffix.lower(), position)
        except utm.error.OutOfRangeError as err:
            raise VprkitError(f"{shown(src)}: coordinates {latlon} out of range ({err})") from None
        if len(dest_name.encode("utf-8")) > NAME_MAX:
            raise VprkitError(
                f"{shown(src)}: its name in the dataset would be longer than {NAME_MAX} "
                "bytes; shorten the photo's name"
            )
        dest = target / dest_name
        if dest_name in sources:
            raise VprkitError(
                f"{shown(sources[dest_name])} and {shown(src)} would both be "
                f"{shown(dest)} (same place and name); rename one"
            )
        if dest.exists() or dest.is_symlink():
            raise VprkitError(f"{shown(dest)} already exists (imported before?)")
        sources[dest_name] = src
        plan.append((src, dest))
    return plan, skipped


def _remove(written: list[Path], created: list[Path]) -> None:
    for path in reversed(written):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    for folder in reversed(created):
        try:
            folder.rmdir()  # only where empty
        except OSError:
            pass


def import_images(
    images: str | Path,
    root: str | Path,
    split: str = "test",
    role: str = "database",
    coordinates: str | Path | None = None,
    copy: bool = False,
    skip_missing: bool = False,
    zone: str | int | None = None,
) -> dict:
    """Link or copy the photos under ``images`` into the benchmark layout; returns counts and
    the dataset's UTM ``zone`` (e.g. ``"32T"``; None where nothing was written).

    All photos go into one UTM zone: that of the images already under ``root``, else ``zone``
    (``NUMBER[LETTER]``, e.g. ``32`` or ``32T``), else the first photo's (see the module's
    docstring). Photos with malformed EXIF GPS tags count as missing (``skip_missing`` skips
    them). Nothing is written before every photo is planned; a failed write removes what was
    written.
    """
    images, root = Path(images), Path(root)
    check_split_name(split)
    forced = parse_zone(zone) if zone is not None else None
    if role not in ROLES:
        raise VprkitError(f"unknown role {_brief(role)}; expected database or queries")
    if not images.is_dir():
        raise VprkitError(f"image folder {shown(images)} does not exist")
    names = list_images(images)
    if not names:
        raise VprkitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {shown(images)}")
    table = read_coordinates_csv(Path(coordinates)) if coordinates else None
    dataset_zone_ = DatasetZone(root, forced)
    target = root / "images" / split / role
    created = _folders_to_create(target)
    plan, skipped = _plan(images, names, table, coordinates, target, skip_missing, dataset_zone_)
    written: list[Path] = []
    made: list[Path] = []
    if plan:
        dest = target
        try:
            for folder in created:
                dest = folder
                folder.mkdir()
                made.append(folder)
            for src, dest in plan:
                if copy:
                    copy_exclusive(src, dest)
                    written.append(dest)
                    shutil.copystat(src, dest)
                else:
                    os.symlink(src.resolve(), dest)
                    written.append(dest)
        except (OSError, VprkitError) as err:
            _remove(written, made)
            what = (
                shown(err)
                if isinstance(err, VprkitError)
                else f"cannot write {shown(dest)}: {shown(err.strerror or err)}"
            )
            raise VprkitError(
                f"{what}; nothing was imported (removed the {len(written)} file(s) "
                "and the new folders it had written)"
            ) from None
        except BaseException:
            _remove(written, made)
            raise
    return {
        "written": len(written),
        "skipped": len(skipped),
        "folder": str(target),
        "first_skipped": skipped[0] if skipped else None,
        "zone": dataset_zone_.name if written else None,
    }
