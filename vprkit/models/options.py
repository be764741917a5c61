"""A component's options: one frozen dataclass of typed fields with their defaults.

Each registered component declares its options in one place, its ``Options`` dataclass (as
hloc's ``default_conf``): NetVLAD's ``clusters: int = 64``, GeM's ``p: float = 3.0``, the
shallow poolings' ``l2``, every aggregation's ``fc_output_dim``. ``make_options`` turns a dict
(from code, a stored config, or ``--set`` text through ``parse_option``) into that dataclass,
refusing an unknown key or a value of another type in one line naming it; ``changed_options``
is the dict of the options not at their defaults (what a config records).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from vprkit.errors import VprkitError, shown
from vprkit.numbers import parse_float, parse_int


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a component that has none."""


def declared(options: type) -> dict[str, tuple[type, ...]]:
    """Option name -> the types it accepts (``NoneType`` too for ``int | None``)."""
    hints = typing.get_type_hints(options)
    out = {}
    for f in dataclasses.fields(options):
        kind = hints[f.name]
        out[f.name] = (
            typing.get_args(kind)
            if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
            else (kind,)
        )
    return out


def _fits(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if value is None:
        return type(None) in kinds
    if isinstance(value, int) and (int in kinds or float in kinds):
        return True
    return any(k not in (bool, type(None)) and isinstance(value, k) for k in kinds)


def _type_text(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def make_options(options: type, values: Mapping[str, Any], what: str) -> Any:
    """The ``options`` dataclass with ``values`` set (the rest at their defaults).

    Args:
        options: a component's ``Options`` dataclass.
        values: option name -> value; ints are taken for float options.
        what: the component, as the error names it (``"aggregation netvlad"``).

    Raises:
        VprkitError: an unknown option, or a value of another type, named in one line.
    """
    kinds = declared(options)
    given = {}
    for key, value in values.items():
        if key not in kinds:
            known = ", ".join(kinds) or "none"
            raise VprkitError(f"{what} has no option {shown(key, 40)!r} (its options: {known})")
        if not _fits(value, kinds[key]):
            raise VprkitError(
                f"{what} option {key!r} is {shown(repr(value), 40)}; expected {_type_text(kinds[key])}"
            )
        given[key] = (
            float(value)
            if float in kinds[key] and isinstance(value, int) and int not in kinds[key]
            else value
        )
    return options(**given)


def changed_options(options: Any) -> dict[str, Any]:
    """The options of the dataclass instance ``options`` that are not at their defaults."""
    return {
        f.name: getattr(options, f.name)
        for f in dataclasses.fields(options)
        if getattr(options, f.name) != f.default
    }


def parse_option(options: type, key: str, text: str, setting: str, what: str) -> Any:
    """The value of option ``key`` of ``options`` written as ``text`` (``--set`` syntax):
    whole numbers by ``parse_int``, numbers by ``parse_float``, ``true``/``false``, ``null``
    (``none``) for an optional one, text as it is. ``setting`` and the component ``what``
    (``"aggregation gem"``) start the error."""
    kinds = declared(options)
    if key not in kinds:
        known = ", ".join(kinds) or "none"
        raise VprkitError(f"{setting}: {what} has no option {shown(key, 40)!r} (its options: {known})")
    accepted = kinds[key]
    if type(None) in accepted and text.lower() in ("none", "null"):
        return None
    if bool in accepted:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise VprkitError(f"{setting}: {shown(text, 40)!r} is not true or false")
    if int in accepted:
        return parse_int(text, setting)
    if float in accepted:
        return parse_float(text, setting)
    if str in accepted:
        return text
    raise VprkitError(f"{setting}: option {key!r} cannot be set from text")  # pragma: no cover
