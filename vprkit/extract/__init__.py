"""The network over a dataset once: descriptor files, shards, torchrun and Slurm tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vprkit.lazy import lazy_exports

_EXPORTS = {
    "DTYPES": "vprkit.extract.split",
    "ExtractOptions": "vprkit.extract.split",
    "extract": "vprkit.extract.split",
    "image_size_for": "vprkit.extract.split",
}
__all__ = ["DTYPES", "ExtractOptions", "extract", "image_size_for"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from vprkit.extract.split import (
        DTYPES,
        ExtractOptions,
        extract,
        image_size_for,
    )
