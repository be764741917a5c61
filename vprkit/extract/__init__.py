"""The network over a dataset once: descriptor files, shards, torchrun and Slurm tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vprkit.lazy import lazy_exports

_EXPORTS = {
    "DTYPES": "vprkit.extract.options",
    "ExtractOptions": "vprkit.extract.options",
    "InferenceOptions": "vprkit.extract.options",
    "extract": "vprkit.extract.split",
    "image_size_for": "vprkit.extract.split",
}
__all__ = ["DTYPES", "ExtractOptions", "InferenceOptions", "extract", "image_size_for"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from vprkit.extract.options import DTYPES, ExtractOptions, InferenceOptions
    from vprkit.extract.split import extract, image_size_for
