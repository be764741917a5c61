"""The whole write sequence of a descriptor file (lock, partial, finalise): ``writing`` and its
``Output``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from vprkit.errors import VprkitError
from vprkit.files import (
    copy_exclusive,
    guarded_write,
    output_lock,
    partial_path,
    require_space,
)
from vprkit.store.format import (
    Header,
)
from vprkit.store.reader import DescriptorFile
from vprkit.store.writer import DescriptorWriter


class Output:
    """One descriptor file being written by ``writing``: the steps between taking its lock and
    renaming the finished file onto it.

    Start the writer with one of ``create`` (a new file), ``resume`` (the ``.partial`` an
    earlier run left) or ``extend`` (a copy of the complete file, to add scales to); leaving the
    ``with writing(...)`` block without error finalises it and renames it onto ``path``
    (``written`` is then that path). Without a writer nothing is written.

    Attributes:
        path: the final path.
        partial: where the file is written until it is complete (``<path>.partial``).
        resumable: an error keeps the ``.partial`` for a rerun (extract) instead of removing it.
        overwrite: an existing output is replaced (``complete_file`` returns None).
        writer: the started ``DescriptorWriter``, or None.
        written: the finished file's path once the block has ended, else None.
    """

    def __init__(self, path: Path, resumable: bool, overwrite: bool, stack: ExitStack):
        self.path = path
        self.partial = partial_path(path)
        self.resumable = resumable
        self.overwrite = overwrite
        self.writer: DescriptorWriter | None = None
        self.written: Path | None = None
        self._stack = stack

    def _start(self, writer: DescriptorWriter) -> DescriptorWriter:
        if self.writer is not None:
            writer.close()
            raise VprkitError(f"internal error: {self.path} is written twice")
        self.writer = writer
        self._stack.enter_context(guarded_write(self.partial, self.path, resumable=self.resumable))
        self._stack.callback(writer.close)
        return writer

    def create(
        self,
        header: Header | Mapping,
        names: dict[str, list[str]],
        utm: dict[str, np.ndarray],
        hashes: dict[str, np.ndarray] | None = None,
        more_bytes: int = 0,
    ) -> DescriptorWriter:
        """A new file (a ``.partial`` left there is removed first, unless ``resumable``: a
        resumable output resumes it or refuses). ``more_bytes``: what will be written after
        the names (the rows: ``writer.rows_bytes``), checked and reserved with them before
        anything is written (merge and combine know it; extract checks block by block)."""
        with guarded_write(self.partial, self.path, resumable=self.resumable):
            if not self.resumable:
                self.partial.unlink(missing_ok=True)
            writer = DescriptorWriter.create(self.partial, header, names, utm, hashes, more_bytes)
        return self._start(writer)

    def resume(self) -> DescriptorWriter | None:
        """The unfinished file an earlier run left at ``partial``, to go on with; None where
        there is none. A damaged one is reported (a warning) and removed, to start again; a
        link or anything but a regular file there is refused."""
        path = self.partial
        if not path.exists() and not path.is_symlink():
            return None
        try:
            writer = DescriptorWriter.open(path)
        except VprkitError:
            raise  # a link or not a regular file: refused, left as it is
        except Exception as err:
            self._restart(err)
            return None
        try:
            writer.header()
        except Exception as err:
            writer.close()
            self._restart(err)
            return None
        return self._start(writer)

    def _restart(self, err: Exception) -> None:
        warnings.warn(f"{self.partial} is damaged ({type(err).__name__}); starting it again", stacklevel=4)
        self.partial.unlink()
        return None

    def complete_file(self) -> DescriptorFile | None:
        """The complete file at ``path`` (to compare with, or to extend), None where there is
        none or it is to be overwritten. The caller closes it."""
        if self.overwrite or not self.path.exists():
            return None
        return DescriptorFile(self.path)

    def extend(self) -> DescriptorWriter:
        """A writer on a copy of the complete file at ``path``, to add scales to (the copy is
        removed if it fails; ``path`` is replaced only by the final rename)."""
        require_space(self.partial, self.path.stat().st_size)
        with guarded_write(self.partial, self.path):
            copy_exclusive(self.path, self.partial)
            writer = DescriptorWriter.open(self.partial)
            try:
                writer.mark_incomplete()
            except BaseException:
                writer.close()
                raise
        return self._start(writer)


@contextmanager
def writing(output: str | Path, *, resumable: bool = False, overwrite: bool = False) -> Iterator[Output]:
    """The whole write sequence of one descriptor file, for extract, combine and merge.

    Holds ``<output>.lock`` (a second writer is refused at once, and so is a link planted
    there); with ``overwrite`` an earlier ``.partial`` is removed. The block starts a writer
    with ``Output.create``, ``resume`` or ``extend``; from then on a failed write becomes one
    clear error (disk full, read-only...), the ``.partial`` being kept for a rerun when
    ``resumable``, else removed. Leaving the block without error finalises the file (marked
    complete, renamed onto ``output``; ``Output.written``); an error leaves ``output`` as it
    was. Nothing is ever written through a symbolic link.

    Example::

        with writing(path, overwrite=True) as out:
            writer = out.create(header, names, utm, hashes)
            writer.add_scale(1, dim, {}, None)
            ...
        print(out.written)
    """
    output = Path(output)
    with output_lock(output), ExitStack() as stack:
        out = Output(output, resumable, overwrite, stack)
        if overwrite:
            out.partial.unlink(missing_ok=True)  # a link there included: only the link goes
        yield out
        if out.writer is not None:
            out.written = out.writer.finalize(output)
