"""Names imported on first use, and the old module names of moved modules.

A package's ``__init__`` lists its public names and the module that defines each; a name is
imported the first time it is used (PEP 562), so ``import vprkit.extract`` costs nothing until
``vprkit.extract.extract`` is asked for. The modules of the flat layout of vprkit 0.1
(``vprkit.datasets``, ``vprkit.inference``, ...) still import under their old names, with a
``DeprecationWarning`` naming the new one; the old names go in the release after next.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

# old module -> the module that holds its code now
MOVED = {
    "vprkit.combine": "vprkit.ensemble.combining",
    "vprkit.utm_zone": "vprkit.geo.zones",
    "vprkit.roles": "vprkit.choices",
    "vprkit.pyramid": "vprkit.descriptors.pyramid",
    "vprkit.views": "vprkit.descriptors.views",
    "vprkit.datasets": "vprkit.data.datasets",
    "vprkit.dataset_import": "vprkit.data.importing",
    "vprkit.images": "vprkit.data.images",
    "vprkit.image_check": "vprkit.data.image_check",
    "vprkit.synthetic": "vprkit.data.synthetic",
    "vprkit.index": "vprkit.search.index",
    "vprkit.kmeans": "vprkit.search.kmeans",
    "vprkit.inference": "vprkit.extract.inference",
    "vprkit.distributed_extract": "vprkit.extract.distributed",
    "vprkit.shards": "vprkit.extract.shards",
    "vprkit.world": "vprkit.extract.world",
    "vprkit.netvlad_init": "vprkit.extract.clusters",
    "vprkit.statistics": "vprkit.evaluate.statistics",
    "vprkit.compare": "vprkit.evaluate.compare",
    "vprkit.locate_output": "vprkit.report.locations",
    "vprkit.pictures": "vprkit.report.pictures",
    "vprkit.plotting": "vprkit.report.plotting",
    "vprkit.markdown_report": "vprkit.report.markdown",
    "vprkit.report_statistics": "vprkit.report.statistics",
    "vprkit.export": "vprkit.report.export",
}


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public names live in its modules.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module that defines it (under the same name).
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)  # the next use finds it directly
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__


class _Alias(importlib.abc.Loader):
    """Loads an old module name as the module that holds its code now."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} is now {self.target}; the old name goes in a later release",
            DeprecationWarning,
            stacklevel=2,
        )
        sys.modules[module.__name__] = importlib.import_module(self.target)


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds the old names of moved modules (``MOVED``)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(MOVED[fullname]))


def install() -> None:
    """Let the old module names import (once per process)."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
