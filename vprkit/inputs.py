"""Opening the input files a user names (photos, notes, CSV and JSON files) safely.

Only a regular file, or a symbolic link to one, is read. A named pipe (FIFO: reading it waits
for a writer, forever), a device (``/dev/zero`` never ends), a socket, a folder or a broken link
is refused with one line naming the path:

- ``check_regular`` looks first (``os.stat``, which follows links), so that nothing else is
  ever opened (opening some devices does something);
- ``open_input`` opens with ``O_NONBLOCK`` (opening a FIFO does not wait for a writer) and checks
  the opened file again with ``fstat`` (a file swapped for a FIFO after the check is refused
  too), then reads as usual (blocking);
- ``read_bytes`` and ``read_text`` also refuse a file larger than a limit before reading it, and
  never read more than the limit (a file that grows while it is read is refused too).

The limits, in one place: ``NOTES_LIMIT`` (report notes), ``DATA_LIMIT`` (evaluation JSON, run
metrics, coordinates CSV) and ``IMAGE_FILE_LIMIT`` (an image file that extract or locate reads).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from vprkit.errors import VprkitError, shown

NOTES_LIMIT = 1 << 20  # 1 MiB of hand-written markdown
DATA_LIMIT = 1 << 30  # evaluation JSON (with per-query rows), run metrics, coordinates CSV
IMAGE_FILE_LIMIT = 256 << 20  # one photo's file: far beyond any camera's

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def size_text(size: int) -> str:
    """``1 MiB`` for a whole number of MiB, else ``1234 bytes``."""
    return f"{size >> 20} MiB" if size >= 1 << 20 and size % (1 << 20) == 0 else f"{size} bytes"


def _not_regular(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"it is {kind}, not a regular file"


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a regular file (``it is a named pipe (FIFO), not a regular
    file``, ``No such file or directory``, ...), or None where it can."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ELOOP) and os.path.islink(path):
            return "it is a broken symbolic link (its target does not exist)"
        return err.strerror or str(err)
    return _not_regular(mode)


def check_regular(path: str | Path, what: str) -> Path:
    """``path``, where it is a regular file or a link to one; else one line, ``cannot read
    {what} {path}: {why}``."""
    problem = file_problem(path)
    if problem is not None:
        raise VprkitError(f"cannot read {what} {shown(path)}: {problem}")
    return Path(path)


def open_input(path: str | Path, what: str) -> BinaryIO:
    """``path`` opened for reading in binary, where it is a regular file or a link to one (see
    the module's docstring); one line naming it otherwise."""
    check_regular(path, what)
    try:
        fd = os.open(path, _FLAGS)
    except OSError as err:
        raise VprkitError(f"cannot read {what} {shown(path)}: {err.strerror or err}") from None
    try:
        problem = _not_regular(os.fstat(fd).st_mode)
        if problem is not None:  # swapped since check_regular looked
            raise VprkitError(f"cannot read {what} {shown(path)}: {problem}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _too_large(path: str | Path, what: str, size: str, limit: int) -> VprkitError:
    return VprkitError(
        f"cannot read {what} {shown(path)}: it is {size}, over the limit of {size_text(limit)}"
    )


def read_bytes(path: str | Path, what: str, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (``open_input``), refused with one line naming it,
    its size and ``limit`` where it holds more than ``limit`` bytes."""
    with open_input(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise _too_large(path, what, f"{size} bytes", limit)
        try:
            data = handle.read(limit + 1)
        except OSError as err:
            raise VprkitError(f"cannot read {what} {shown(path)}: {err.strerror or err}") from None
    if len(data) > limit:  # it grew while it was read
        raise _too_large(path, what, f"more than {limit} bytes", limit)
    return data


def read_text(path: str | Path, what: str, limit: int, encoding: str = "utf-8", hint: str = "") -> str:
    """``read_bytes`` decoded as UTF-8 (``encoding`` ``utf-8-sig`` also takes a BOM); one line
    naming the file, the first bad byte and its line where it is not (``hint`` added)."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise VprkitError(
            f"{what} {shown(path)} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}){hint}"
        ) from None
