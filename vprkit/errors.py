"""The exception types that the CLI turns into a single clear error line (``VprkitError``, and
``ParameterError`` naming a parameter, which the CLI shows as its option), and ``shown``,
which makes text from files and names safe to put in such a line or on a terminal."""

from __future__ import annotations

import os
import re

# C0 controls but tab, DEL, C1 controls, and the invisible or reordering format characters
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class VprkitError(Exception):
    """A user-facing error: bad input, mismatched files, impossible options.

    The message must say what is wrong and where (a file, a row, an option), in one line.
    """


class ParameterError(VprkitError, ValueError):
    """A bad value of one parameter of a library function.

    The message names the parameter in Python terms (``batch_size must be at least 1, got 0``);
    the CLI shows the command's option instead (``--batch-size``).

    Args:
        parameter: the function's keyword name, e.g. ``"batch_size"``.
        message: the whole message, naming ``parameter`` as it is.
        others: other parameters the message names (the CLI shows them as options too).
    """

    def __init__(self, parameter: str, message: str, *others: str):
        super().__init__(message)
        self.parameter = parameter
        self.others = others

    def __reduce__(self):  # pickles (across processes) with its parameters
        return type(self), (self.parameter, str(self), *self.others)


def _escape_surrogate(match: re.Match) -> str:
    code = ord(match[0])
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode gives it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def shown(value: object, limit: int | None = None) -> str:
    """``value`` as printable one-line text: bytes that are not valid UTF-8 (surrogate escapes)
    and control or invisible characters are shown as ``\\xff``, ``\\x1b``, ``\\n``; with
    ``limit``, cut to that many characters with the length of the rest said."""
    text = _SURROGATE.sub(_escape_surrogate, str(value))
    text = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text


def photo_text(name: str) -> str:
    """``name`` as valid UTF-8 text: bytes of a file name that are not UTF-8 (surrogate escapes)
    become ``\\xNN``; everything else is kept."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
