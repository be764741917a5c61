"""One UTM zone per dataset, for ``vprkit dataset import``.

All photos of a dataset are projected into one UTM zone, so that distances between any two of
them are right (each photo in its own zone would put two photos a few metres apart across a zone
boundary hundreds of kilometres apart): the zone of the photos already under ``ROOT/images`` (read
from their names' zone and letter fields; names that disagree are an error), else ``--zone
NUMBER[LETTER]``, else the zone of the first imported photo (in sorted name order). The letter,
a latitude band, is that of the first photo (or the one given or found); it also fixes the
hemisphere of the northings, so a dataset that crosses the equator keeps one continuous grid. Each
name records the dataset's zone number and letter.

A photo more than ``MAX_DEGREES_FROM_CENTRAL_MERIDIAN`` (6) degrees of longitude from the zone's
central meridian (the zone itself spans 3 degrees either side, so this is half of a neighbouring
zone) is refused, naming the photo and the zone. UTM's scale error grows with the square of that
distance: about +0.1% at the zone's edge (3 degrees), +0.5% at 6 degrees and +1.2% at 9 degrees at
the equator (less at higher latitudes, where a degree of longitude is shorter), and the ``utm``
package's series lose accuracy beyond that (a forward and back conversion at 45 degrees north is
off by about 5 cm at 6 degrees, 2 m at 10 degrees and 30 m at 15 degrees). Import places farther
apart as separate datasets.
"""

from __future__ import annotations

import re
from pathlib import Path

import utm

from vprkit.choices import IMAGE_EXTENSIONS
from vprkit.errors import VprkitError, shown

MAX_DEGREES_FROM_CENTRAL_MERIDIAN = 6.0  # of longitude; see the module's docstring
ZONE_LETTERS = "CDEFGHJKLMNPQRSTUVWX"  # UTM latitude bands, 80 S to 84 N


def _brief(value, limit: int = 60) -> str:
    """``repr(value)`` for a message: printable, and cut where long."""
    text = shown(repr(value))
    return text if len(text) <= limit else text[:limit] + "..."


def parse_zone(text: str | int) -> tuple[int, str | None]:
    """(number, letter or None) of a UTM zone given as ``NUMBER[LETTER]``, e.g. ``32`` or ``32T``."""
    match = (
        None
        if isinstance(text, bool)
        else re.fullmatch(rf"\s*0*([1-9][0-9]?)\s*([{ZONE_LETTERS}])?\s*", str(text).upper(), flags=re.ASCII)
    )
    if match is None or int(match[1]) > 60:
        raise VprkitError(
            f"bad UTM zone {_brief(text)}: expected a zone number 1-60 and an optional "
            f"latitude band letter ({ZONE_LETTERS[0]}-{ZONE_LETTERS[-1]}, not I or O), "
            "e.g. 32 or 32T"
        )
    return int(match[1]), match[2]


def _northern(letter: str) -> bool:
    return letter >= "N"


def central_meridian(zone: int) -> float:
    """Longitude in degrees of the central meridian of UTM zone ``zone`` (1-60)."""
    return (zone - 1) * 6.0 - 177.0


def degrees_from_central_meridian(lon: float, zone: int) -> float:
    """|lon - the zone's central meridian| in degrees, across the antimeridian where shorter."""
    return abs((lon - central_meridian(zone) + 180.0) % 360.0 - 180.0)


def _name_zone(path: Path) -> tuple[int, str | None] | None:
    """(zone, letter or None) from a benchmark name's 3rd and 4th fields; None where the name
    gives no zone; an error where the field is there but is not a zone."""
    fields = path.name.split("@")  # ['', east, north, zone, letter, ..., '.ext']
    if len(fields) < 5 or not fields[3].strip():
        return None
    letter = fields[4].strip().upper() if len(fields) > 5 else ""
    try:
        number, none = parse_zone(fields[3])
        if none is not None or letter and (len(letter) != 1 or letter not in ZONE_LETTERS):
            raise VprkitError("not a zone")
    except VprkitError:
        raise VprkitError(
            f"cannot read the UTM zone of {shown(path)} (zone {_brief(fields[3])}, "
            f"letter {_brief(letter)}), already in the dataset; vprkit imports "
            "into the zone of the images already there"
        ) from None
    return number, letter or None


