"""How a dataclass is written in JSON, declared once beside each field, and read back checked.

A field says what its JSON value is with ``field(metadata=schema(KIND))`` (a ``Kind``: a string,
a non-empty string, an integer >= 1, a finite number, a percentage, an object of N -> percent,
nullable ...). ``read_dataclass`` then reads an object of that form: each value is checked and
converted by its kind, a field with a default may be absent (files of an older release, written
before the field existed) and keys that no field declares are ignored (files of a newer one).
What is wrong is a ``Mismatch`` that names the field (``'dim' is "256", not an integer >= 1``);
the caller adds where (file and row).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar

from vprkit.errors import VprkitError, shown
from vprkit.numbers import parse_float

__all__ = [
    "Mismatch",
    "Kind",
    "Text",
    "Integer",
    "Number",
    "Nullable",
    "Key",
    "Table",
    "Interval",
    "ListOf",
    "Record",
    "Parsed",
    "schema",
    "read_dataclass",
    "parse_json",
    "described",
    "type_name",
    "TEXT",
    "NAME",
    "NUMBER",
    "POSITIVE",
    "PERCENT",
    "N_KEY",
    "METRES_KEY",
    "integer",
    "nullable",
]

T = TypeVar("T")
SHOWN = 40  # characters of a bad value shown in an error


class Mismatch(ValueError):
    """A JSON value that is not of its kind: what it is and what was expected, without where."""


def type_name(value: object) -> str:
    """``an object``, ``a list``, ``a string``, ``a boolean``, ``null`` or ``a number``."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def described(value: object) -> str:
    """A JSON value as an error shows it: its JSON text, cut; a long object or list by its type."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON (a library caller's object)
        text = repr(value)
    if isinstance(value, (dict, list)) and len(text) > SHOWN:
        return f"{type_name(value)} of {len(value)} items"
    return shown(text, SHOWN)


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)``; one line naming ``where`` for text that is not JSON or is nested
    too deeply."""
    try:
        return json.loads(text)
    except RecursionError:
        raise VprkitError(f"{where}: JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, and integers too long to convert
        raise VprkitError(f"{where}: not valid JSON ({shown(err)})") from None


@dataclass(frozen=True)
class Kind:
    """One kind of JSON value; ``expected`` says it in words (``an integer >= 1``)."""

    expected: str

    def read(self, value: Any, name: str) -> Any:
        """``value`` converted, or a ``Mismatch`` naming it ``name`` (``'dim'``, ``Recall@5``)."""
        raise NotImplementedError

    def refuse(self, value: Any, name: str) -> Mismatch:
        return Mismatch(f"{name} is {described(value)}, not {self.expected}")


@dataclass(frozen=True)
class Text(Kind):
    """A string (``nonempty``: not ""; ``choices``: one of them)."""

    nonempty: bool = False
    choices: tuple[str, ...] = ()

    def read(self, value: Any, name: str) -> str:
        if (
            not isinstance(value, str)
            or (self.nonempty and not value)
            or (self.choices and value not in self.choices)
        ):
            raise self.refuse(value, name)
        return value


@dataclass(frozen=True)
class Integer(Kind):
    """A whole JSON number (not a boolean) from ``least`` to ``most``."""

    least: int = 0
    most: int | None = None

    def read(self, value: Any, name: str) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < self.least
            or (self.most is not None and value > self.most)
        ):
            raise self.refuse(value, name)
        return value


