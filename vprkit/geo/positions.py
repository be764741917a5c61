"""Geographic fields of benchmark image names, and UTM to latitude/longitude.

A benchmark name is ``@UTM_east@UTM_north@zone@letter@lat@lon@...@.jpg``; only east and north
are required, so the other fields may be empty. Descriptor files keep every image's name, so
these fields travel with the file (older files included); ``vprkit dataset import`` fills them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Position:
    """A UTM position with its zone, and latitude/longitude where known.

    Attributes:
        east: UTM easting in metres.
        north: UTM northing in metres.
        zone: UTM zone number (1-60), None where the name does not give it.
        letter: UTM latitude band letter, None where unknown.
        lat: latitude in degrees (WGS84), None where unknown.
        lon: longitude in degrees, None where unknown.
    """

    east: float
    north: float
    zone: int | None = None
    letter: str | None = None
    lat: float | None = None
    lon: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def position_of(name: str, east: float, north: float) -> Position:
    """The position of an image with stored UTM ``east``, ``north`` and file ``name``: its zone
    and letter from the name's 3rd and 4th ``@`` fields, latitude and longitude from the 5th and
    6th, else computed from the UTM coordinates when the zone and letter are known."""
    fields = Path(name).name.split("@")
    zone = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() and 1 <= int(fields[3]) <= 60 else None
    letter = (
        fields[4].upper()
        if len(fields) > 4 and len(fields[4]) == 1 and fields[4].upper() in "CDEFGHJKLMNPQRSTUVWX"
        else None
    )
    lat = _float(fields[5]) if len(fields) > 5 else None
    lon = _float(fields[6]) if len(fields) > 6 else None
    if (lat is None or lon is None) and zone is not None and letter is not None:
        lat, lon = to_latlon(east, north, zone, letter)
    if lat is None or lon is None:
        lat = lon = None
    return Position(float(east), float(north), zone, letter, lat, lon)


def to_latlon(east: float, north: float, zone: int, letter: str) -> tuple[float | None, float | None]:
    """(lat, lon) of a UTM position, (None, None) where it is out of the zone's range."""
    import utm

    try:
        lat, lon = utm.to_latlon(east, north, zone, letter)
    except utm.error.OutOfRangeError:
        return None, None
    return float(lat), float(lon)
