"""New photos against a descriptor database: positions with a confidence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vprkit.lazy import lazy_exports

_EXPORTS = {
    "CONFIDENCE_CANDIDATES": "vprkit.locate.photos",
    "LocateResult": "vprkit.locate.photos",
    "LocatedPhoto": "vprkit.locate.photos",
    "find_photos": "vprkit.locate.photos",
    "locate": "vprkit.locate.photos",
    "rebuild_network": "vprkit.locate.photos",
}
__all__ = [
    "CONFIDENCE_CANDIDATES",
    "LocateResult",
    "LocatedPhoto",
    "find_photos",
    "locate",
    "rebuild_network",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from vprkit.locate.photos import (
        CONFIDENCE_CANDIDATES,
        LocatedPhoto,
        LocateResult,
        find_photos,
        locate,
        rebuild_network,
    )
