"""Strict numbers from text: file names, CSV cells, environment variables.

Python's ``int()`` and ``float()`` accept more than a number written plainly: underscores
(``500_000.5``), digits of other scripts (``"٣"``), ``inf`` and ``nan``, and surrounding
whitespace such as newlines. ``parse_int`` and ``parse_float`` take ASCII digits only, with an
optional sign, a decimal point and an exponent (floats); surrounding spaces and tabs are allowed
where ``spaces`` (a CSV cell after ``, ``), nothing else. Anything else is a ``NumberError``: one
line that starts with ``what`` (where the text came from) and shows the text escaped and cut.
"""

from __future__ import annotations

import math
import re

from vprkit.errors import VprkitError, shown

__all__ = ["NumberError", "parse_float", "parse_int"]

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL = re.compile(r"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_MAX_DIGITS = 100  # longer text is no number anyone means (and int() refuses > 4300 digits)


class NumberError(VprkitError, ValueError):
    """Text that is not a plain number (also a ``ValueError``, as ``float()`` raises)."""


def _text(text: object, what: str, spaces: bool) -> str:
    if not isinstance(text, str):
        raise NumberError(f"{what}: expected a number as text, got {shown(repr(text), 40)}")
    return text.strip(" \t") if spaces else text


def _bad(what: str, text: str, expected: str) -> NumberError:
    return NumberError(f"{what}: {shown(repr(text), 40)} is not {expected}")


def parse_int(
    text: str, what: str, *, minimum: int | None = None, maximum: int | None = None, spaces: bool = True
) -> int:
    """``text`` as a whole number (``12``, ``+3``, ``-3``), within [minimum, maximum] where
    given; ``what`` starts the error (e.g. the variable's name)."""
    value = _text(text, what, spaces)
    if len(value) > _MAX_DIGITS or not _INT.fullmatch(value):
        raise _bad(what, value, "a whole number (digits 0-9, no underscores)")
    number = int(value)
    if minimum is not None and number < minimum:
        raise NumberError(f"{what}: {number} is not allowed (at least {minimum})")
    if maximum is not None and number > maximum:
        raise NumberError(f"{what}: {number} is too large (at most {maximum})")
    return number


def parse_float(text: str, what: str, *, finite: bool = True, spaces: bool = True) -> float:
    """``text`` as a number (``45.5``, ``-1e-05``, ``.5``); ``inf`` and ``nan`` only where not
    ``finite`` (the default refuses them, and numbers too large for a float)."""
    value = _text(text, what, spaces)
    if not finite and _SPECIAL.fullmatch(value):
        return float(value)
    if len(value) > _MAX_DIGITS or not _FLOAT.fullmatch(value):
        raise _bad(what, value, "a number (digits 0-9, a point, an exponent; no underscores)")
    number = float(value)
    if finite and not math.isfinite(number):
        raise NumberError(f"{what}: {shown(value, 40)} is too large for a number")
    return number