@dataclass(frozen=True)
class Number(Kind):
    """A finite JSON number (not a boolean, NaN or infinity) from ``low`` to ``high`` (above
    ``low`` where ``above_low``), as a float."""

    low: float = -math.inf
    high: float = math.inf
    above_low: bool = False

    def read(self, value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.refuse(value, name)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            raise self.refuse(value, name) from None
        if not (math.isfinite(number) and self.low <= number <= self.high) or (
            self.above_low and number == self.low
        ):
            raise self.refuse(value, name)
        return number


@dataclass(frozen=True)
class Nullable(Kind):
    """``null`` (read as None) or a value of ``kind``."""

    kind: Kind = Kind("a value")

    def read(self, value: Any, name: str) -> Any:
        return None if value is None else self.kind.read(value, name)


@dataclass(frozen=True)
class Key:
    """The text keys of a JSON object: ``parse`` turns one into its value or raises ValueError."""

    expected: str
    parse: Callable[[str], Any]


@dataclass(frozen=True)
class Table(Kind):
    """An object of ``key`` -> ``value`` (a dict of the parsed keys, in their order); ``item``
    names one value in errors, from the table's ``{name}`` and the ``{key}`` (``Recall@{key}``)."""

    key: Key = Key("a key", str)
    value: Kind = Kind("a value")
    item: str = "{name} at {key}"
    nonempty: bool = False

    def read(self, value: Any, name: str) -> dict:
        if not isinstance(value, dict) or (self.nonempty and not value):
            raise self.refuse(value, name)
        out: dict = {}
        for text, item in value.items():
            try:
                key = self.key.parse(text)
            except ValueError:
                key = None
            if key is None or key in out:
                raise Mismatch(
                    f"{name} has the key {shown(repr(text), SHOWN)}, "
                    + ("twice" if key is not None else f"not {self.key.expected}")
                )
            out[key] = self.value.read(item, self.item.format(name=name, key=shown(text, SHOWN)))
        return out


@dataclass(frozen=True)
class Interval(Kind):
    """``[low, high]``, two values of ``kind`` with low <= high, as a tuple."""

    kind: Kind = Kind("a value")

    def read(self, value: Any, name: str) -> tuple:
        if not isinstance(value, list) or len(value) != 2:
            raise self.refuse(value, name)
        try:
            low, high = (self.kind.read(v, name) for v in value)
        except Mismatch:
            raise self.refuse(value, name) from None
        if low > high:
            raise self.refuse(value, name)
        return (low, high)


@dataclass(frozen=True)
class ListOf(Kind):
    """A list of values of ``kind``."""

    kind: Kind = Kind("a value")

    def read(self, value: Any, name: str) -> list:
        if not isinstance(value, list):
            raise self.refuse(value, name)
        try:
            return [self.kind.read(v, name) for v in value]
        except Mismatch:
            raise self.refuse(value, name) from None


@dataclass(frozen=True)
class Record(Kind):
    """An object with every one of ``kinds``' keys (others are dropped), as a dict."""

    kinds: tuple[tuple[str, Kind], ...] = ()

    def read(self, value: Any, name: str) -> dict:
        if not isinstance(value, dict):
            raise self.refuse(value, name)
        out = {}
        for key, kind in self.kinds:
            if key not in value:
                raise Mismatch(f"{name} has no {key!r}")
            out[key] = kind.read(value[key], f"{key!r} of {name}")
        return out


@dataclass(frozen=True)
class Parsed(Kind):
    """An object read by ``reader(value, name)``, whose ``VprkitError`` becomes the mismatch (a
    type's own ``from_dict``)."""

    reader: Callable[[Any, str], Any] = lambda value, name: value

    def read(self, value: Any, name: str) -> Any:
        if not isinstance(value, dict):
            raise self.refuse(value, name)
        try:
            return self.reader(value, name)
        except VprkitError as err:
            raise Mismatch(str(err)) from None


def integer(least: int, most: int | None = None) -> Integer:
    """Whole numbers from ``least`` (to ``most``)."""
    return Integer(
        f"an integer >= {least}" if most is None else f"an integer from {least} to {most}", least, most
    )


def nullable(kind: Kind) -> Nullable:
    """``kind`` or ``null``."""
    return Nullable(kind.expected, kind)


def _n(text: str) -> int:
    if not (text.isascii() and text.isdigit() and text[0] != "0"):
        raise ValueError(text)
    return int(text)


def _metres(text: str) -> float:
    value = parse_float(text, "threshold")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(text)
    return value


TEXT = Text("a string")
NAME = Text("a non-empty string", nonempty=True)
NUMBER = Number("a number")
POSITIVE = Number("a positive number", low=0.0, above_low=True)
PERCENT = Number("a percentage (0..100)", 0.0, 100.0)
N_KEY = Key("an integer N >= 1", _n)
METRES_KEY = Key("a positive number of metres", _metres)


def schema(kind: Kind, key: str | None = None) -> dict:
    """A field's metadata: its JSON value is of ``kind``, under ``key`` (default: its name)."""
    return {"json": kind, "json_key": key}


def read_dataclass(cls: type[T], data: Any) -> T:
    """The dataclass ``cls`` from the JSON object ``data``, each field with a ``schema`` read by
    its kind (fields without one take their defaults).

    Raises:
        Mismatch: ``data`` is not an object, a field without a default is absent, or a value is
            not of its field's kind; the message names the field.
    """
    if not isinstance(data, dict):
        raise Mismatch(f"is {type_name(data)}, not an object")
    out = {}
    for f in fields(cls):  # type: ignore[arg-type]
        kind = f.metadata.get("json")
        if kind is None:
            continue
        key = f.metadata.get("json_key") or f.name
        if key in data:
            out[f.name] = kind.read(data[key], repr(key))
        elif f.default is MISSING and f.default_factory is MISSING:
            raise Mismatch(f"has no {key!r}")
    return cls(**out)
