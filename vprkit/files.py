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

Errors name the output the user asked for, and the unfinished file in parentheses
(``cannot write db.h5 (writing db.h5.partial): No space left on device``).

Temporary files of killed writers: ``atomic_output`` holds an ``flock`` on its temporary file from
its creation to its rename, and before writing ``path`` it removes the hidden temporary files of
``path`` (exactly mkstemp's ``.NAME.XXXXXXXX.partial``) that nobody holds: those of writers that
died (kill -9) before the rename. A live writer's file is locked, so it is never removed: locking
the temporary file itself, not the output, lets writers that take no output lock (most outputs of
``atomic_output``) clean up safely, and a writer that finds its new file already removed by such a
cleaner (between ``mkstemp`` and its ``flock``) makes another.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import re
import resource
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vprkit.errors import VprkitError

SPACE_MARGIN = 64 << 20  # writers stop cleanly when a write would leave less free disk space
RESERVE_SLACK = 1 << 20  # reserved beyond each block, for the metadata written with it
LIMIT_SLACK = 64 << 10  # kept below a file-size limit beyond each block, for its metadata
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_TEMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.partial")  # mkstemp(prefix=".NAME.", suffix=".partial")
_SCANNED: dict[str, dict[str, list[str]]] = {}  # folder -> output name -> hidden temporary files
_SCANNED_FOLDERS = 256


def partial_path(path: Path) -> Path:
    """Where the unfinished version of ``path`` is written (renamed onto ``path`` when done)."""
    return path.with_name(path.name + ".partial")


def output_of(path: Path) -> Path | None:
    """The output that ``path`` is the unfinished version of (``OUT.partial``, or an
    ``atomic_output`` temporary file ``.OUT.XXXXXXXX.partial``); None for any other path."""
    path = Path(path)
    found = _TEMP_NAME.fullmatch(path.name)
    if found:
        return path.with_name(found[1])
    if path.name.endswith(".partial") and len(path.name) > len(".partial"):
        return path.with_name(path.name[: -len(".partial")])
    return None


def written_as(path: Path) -> str:
    """``OUT (writing OUT.partial)`` for an unfinished file, for messages that must name the
    output the user asked for; ``path`` itself for any other file."""
    output = output_of(path)
    return str(path) if output is None else f"{output} (writing {Path(path).name})"


def refuse_link(path: Path) -> None:
    """One clear error where ``path`` is a symbolic link: vprkit never writes through one."""
    if path.is_symlink():
        raise VprkitError(
            f"{path} is a symbolic link; vprkit does not write through links "
            "(remove it, or choose another output)"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _creation_error(path: Path, err: OSError) -> VprkitError:
    if err.errno in (errno.EEXIST, errno.ELOOP) and path.is_symlink():
        return VprkitError(
            f"{path} is a symbolic link; vprkit does not write through links "
            "(remove it, or choose another output)"
        )
    if err.errno == errno.EEXIST:
        return VprkitError(f"{path} exists already (left by another process?); remove it")
    return VprkitError(f"cannot write {written_as(path)}: {err.strerror}")


def create_exclusive(path: Path) -> int:
    """A new file at ``path`` (which must not exist, not even as a link); its descriptor."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666 & ~_umask())
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


def _remove_if_abandoned(temp: Path) -> None:
    """Remove the temporary file ``temp`` where no writer holds its lock (its writer died)."""
    try:
        fd = os.open(temp, os.O_RDWR | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return  # gone, a link, or not ours to open: left alone
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live writer: OSError
        if os.lstat(temp).st_ino == opened.st_ino:
            os.unlink(temp)  # while holding its lock: its writer (if any) sees st_nlink 0
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_abandoned_temps(path: Path) -> None:
    """Remove the hidden temporary files that writers of ``path`` killed before their rename
    left (``.NAME.XXXXXXXX.partial`` exactly; only where no live writer holds them).

    A folder is listed once per process (a folder of many outputs, such as a gallery of
    pictures, is not listed again for each of them)."""
    folder = os.path.abspath(path.parent)
    found = _SCANNED.get(folder)
    if found is None:
        found = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    match = _TEMP_NAME.fullmatch(entry.name)
                    if match:
                        found.setdefault(match[1], []).append(entry.name)
        except OSError:
            pass
        if len(_SCANNED) >= _SCANNED_FOLDERS:
            _SCANNED.clear()
        _SCANNED[folder] = found
    for name in found.pop(path.name, []):
        _remove_if_abandoned(path.with_name(name))


def _locked_temp(path: Path) -> tuple[int, Path]:
    """A new hidden temporary file next to ``path``, locked for as long as it is open."""
    for _ in range(100):
        try:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        except OSError as err:
            raise VprkitError(f"cannot write {path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a cleaner holds it an instant at most
        except OSError:
            return fd, Path(name)  # no locks on this file system: no cleaner can lock it either
        if os.fstat(fd).st_nlink:
            return fd, Path(name)
        os.close(fd)  # a cleaner took it for a dead writer's file: make another
    raise VprkitError(f"cannot write {path}: its temporary files keep disappearing")


@contextmanager
def atomic_output(path: str | Path, mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """Write ``path`` whole or not at all: through a new temporary file in the same folder,
    renamed onto ``path`` (replacing a file or a link there, never writing through it) when the
    block ends; on an error the temporary file is removed and ``path`` is untouched. Temporary
    files of ``path`` that killed writers left are removed first (see the module's notes)."""
    path = Path(path)
    remove_abandoned_temps(path)
    fd, tmp = _locked_temp(path)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)  # still locked: no cleaner can take it before the rename
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (
            errno.ENOSPC,
            errno.EDQUOT,
            errno.EFBIG,
            errno.EROFS,
            errno.EACCES,
            errno.EIO,
        ):
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
        fd = os.open(
            lock_path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, 0o666 & ~_umask()
        )
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
    code = _failure_errno(err)
    return None if code is None else os.strerror(code)


def _failure_errno(err: BaseException) -> int | None:
    if isinstance(err, OSError) and err.errno:
        return err.errno
    match = re.search(r"errno = (\d+)", str(err))  # HDF5 reports write errors in its message
    if isinstance(err, (OSError, RuntimeError)) and match:
        return int(match[1])
    return None


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def guarded_write(partial: Path, output: Path, resumable: bool = False) -> Iterator[None]:
    """Turn a failed write into one clear error naming ``output`` (and ``partial`` in
    parentheses). The file at ``output`` (if any) is never touched (it is replaced only by the
    final rename). ``partial`` is kept for a rerun to resume when ``resumable``, else removed
    whatever stopped the writer."""
    try:
        yield
    except BaseException as err:
        if not resumable:
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass
        code = _failure_errno(err) if isinstance(err, (OSError, RuntimeError)) else None
        if code is None:
            raise
        where = f"cannot write {output} (writing {partial.name}): {os.strerror(code)}"
        kept = f"; {output} is untouched" if output.exists() else ""
        if resumable:
            raise VprkitError(
                f"{where}; the rows written before are kept (rerun the same command to resume){kept}"
            ) from None
        hint = " (disk full or not writable?)" if code in _FULL else ""
        raise VprkitError(f"{where}{hint}; removed the unfinished file{kept}") from None


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path``."""
    return shutil.disk_usage(path.parent).free


def file_size_limit() -> int | None:
    """This process's limit on the size of a file it writes (``ulimit -f``), None without one."""
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def require_space(
    path: Path, nbytes: int, *, size: int = 0, reserved: int = 0, what: str = "next block"
) -> None:
    """Stop with a clear error, before HDF5 meets a full disk, when ``nbytes`` do not fit.

    ``size``: the bytes the file at ``path`` holds already (checked with ``nbytes`` against the
    file-size limit); ``reserved``: bytes already reserved for it but not used yet (they count
    as free). ``what`` names ``nbytes`` in the message.

    (A write that fails inside HDF5 can leave the file inconsistent or crash the library;
    stopping before it keeps every committed row, so an extraction resumes once there is space.)
    """
    limit = file_size_limit()
    if limit is not None and size + nbytes + LIMIT_SLACK > limit:
        raise VprkitError(
            f"cannot write {written_as(path)}: {os.strerror(errno.EFBIG)} (the file-size limit, "
            f"ulimit -f, is {human_bytes(limit)}; {what} {human_bytes(nbytes)}); stopped before "
            "writing it. Raise the limit and run the same command again"
        )
    free = free_bytes(path)
    if free + max(0, reserved) < nbytes + SPACE_MARGIN:
        output = output_of(path)
        written = f"{path} is written (" if output is None else f"{output} is written (as {path.name}; "
        raise VprkitError(
            f"disk full: {human_bytes(free)} free where {written}{what} {human_bytes(nbytes)}, "
            f"margin {human_bytes(SPACE_MARGIN)}); stopped before writing it. Free some space "
            "and run the same command again (an extraction resumes where it stopped)"
        )


def reserve(fd: int, path: Path, size: int, nbytes: int) -> bool:
    """Allocate disk blocks for ``nbytes`` past ``size`` bytes of the file open as ``fd``, so that
    a quota, a file-size limit (EFBIG) or a full disk stops the writer here, with one clear line,
    and not inside HDF5 half way through a block. False where the file system cannot reserve
    space (left to the free-space check)."""
    try:
        os.posix_fallocate(fd, 0, size + nbytes + RESERVE_SLACK)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENODEV):
            return False
        raise VprkitError(
            f"cannot write {written_as(path)}: {err.strerror} (reserving {human_bytes(nbytes)} "
            "more); stopped before writing it. Make room (or raise the limit) and run the same command "
            "again (an extraction resumes where it stopped)"
        ) from None
    return True


def human_bytes(n: float) -> str:
    """``n`` bytes as ``1.5 GiB``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = min(len(units) - 1, int(math.log(max(n, 1), 1024)))
    return f"{n / 1024**i:.1f} {units[i]}"
