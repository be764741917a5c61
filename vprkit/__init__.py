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
``vprkit.extract.split`` stays the module and ``from vprkit.extract.split import extract`` keeps working.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vprkit import lazy as _moved

__version__ = "0.2.0.dev0"

_moved.install()  # the old module names of the flat layout still import (with a warning)

# public name -> (module that defines it, its name there)
_LAZY: dict[str, tuple[str, str]] = {
    "DescriptorFile": ("vprkit.store", "DescriptorFile"),
    "EvaluationResult": ("vprkit.evaluate.results", "EvaluationResult"),
    "ExtractOptions": ("vprkit.extract.options", "ExtractOptions"),
    "ModelConfig": ("vprkit.models.network", "ModelConfig"),
    "TrainConfig": ("vprkit.train.trainer", "TrainConfig"),
    "VprkitError": ("vprkit.errors", "VprkitError"),
    "combine_files": ("vprkit.ensemble.combining", "combine"),
    "compare_files": ("vprkit.evaluate.compare", "compare_files"),
    "extract_split": ("vprkit.extract.split", "extract"),
    "export_hloc": ("vprkit.report.export", "export_hloc"),
    "export_pairs": ("vprkit.report.export", "export_pairs"),
    "locate_photos": ("vprkit.locate.photos", "locate"),
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
    from vprkit.ensemble.combining import combine as combine_files
    from vprkit.errors import VprkitError
    from vprkit.evaluate.compare import compare_files
    from vprkit.evaluate.results import EvaluationResult
    from vprkit.extract.options import ExtractOptions
    from vprkit.extract.split import extract as extract_split
    from vprkit.locate.photos import locate as locate_photos
    from vprkit.models.network import ModelConfig
    from vprkit.progress import ProgressCallback
    from vprkit.report.export import export_hloc, export_pairs
    from vprkit.store import DescriptorFile
    from vprkit.train.trainer import TrainConfig
    from vprkit.train.trainer import train as train_model


def merge_shards(
    shards: list[str | Path],
    output: str | Path,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Join the shard files of one sharded extraction into one descriptor file.

    ``extract_split(..., options=ExtractOptions(shard=(i, n)))`` (``vprkit extract --shard i/n``)
    writes shard ``i`` of ``n`` next to its output (``db.h5`` -> ``db.shard<i>of<n>.h5``). This
    checks that the shards come from the same extraction (model fingerprint, preprocessing,
    storage type, dataset, scales, image lists) and that all ``n`` are there, then streams them
    into ``output``, written as ``output.partial`` and renamed when complete. The merged file
    equals an unsharded extraction row for row. Delegates to ``vprkit.extract.shards.merge``.

    Args:
        shards: the ``n`` shard files, in any order.
        output: the merged descriptor file to write.
        overwrite: replace ``output`` if it exists (otherwise an existing output is refused).
        progress: called as the work goes (``vprkit.progress``); None: silent. The summary
            line is logged (``logging``, ``vprkit`` logger).

    Returns:
        The path of the merged file (``output``).

    Raises:
        VprkitError: no shards, a file that is not a shard, shards of different extractions,
            a shard missing or given twice, or ``output`` existing without ``overwrite``.
    """
    from vprkit.extract.shards import merge
    from vprkit.progress import progress_callback

    return merge(shards, output, overwrite=overwrite, progress=progress_callback(progress))


def evaluate_file(
    path: str | Path,
    scale: str | None = None,
    *args: Any,
    predictions_path: str | Path | None = None,
    pictures: str | Path | None = None,
    only_wrong: bool = False,
    pictures_limit: int | None = None,
    pictures_top_k: int = 5,
    **kwargs: Any,
) -> EvaluationResult:
    """Recall@N of one scale or pyramid of a descriptor file: ``vprkit.evaluate.evaluate_file``
    (see there for the arguments and the result).

    ``predictions_path`` and ``pictures`` (with ``only_wrong``, ``pictures_limit`` and
    ``pictures_top_k``) are deprecated here: write them from the result with
    ``vprkit.report.write_predictions(result, path)`` and
    ``vprkit.report.write_query_pictures(result, folder, only_wrong, limit, top_k)``.

    Args:
        path: a complete descriptor file.
        scale: ``"2"`` for one stored scale, ``"1+2+3"`` for a pyramid; None: the first scale.
        *args: the further arguments of ``vprkit.evaluate.evaluate_file``, in its order.
        predictions_path: deprecated; a CSV of each query's top predictions.
        pictures: deprecated; a folder of pictures of each query's predictions.
        only_wrong: deprecated, with ``pictures``: the wrong queries only.
        pictures_limit: deprecated, with ``pictures``: at most this many.
        pictures_top_k: deprecated, with ``pictures``: predictions shown per query.
        **kwargs: the keyword arguments of ``vprkit.evaluate.evaluate_file``.

    Returns:
        The ``EvaluationResult``, with each query's ranking.
    """
    import warnings

    from vprkit.evaluate.evaluation import evaluate_file as evaluate

    result = evaluate(path, scale, *args, **kwargs)
    if predictions_path is not None or pictures is not None:
        from vprkit.report.predictions import write_predictions, write_query_pictures

        warnings.warn(
            "evaluate_file(predictions_path=, pictures=) are deprecated: use "
            "vprkit.report.write_predictions and write_query_pictures on the result",
            DeprecationWarning,
            stacklevel=2,
        )
        if predictions_path is not None:
            write_predictions(result, predictions_path)
        if pictures is not None:
            write_query_pictures(result, pictures, only_wrong, pictures_limit, pictures_top_k)
    return result


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
