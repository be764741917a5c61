"""Geography: UTM zones of named places and positions as latitude and longitude."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vprkit.lazy import lazy_exports

_EXPORTS = {
    "DatasetZone": "vprkit.geo.zones",
    "MAX_DEGREES_FROM_CENTRAL_MERIDIAN": "vprkit.geo.zones",
    "Position": "vprkit.geo.positions",
    "ZONE_LETTERS": "vprkit.geo.zones",
    "central_meridian": "vprkit.geo.zones",
    "dataset_zone": "vprkit.geo.zones",
    "degrees_from_central_meridian": "vprkit.geo.zones",
    "parse_zone": "vprkit.geo.zones",
    "position_of": "vprkit.geo.positions",
    "to_latlon": "vprkit.geo.positions",
}
__all__ = [
    "DatasetZone",
    "MAX_DEGREES_FROM_CENTRAL_MERIDIAN",
    "Position",
    "ZONE_LETTERS",
    "central_meridian",
    "dataset_zone",
    "degrees_from_central_meridian",
    "parse_zone",
    "position_of",
    "to_latlon",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from vprkit.geo.positions import (
        Position,
        position_of,
        to_latlon,
    )
    from vprkit.geo.zones import (
        MAX_DEGREES_FROM_CENTRAL_MERIDIAN,
        ZONE_LETTERS,
        DatasetZone,
        central_meridian,
        dataset_zone,
        degrees_from_central_meridian,
        parse_zone,
    )
