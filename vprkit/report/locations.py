"""What ``vprkit.locate.photos`` writes: CSV, GeoJSON and pictures of the located photos.

Photo names are written as UTF-8 text in every output (CSV, JSON, GeoJSON): the bytes of a
name that are not valid UTF-8 (surrogate escapes from ``os.fsdecode``) are written as ``\\xNN``
(``photo_text``), as error lines show them, so strict parsers read every file.

In the CSV, a name cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
is prefixed with ``'`` (``spreadsheet_safe``): a spreadsheet opening the file shows it as text
instead of running it as a formula (OWASP's advice against CSV injection). Benchmark names
(``@0542@4179@...@.jpg``: ``@``, a digit, then only letters, digits, ``@ . _ - /``) are written as
they are: without parentheses, quotes, ``|``, ``!`` or spaces a cell can call no function. Strip
one leading ``'`` from other such cells to get the name back, or read the JSON, which holds every
name as it is.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vprkit.data.datasets import image_inside, recorded_images
from vprkit.errors import photo_text
from vprkit.files import atomic_output
from vprkit.progress import ProgressCallback, progress_callback
from vprkit.store import DescriptorFile

if TYPE_CHECKING:
    from vprkit.locate.photos import LocateResult
CSV_COLUMNS = (
    "photo",
    "east",
    "north",
    "zone",
    "letter",
    "lat",
    "lon",
    "confidence",
    "best_match",
    "distance",
    "error_m",
)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
BENCHMARK_NAME = re.compile(r"@[0-9][\w@./-]*")  # no operator, call or reference can be formed


def spreadsheet_safe(text: str) -> str:
    """``text`` prefixed with ``'`` where it begins like a spreadsheet formula (see the module's
    docstring)."""
    if not text.startswith(FORMULA_STARTS) or BENCHMARK_NAME.fullmatch(text):
        return text
    return "'" + text


def csv_text(result: LocateResult) -> str:
    """One row per located photo: photo, east, north, zone, letter, lat, lon, confidence, best
    match, its distance, error in metres (empty where unknown); names as the module's docstring
    says (UTF-8, formula-like cells prefixed with ``'``)."""

    def text(value) -> str:
        return "" if value is None else f"{value:.6f}" if isinstance(value, float) else str(value)

    buffer = io.StringIO(newline="")
    out = csv.writer(buffer)
    out.writerow(CSV_COLUMNS)
    for loc in result.located:
        p = loc.position
        out.writerow(
            [
                spreadsheet_safe(photo_text(loc.photo)),
                *(text(v) for v in (p.east, p.north, p.zone, p.letter, p.lat, p.lon, loc.confidence)),
                spreadsheet_safe(photo_text(loc.matches[0]["name"])),
                text(loc.matches[0]["distance"]),
                text(loc.error_m),
            ]
        )
    return buffer.getvalue()


def write_csv(result: LocateResult, path: str | Path) -> Path:
    """``csv_text`` written to ``path`` (atomically, as UTF-8)."""
    with atomic_output(path, "w", newline="", encoding="utf-8") as handle:
        handle.write(csv_text(result))
    return Path(path)


def geojson(result: LocateResult) -> dict:
    """A GeoJSON FeatureCollection: a Point (longitude, latitude) per located photo, with its
    best match, confidence and UTM position as properties (``geometry`` null where the
    latitude and longitude are unknown); photo names as ``photo_text`` writes them."""
    features = []
    for loc in result.located:
        p = loc.position
        geometry = (
            None if p.lat is None or p.lon is None else {"type": "Point", "coordinates": [p.lon, p.lat]}
        )
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "photo": photo_text(loc.photo),
                    "best_match": photo_text(loc.matches[0]["name"]),
                    "confidence": loc.confidence,
                    "east": p.east,
                    "north": p.north,
                    "zone": p.zone,
                    "letter": p.letter,
                    "error_m": loc.error_m,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_location_pictures(
    result: LocateResult, database: str | Path, folder: str | Path, progress: ProgressCallback | None = None
) -> Path:
    """``vprkit.report.pictures`` of each located photo and its top-K matches (framed green or red
    where the photo's name gives its true position, grey otherwise); returns index.html.
    ``progress``: called as the pictures are drawn (``vprkit.progress``); None: silent."""
    from vprkit.report.pictures import Match, QueryPicture, write_pictures

    with DescriptorFile(database) as store:
        db_folder = recorded_images(store.dataset, "database")
    pictures = []
    for loc in result.located:
        matches = []
        for m in loc.matches:
            metres = (
                None
                if loc.true_position is None
                else float(
                    np.hypot(
                        loc.true_position[0] - m["position"]["east"],
                        loc.true_position[1] - m["position"]["north"],
                    )
                )
            )
            matches.append(
                Match(
                    path=image_inside(db_folder, m["name"], database),
                    name=m["name"],
                    rank=m["rank"],
                    distance=m["distance"],
                    metres=metres,
                    positive=None if metres is None else metres <= result.threshold,
                )
            )
        p = loc.position
        where = f"{p.east:.1f} E, {p.north:.1f} N" + (f", zone {p.zone}{p.letter or ''}" if p.zone else "")
        conf = "-" if loc.confidence is None else f"{loc.confidence:.3g}"
        pictures.append(
            QueryPicture(
                query_path=Path(loc.photo),
                query_name=Path(loc.photo).name,
                matches=matches,
                caption=f"at {where}; confidence {conf}",
            )
        )
    return write_pictures(
        Path(folder), pictures, f"located against {Path(database).name}", progress=progress_callback(progress)
    )
