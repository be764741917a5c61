"""Command-line defaults read from the library: one source for every default.

An option declared with ``library_option(..., source=field_default(module, owner, name))`` takes
the default of field ``name`` of the dataclass ``owner`` (``ExtractOptions``, ``TrainConfig``,
``ModelConfig``) or of keyword ``name`` of the function ``owner`` (``evaluate_file``), in
``module``. The default is read when first needed (``--help`` or a run), not when ``vprkit.cli``
is imported, so that ``vprkit --help`` imports neither torch nor h5py; ``--help`` shows it as
any default. ``tests/test_cli_defaults.py`` checks every command's options against the library.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import click


def field_default(
    module: str, owner: str, name: str, shown: Callable[[Any], Any] | None = None
) -> Callable[[], Any]:
    """A reader of the default of ``owner.name`` in ``module`` (a dataclass field or a function's
    keyword), converted by ``shown`` to the option's form (``(1, 2)`` -> ``"1,2"``); read once."""

    @functools.cache
    def read() -> Any:
        target = getattr(importlib.import_module(module), owner)
        value = library_default(target, name)
        return shown(value) if shown is not None else value

    return read


def library_default(target: Any, name: str) -> Any:
    """The default of field ``name`` of dataclass ``target``, or of keyword ``name`` of the
    callable ``target``.

    Raises:
        KeyError: ``target`` has no such field or keyword, or it has no default.
    """
    if dataclasses.is_dataclass(target):
        for item in dataclasses.fields(target):
            if item.name == name:
                if item.default is not dataclasses.MISSING:
                    return item.default
                if item.default_factory is not dataclasses.MISSING:
                    return item.default_factory()
                break
        raise KeyError(f"{getattr(target, '__name__', target)} has no field {name} with a default")
    parameter = inspect.signature(target).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise KeyError(f"{target.__name__} has no keyword {name} with a default")
    return parameter.default


class LibraryOption(click.Option):
    """A click option whose default is the library's (``source()``), shown by ``--help``."""

    def __init__(self, *args: Any, source: Callable[[], Any], **kwargs: Any):
        kwargs.setdefault("show_default", True)
        super().__init__(*args, **kwargs)
        self.source = source

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        if ctx.lookup_default(self.name or "", call=False) is not None:  # a default_map's
            return super().get_default(ctx, call)
        return self.source()


def library_option(*decls: str, source: Callable[[], Any], **attrs: Any):
    """``click.option`` whose default is read from the library (``field_default``); give
    ``type`` explicitly (it cannot be guessed from a default not yet read)."""
    return click.option(*decls, cls=LibraryOption, source=source, **attrs)


def set_option(function):
    """``--set KEY=VALUE`` (repeatable): an option of a component of the network
    (``ModelConfig.with_overrides``), so that a new option of a component needs no new flag."""
    return click.option(
        "--set",
        "settings",
        multiple=True,
        metavar="KEY=VALUE",
        help="Set an option of the network's components, repeatable: aggregation.OPTION=VALUE "
        "or backbone.OPTION=VALUE, any option the component declares (its Options in "
        "vprkit.models), e.g. --set aggregation.clusters=32, --set "
        "aggregation.fc_output_dim=128, --set aggregation.p=3.5 (gem); applied after the "
        "options above.  [default: none]",
    )(function)