def dataset_zone(root: Path) -> tuple[int, str | None, Path] | None:
    """(zone, letter or None, an image) of the images already under ``ROOT/images``, read from
    their names; None where none gives a zone. Names in different zones, or with letters of
    different hemispheres, are an error naming two of them."""
    found: tuple[int, str | None, Path] | None = None
    folder = root / "images"
    if not folder.is_dir():
        return None
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        zone = _name_zone(path)
        if zone is None:
            continue
        if found is None:
            found = (*zone, path)
            continue
        number, letter, first = found
        if zone[0] != number or letter and zone[1] and _northern(letter) != _northern(zone[1]):
            raise VprkitError(
                f"the images already in {shown(root)} are in different UTM zones "
                f"({shown(first)}: {number}{letter or ''}, {shown(path)}: "
                f"{zone[0]}{zone[1] or ''}); vprkit imports into one zone per "
                "dataset: import into a new dataset root"
            )
        if letter is None and zone[1] is not None:
            found = (number, zone[1], first)
    return found


class DatasetZone:
    """The one UTM zone of an import: fixed by the dataset's images or ``--zone``, else by the
    first photo projected."""

    def __init__(self, root: Path, forced: tuple[int, str | None] | None):
        self.number: int | None = None
        self.letter: str | None = None
        self.source = ""
        existing = dataset_zone(root)
        if existing is not None:
            number, letter, path = existing
            if forced is not None and (
                forced[0] != number or forced[1] and letter and _northern(forced[1]) != _northern(letter)
            ):
                raise VprkitError(
                    f"--zone {forced[0]}{forced[1] or ''} disagrees with the zone "
                    f"{number}{letter or ''} of the images already in {shown(root)} "
                    f"(e.g. {shown(path)}); vprkit imports into one zone per "
                    "dataset"
                )
            self.number, self.letter = number, (forced[1] if forced else None) or letter
            self.source = f"the zone of the images already in the dataset, e.g. {shown(path.name)}"
        elif forced is not None:
            self.number, self.letter = forced
            self.source = "given by --zone"

    @property
    def name(self) -> str:
        return f"{self.number}{self.letter or ''}"

    def project(self, src: Path, lat: float, lon: float) -> tuple[float, float, int, str]:
        """(east, north, zone, letter) of a photo in the dataset's zone (its own zone and band
        where none is fixed yet); refuses one too far from the zone's central meridian."""
        if self.number is None or self.letter is None:
            _, _, number, letter = utm.from_latlon(lat, lon)  # OutOfRangeError for a bad latitude
            if self.number is None:
                self.number = number
                self.source = f"the zone of the first photo, {shown(src.name)}"
            self.letter = self.letter or letter
        away = degrees_from_central_meridian(lon, self.number)
        if away > MAX_DEGREES_FROM_CENTRAL_MERIDIAN:
            raise VprkitError(
                f"{shown(src)}: longitude {lon:.6f} is {away:.1f} degrees from the central meridian "
                f"({central_meridian(self.number):g}) of UTM zone {self.name}, this dataset's zone "
                f"({self.source}); vprkit projects a dataset into one zone and refuses photos more "
                f"than {MAX_DEGREES_FROM_CENTRAL_MERIDIAN:g} degrees from its central meridian, "
                "where UTM distances lose accuracy: import them as a separate dataset"
            )
        east, north, number, letter = utm.from_latlon(
            lat, lon, force_zone_number=self.number, force_zone_letter=self.letter
        )
        return float(east), float(north), number, letter
