"""Writing files safely: output locks, atomic writes, free space, and no writes through links.

Every file vprkit writes goes through this module:

- ``output_lock(path)`` holds ``path.lock`` (``flock``) while a command writes ``path``, so a second
  writer is refused at once;
- ``atomic_output(path)`` writes a fresh temporary file in the same folder (``mkstemp``: a new
  name, ``O_EXCL``) and renames it onto ``path`` only when the block ends without error;
- ``create_exclusive(path)`` creates a file that must not exist yet (``O_CREAT | O_EXCL``), for the
  fixed ``.partial`` names that a resumed run finds again;
- ``refuse_link(path)`` stops before anything is written where ``path`` is a symbolic link.

None of them follows a symbolic link planted at the path they write (the lock is opened with
``O_NOFOLLOW``, the exclusive and temporary files cannot be links, and a rename replaces a link at
its target name instead of writing through it). ``require_space`` and ``reserve`` stop a writer with
one clear line before a disk, a quota or a file-size limit would make a write fail half way.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import VprkitError

SPACE_MARGIN = 64 << 20  # writers stop cleanly when a write would leave less free disk space
RESERVE_SLACK = 1 << 20  # reserved beyond each block, for the metadata written with it
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def partial_path(path: Path) -> Path:
    """Where the unfinished version of ``path`` is written (renamed onto ``path`` when done)."""
    return path.with_name(path.name + ".partial")


def refuse_link(path: Path) -> None:
    """One clear error where ``path`` is a symbolic link: vprkit never writes through one."""
    if path.is_symlink():
        raise VprkitError(f"{path} is a symbolic link; vprkit does not write through links "
                          "(remove it, or choose another output)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _creation_error(path: Path, err: OSError) -> VprkitError:
    if err.errno in (errno.EEXIST, errno.ELOOP) and path.is_symlink():
        return VprkitError(f"{path} is a symbolic link; vprkit does not write through links "
                           "(remove it, or choose another output)")
    if err.errno == errno.EEXIST:
        return VprkitError(f"{path} exists already (left by another process?); remove it")
    return VprkitError(f"cannot write {path}: {err.strerror}")


def create_exclusive(path: Path) -> int:
    """A new file at ``path`` (which must not exist, not even as a link); its descriptor."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                       0o666 & ~_umask())
    except OSError as err:
        raise _creation_error(path, err) from None


def copy_exclusive(source: Path, target: Path) -> None:
    """Copy ``source`` to a new file ``target`` (refused where anything, a link included, is
    there); a failed copy removes ``target``."""
    fd = create_exclusive(target)
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(path: str | Path, mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """Write ``path`` whole or not at all: through a new temporary file in the same folder,
    renamed onto ``path`` (replacing a file or a link there, never writing through it) when the
    block ends; on an error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as err:
        raise VprkitError(f"cannot write {path}: {err.strerror}") from None
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                                                      errno.EROFS, errno.EACCES, errno.EIO):
            raise VprkitError(f"cannot write {path}: {err.strerror}") from None
        raise


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically and without following a link at ``path``."""
    with atomic_output(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def open_append(path: Path) -> IO[str]:
    """``open(path, "a")`` that refuses a link at ``path`` (logs of a run folder)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
    except OSError as err:
        raise _creation_error(path, err) from None
    return os.fdopen(fd, "a", encoding="utf-8")


@contextmanager
def output_lock(output: Path, what: str = "") -> Iterator[None]:
    """Hold ``output.lock`` while ``output`` is written; a second writer is refused at once.

    ``what`` names the output in the refusal (default: the path)."""
    output = Path(output)
    lock_path = output.with_name(output.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC,
                     0o666 & ~_umask())
    except OSError as err:
        if err.errno == errno.ELOOP or lock_path.is_symlink():
            raise _creation_error(lock_path, err) from None
        raise VprkitError(f"cannot write next to {output}: {err.strerror}") from None
    handle = os.fdopen(fd, "w")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VprkitError(f"{lock_path} is not a regular file; remove it")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # another process may have unlinked the lock file between our open and flock
        if os.fstat(fd).st_ino != os.lstat(lock_path).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        handle.close()
        raise VprkitError(f"another vprkit process is writing {what or output}") from None
    except BaseException:
        handle.close()
        raise
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


def write_failure(err: BaseException) -> str | None:
    """The operating system's reason when ``err`` is a failed write (disk full, too large...)."""
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno)
    match = re.search(r"errno = (\d+)", str(err))  # HDF5 reports write errors in its message
    if isinstance(err, (OSError, RuntimeError)) and match:
        return os.strerror(int(match[1]))
    return None


@contextmanager
def guarded_write(partial: Path, output: Path, resumable: bool = False) -> Iterator[None]:
    """Turn a failed write into one clear error. The file at ``output`` (if any) is never
    touched (it is replaced only by the final rename). ``partial`` is kept for a rerun to resume
    when ``resumable``, else removed whatever stopped the writer."""
    try:
        yield
    except BaseException as err:
        if not resumable:
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass
        reason = write_failure(err) if isinstance(err, (OSError, RuntimeError)) else None
        if reason is None:
            raise
        kept = f"; {output} is untouched" if output.exists() else ""
        if resumable:
            raise VprkitError(f"cannot write {partial}: {reason}; the rows written before are "
                              f"kept (rerun the same command to resume){kept}") from None
        raise VprkitError(f"cannot write {partial}: {reason} (disk full or not writable?); "
                          f"removed the unfinished file{kept}") from None


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path``."""
    return shutil.disk_usage(path.parent).free


def require_space(path: Path, nbytes: int) -> None:
    """Stop with a clear error, before HDF5 meets a full disk, when ``nbytes`` do not fit.

    (A write that fails inside HDF5 can leave the file inconsistent or crash the library;
    stopping before it keeps every committed row, so an extraction resumes once there is space.)
    """
    free = free_bytes(path)
    if free < nbytes + SPACE_MARGIN:
        raise VprkitError(
            f"disk full: {human_bytes(free)} free where {path} is written (next block "
            f"{human_bytes(nbytes)}, margin {human_bytes(SPACE_MARGIN)}); stopped before "
            "writing it. Free some space and run the same command again (an extraction "
            "resumes where it stopped)")


def reserve(fd: int, path: Path, size: int, nbytes: int) -> None:
    """Allocate disk blocks for ``nbytes`` past ``size`` bytes of the file open as ``fd``, so that
    a quota, a file-size limit (EFBIG) or a full disk stops the writer here, with one clear line,
    and not inside HDF5 half way through a block. File systems that cannot reserve space are
    left to the free-space check."""
    try:
        os.posix_fallocate(fd, 0, size + nbytes + RESERVE_SLACK)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENODEV):
            return
        raise VprkitError(
            f"cannot write {path}: {err.strerror} (next block {human_bytes(nbytes)}); stopped "
            "before writing it. Make room (or raise the limit) and run the same command again "
            "(an extraction resumes where it stopped)") from None


def human_bytes(n: float) -> str:
    """``n`` bytes as ``1.5 GiB``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = min(len(units) - 1, int(math.log(max(n, 1), 1024)))
    return f"{n / 1024 ** i:.1f} {units[i]}"
