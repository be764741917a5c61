"""vprkit: visual place recognition with stored descriptor databases.

The public API (see ``docs/api.md``) is importable from the package itself::

    import vprkit

    path = vprkit.extract_split("datasets/pitts30k", "gem.h5", vprkit.ModelConfig(),
                                vprkit.ExtractOptions(scales=(1, 2)))
    print(vprkit.evaluate_file(path, "1+2").recalls)

``import vprkit`` is light: it imports neither torch, scikit-learn nor h5py. Each public name is
resolved on first use (PEP 562 module ``__getattr__``), importing only the submodule that defines
it. The functions are named after what they act on (``extract_split``, ``combine_files``,
``train_model``, ``merge_shards``) so that they never hide the submodules of the same verb:
``vprkit.extract`` stays the module and ``from vprkit.extract import extract`` keeps working.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0.dev0"

# public name -> (module that defines it, its name there)
_LAZY: dict[str, tuple[str, str]] = {
    "DescriptorFile": ("vprkit.store", "DescriptorFile"),
    "EvaluationResult": ("vprkit.evaluate", "EvaluationResult"),
    "ExtractOptions": ("vprkit.extract", "ExtractOptions"),
    "ModelConfig": ("vprkit.models.network", "ModelConfig"),
    "TrainConfig": ("vprkit.train.trainer", "TrainConfig"),
    "VprkitError": ("vprkit.errors", "VprkitError"),
    "combine_files": ("vprkit.combine", "combine"),
    "compare_files": ("vprkit.compare", "compare_files"),
    "evaluate_file": ("vprkit.evaluate", "evaluate_file"),
    "extract_split": ("vprkit.extract", "extract"),
    "export_hloc": ("vprkit.export", "export_hloc"),
    "export_pairs": ("vprkit.export", "export_pairs"),
    "locate_photos": ("vprkit.locate", "locate"),
    "train_model": ("vprkit.train.trainer", "train"),
}

__all__ = [
    "DescriptorFile",
    "EvaluationResult",
    "ExtractOptions",
    "ModelConfig",
    "TrainConfig",
    "VprkitError",
    "combine_files",
    "compare_files",
    "evaluate_file",
    "export_hloc",
    "export_pairs",
    "extract_split",
    "locate_photos",
    "merge_shards",
    "train_model",
]

if TYPE_CHECKING:
    from .combine import combine as combine_files
    from .compare import compare_files
    from .errors import VprkitError
    from .evaluate import EvaluationResult, evaluate_file
    from .export import export_hloc, export_pairs
    from .extract import ExtractOptions
    from .extract import extract as extract_split
    from .locate import locate as locate_photos
    from .models.network import ModelConfig
    from .store import DescriptorFile
    from .train.trainer import TrainConfig
    from .train.trainer import train as train_model


def merge_shards(shards: list[str | Path], output: str | Path, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """Join the shard files of one sharded extraction into one descriptor file.

    ``extract_split(..., options=ExtractOptions(shard=(i, n)))`` (``vprkit extract --shard i/n``)
    writes shard ``i`` of ``n`` next to its output (``db.h5`` -> ``db.shard<i>of<n>.h5``). This
    checks that the shards come from the same extraction (model fingerprint, preprocessing,
    storage type, dataset, scales, image lists) and that all ``n`` are there, then streams them
    into ``output``, written as ``output.partial`` and renamed when complete. The merged file
    equals an unsharded extraction row for row. Delegates to ``vprkit.shards.merge``.

    Args:
        shards: the ``n`` shard files, in any order.
        output: the merged descriptor file to write.
        overwrite: replace ``output`` if it exists (otherwise an existing output is refused).
        progress: show a progress bar and a summary line.

    Returns:
        The path of the merged file (``output``).

    Raises:
        VprkitError: no shards, a file that is not a shard, shards of different extractions,
            a shard missing or given twice, or ``output`` existing without ``overwrite``.
    """
    from .shards import merge

    return merge(shards, output, overwrite=overwrite, progress=progress)


def __getattr__(name: str) -> Any:
    """A public name (or a submodule) imported on first use; later uses find it in globals."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # a submodule: vprkit.store
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, the submodules and the module's dunders (not its helper imports)."""
    submodules = {m.name for m in pkgutil.iter_modules(__path__)}
    dunders = {n for n in globals() if n.startswith("__")}
    return sorted(set(__all__) | submodules | dunders)
