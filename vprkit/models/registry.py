"""One registry for every kind of component: backbones, aggregations, zoo models.

A ``Registry[T]`` belongs to one package and holds what that package's modules register by
name. Each name lives in one module, found without importing anything else:

- one module per name (backbones, aggregations): ``vprkit/models/aggregations/gem.py``
  registers ``"gem"``. The names are the package's module file names
  (``vprkit.choices.component_names``), so the command line lists them without importing torch
  and without reading source; ``register`` checks that a class or function of the package
  registers the name of its own module.
- one module per family (the zoo): ``family_of(name)`` names the module (``cosplace_resnet18_32``
  lives in ``zoo/cosplace.py``); the names are known once the families are imported.

A module is imported the first time one of its names is looked up. Names registered from
elsewhere (a test, a plugin) are looked up the same way and can be removed with ``unregister``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from vprkit.choices import component_names
from vprkit.errors import VprkitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Components of one kind, by name.

    Args:
        kind: what they are, for error lines (``"backbone"``, ``"aggregation"``).
        package: the package whose modules register them (``"vprkit.models.backbones"``).
        family_of: the module (in ``package``) of a name; None: the name itself (one module
            per name, the names listed from the module files).
        hint: said after the known names of an unknown one (e.g. ``"vprkit models lists them"``).
    """

    def __init__(
        self, kind: str, package: str, family_of: Callable[[str], str] | None = None, hint: str = ""
    ):
        self.kind = kind
        self.package = package
        self.family_of = family_of
        self.hint = hint
        self._items: dict[str, T] = {}
        self._loaded = False
        self._declared: tuple[str, ...] | None = None

    # ------------------------------------------------------------------ the names
    def declared(self) -> tuple[str, ...]:
        """The modules of the package (for one module per name: the names), unimported."""
        if self._declared is None:
            folder = Path(importlib.import_module(self.package).__file__ or "").parent
            self._declared = component_names(folder)
        return self._declared

    def names(self) -> tuple[str, ...]:
        """Every name: the package's in their order (natural order of the modules), then the
        ones registered from elsewhere."""
        self.load_all()
        if self.family_of is None:
            own = [n for n in self.declared() if n in self._items]
        else:
            own = sorted(n for n in self._items if self.family_of(n) in self.declared())
        return (*own, *(n for n in self._items if n not in own))

    def load_all(self) -> None:
        """Import every module of the package (each registers its names)."""
        if not self._loaded:
            for module in self.declared():
                importlib.import_module(f"{self.package}.{module}")
            self._loaded = True

    # ------------------------------------------------------------------ registering
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated class or function as ``name``."""

        def add(item: T) -> T:
            return self.add(name, item, getattr(item, "__module__", None))

        return add

    def add(self, name: str, item: T, module: str | None = None) -> T:
        """Register ``item`` as ``name``; ``module``: the module that registers it, which must
        be the name's own where it is one of the package's."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        if module is not None and module.startswith(f"{self.package}."):
            own = f"{self.package}.{self.module_of(name)}"
            if module != own:
                raise ValueError(f"{self.kind} {name!r} must be registered by {own}, not {module}")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        """Remove ``name`` (registered by a test or a plugin); returns what it was."""
        return self._items.pop(name)

    def module_of(self, name: str) -> str:
        """The package's module that registers ``name``."""
        return name if self.family_of is None else self.family_of(name)

    # ------------------------------------------------------------------ looking up
    def get(self, name: str) -> T:
        """The component ``name``, its module imported on first use; one ``VprkitError``
        listing the known names for an unknown one."""
        if name not in self._items and isinstance(name, str):
            module = self.module_of(name)
            if module in self.declared():
                importlib.import_module(f"{self.package}.{module}")
        if name not in self._items:
            hint = f"; {self.hint}" if self.hint else ""
            raise VprkitError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}{hint}")
        return self._items[name]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except VprkitError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        """(name, component) of every name, in ``names()`` order."""
        return [(name, self._items[name]) for name in self.names()]

    def values(self) -> list[T]:
        """Every component, in ``names()`` order."""
        return [self._items[name] for name in self.names()]
