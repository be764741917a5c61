"""``DescriptorWriter``: the open ``.partial`` file that extract, combine and merge write."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from vprkit import __version__
from vprkit.choices import ROLES
from vprkit.descriptors.views import HARD_RESIZE, VIEWS
from vprkit.errors import VprkitError
from vprkit.files import (
    RESERVE_SLACK,
    refuse_link,
    require_space,
    reserve,
)
from vprkit.store.format import (
    FORMAT,
    FORMAT_VERSION,
    HASH_BYTES,
    PCA_ARRAYS,
    PCA_ATTRS,
    STRINGS,
    Header,
    _json_attr,
    chunk_rows,
    descriptor_key,
    image_hashes,
    image_size_attr,
    rows_done_attr,
    stats_key,
)

METADATA_BYTES = 64 << 10  # counted once per file for its groups and indexes


def header_bytes(names: Mapping[str, Sequence[str]]) -> int:
    """At least the bytes that ``DescriptorWriter.create`` writes for these image names: the
    names (variable-length strings: the text and about 100 bytes an entry, measured), their UTM
    positions, their SHA-256 and the file's metadata."""
    total = METADATA_BYTES
    for role in ROLES:
        text = sum(len(name.encode("utf-8", "surrogatepass")) for name in names[role])
        total += text + text // 4 + len(names[role]) * (256 + 16 + HASH_BYTES)
    return total


def rows_bytes(rows: int, dim: int, dtype: str | np.dtype,
               stats: Mapping[str, tuple[tuple[int, ...], str]]) -> int:
    """At least the bytes of ``rows`` descriptors of ``dim`` values of ``dtype`` (in whole
    chunks, as ``add_scale`` makes them) and of their statistics."""
    itemsize = np.dtype(dtype).itemsize
    chunk = chunk_rows(dim, itemsize, max(rows, 1))
    chunks = -(-rows // chunk)
    total = chunks * (chunk * dim * itemsize + 64)
    for shape, stat_dtype in stats.values():
        total += rows * int(np.prod(shape, dtype=np.int64)) * np.dtype(stat_dtype).itemsize
    return total


class DescriptorWriter:
    """Creates or resumes a ``.partial`` descriptor file and finalises it by renaming.

    Commands write through ``writing`` (lock, guarded writes, finalisation); the writer holds
    the open file: ``add_scale``, ``write`` then ``commit_rows`` block by block, ``finalize``."""

    def __init__(self, h5: h5py.File, path: Path, reserved: int = 0):
        self.h5 = h5
        self.path = path
        self.reserved = reserved  # bytes of the file allocated ahead (``create``'s plan)
        self._open: dict[str, h5py.Dataset] = {}

    @classmethod
    def create(
        cls,
        path: Path,
        header: Header | Mapping,
        names: dict[str, list[str]],
        utm: dict[str, np.ndarray],
        hashes: dict[str, np.ndarray] | None = None,
        more_bytes: int = 0,
    ) -> DescriptorWriter:
        """A new file at ``path`` (a .partial path, which must not exist: not even as a link).

        Before anything is written, the space for the names, positions and hashes
        (``header_bytes``) and ``more_bytes`` more (the rows a merge or combine will write) is
        checked (free space, file-size limit) and reserved: HDF5 meeting a full disk while it
        writes the names crashes the process. A failure removes the new file."""
        header = Header.of(header)
        refuse_link(path)
        attrs = header.to_attrs()
        text = sum(len(str(v).encode("utf-8", "surrogatepass")) + 64 for v in attrs.values())
        need = header_bytes(names) + text + text // 4 + max(0, more_bytes)
        require_space(path, need, what="the file needs")
        try:
            h5 = h5py.File(path, "x")  # O_CREAT | O_EXCL: never through a planted link
        except FileExistsError:
            raise VprkitError(f"{path} exists already (left by another process?); remove it") \
                from None
        writer = cls(h5, path)
        try:
            if reserve(h5.id.get_vfd_handle(), path, 0, need):
                writer.reserved = need + RESERVE_SLACK
            writer._write_header(attrs, names, utm, hashes)
        except BaseException:
            writer._abandon()
            path.unlink(missing_ok=True)
            raise
        return writer

    def _write_header(self, header: Mapping, names: dict[str, list[str]],
                      utm: dict[str, np.ndarray], hashes: dict[str, np.ndarray] | None) -> None:
        h5 = self.h5
        with self._failing_write():
            attrs = h5.attrs
            attrs["format"] = FORMAT
            attrs["format_version"] = FORMAT_VERSION
            attrs["vprkit_version"] = __version__
            attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            attrs["complete"] = False
            for key, value in header.items():
                attrs[key] = value
            for role in ROLES:
                h5.create_dataset(f"{role}/names", data=np.array(names[role], dtype=object),
                                  dtype=STRINGS)
                h5.create_dataset(f"{role}/utm", data=np.asarray(utm[role], dtype=np.float64))
                rows = len(names[role])
                if hashes is not None:
                    h5.create_dataset(f"{role}/sha256", data=np.asarray(hashes[role],
                                                                        dtype=np.uint8)
                                      .reshape(rows, HASH_BYTES))
                else:
                    h5.create_dataset(f"{role}/sha256", shape=(rows, HASH_BYTES), dtype=np.uint8)
            h5.create_group("scales")
            h5.flush()

    @classmethod
    def open(cls, path: Path) -> DescriptorWriter:
        """An unfinished file to resume or extend (a regular file: a link there is refused)."""
        refuse_link(path)
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise VprkitError(f"{path} is not a regular file; remove it")
        try:
            return cls(h5py.File(path, "r+"), path)
        except OSError as err:
            # A write that failed inside HDF5 (see _failing_write) can leave the superblock
            # pointing past the end of the file: the blocks it never wrote are beyond every
            # committed row, so the file is extended to the size it records and opened again.
            found = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(err))
            if not found or not 0 < int(found[2]) - int(found[1]) <= 1 << 30:
                raise
            os.truncate(path, int(found[2]))
            return cls(h5py.File(path, "r+"), path)

    def header(self) -> Header:
        """The file's header (raises KeyError, ValueError... where it is damaged)."""
        return Header.from_attrs(self.h5.attrs)

    def names(self, role: str) -> list[str]:
        return [n.decode() if isinstance(n, bytes) else n for n in self.h5[f"{role}/names"][:]]

    def utm(self, role: str) -> np.ndarray:
        return self.h5[f"{role}/utm"][:]

    def hashes(self, role: str) -> np.ndarray | None:
        return image_hashes(self.h5, role)

    def mark_incomplete(self) -> None:
        """A copy of a complete file that is to be extended: ``complete`` false until done."""
        self.h5.attrs["complete"] = False
        self.h5.flush()

    def write_hashes(self, role: str, start: int, digests: Sequence[bytes]) -> None:
        """SHA-256 of the image files of rows [start, start + len(digests)) (files made before
        hashes were kept have nowhere to put them: nothing is written)."""
        if f"{role}/sha256" not in self.h5 or not len(digests):
            return
        rows = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, HASH_BYTES)
        with self._failing_write():
            self._dataset(f"{role}/sha256")[start:start + len(rows)] = rows

    @property
    def scales(self) -> list[int]:
        return sorted(int(s) for s in self.h5["scales"].keys())

    def add_scale(self, scale: int, dim: int, stats: dict[str, tuple[tuple[int, ...], str]],
                  image_size: tuple[int, int] | None) -> None:
        """Datasets for one scale; ``stats`` maps a name to (per-row shape, dtype)."""
        group = self.h5.create_group(f"scales/{scale}")
        group.attrs["scale"] = scale
        group.attrs["image_size"] = _json_attr(list(image_size) if image_size else None)
        dtype = np.dtype(self.h5.attrs["dtype"])
        for role in ROLES:
            n = int(self.h5[f"{role}/utm"].shape[0])
            rows = chunk_rows(dim, dtype.itemsize, max(n, 1))
            group.create_dataset(role, shape=(n, dim), dtype=dtype,
                                 chunks=(rows, dim) if n else None)  # (no chunks of 0 rows)
            for name, (shape, stat_dtype) in stats.items():
                group.create_dataset(f"stats/{role}/{name}", shape=(n, *shape), dtype=stat_dtype)
            group.attrs[f"rows_done_{role}"] = 0
        self.h5.flush()

    def views(self, scale: int) -> list[str]:
        """The query views stored at ``scale``, ``hard_resize`` first."""
        group = self.h5[f"scales/{scale}"].get("views")
        return [HARD_RESIZE, *sorted(group.keys() if group is not None else ())]

    def add_view(self, scale: int, view: str, dim: int,
                 stats: dict[str, tuple[tuple[int, ...], str]],
                 image_size: tuple[int, int] | None) -> None:
        """Datasets for the query view ``view`` at an added scale (``VIEWS[view]`` rows per
        query)."""
        group = self.h5[f"scales/{scale}"]
        n = int(self.h5["queries/utm"].shape[0]) * VIEWS[view]
        dtype = np.dtype(self.h5.attrs["dtype"])
        rows = chunk_rows(dim, dtype.itemsize, max(n, 1))
        self.h5.create_dataset(descriptor_key(scale, "queries", view), shape=(n, dim),
                               dtype=dtype, chunks=(rows, dim) if n else None)
        for name, (shape, stat_dtype) in stats.items():
            self.h5.create_dataset(stats_key(scale, "queries", view, name), shape=(n, *shape),
                                   dtype=stat_dtype)
        group.attrs[image_size_attr(view)] = _json_attr(list(image_size) if image_size else None)
        group.attrs[rows_done_attr("queries", view)] = 0
        self.h5.flush()

    def drop_scale(self, scale: int) -> None:
        self._open = {k: v for k, v in self._open.items() if not k.startswith(f"scales/{scale}/")}
        del self.h5[f"scales/{scale}"]
        self.h5.flush()

    def drop_view(self, scale: int, view: str) -> None:
        """Remove an (unfinished) query view from ``scale``."""
        for key in (descriptor_key(scale, "queries", view), f"scales/{scale}/stats/views/{view}"):
            self._open = {k: v for k, v in self._open.items() if not k.startswith(key)}
            if key in self.h5:
                del self.h5[key]
        group = self.h5[f"scales/{scale}"]
        for attr in (image_size_attr(view), rows_done_attr("queries", view)):
            if attr in group.attrs:
                del group.attrs[attr]
        self.h5.flush()

    def rows_done(self, role: str, scales: Sequence[int], view: str = HARD_RESIZE) -> int:
        """Images of ``role`` (at ``view``) committed at every one of ``scales``."""
        return min(int(self.h5[f"scales/{s}"].attrs[rows_done_attr(role, view)]) for s in scales)

    def write(self, role: str, scale: int, start: int, desc: np.ndarray,
              stats: dict[str, np.ndarray], view: str = HARD_RESIZE) -> None:
        """Rows of images ``start, start + 1, ...``: ``VIEWS[view]`` rows per image (crops of
        one image are consecutive)."""
        self.ensure_space(desc.nbytes + sum(v.nbytes for v in stats.values()))
        with self._failing_write():
            first = start * VIEWS[view]
            stop = first + len(desc)
            self._dataset(descriptor_key(scale, role, view))[first:stop] = desc
            for name, values in stats.items():
                self._dataset(stats_key(scale, role, view, name))[first:stop] = values

    def _dataset(self, key: str) -> h5py.Dataset:
        """Datasets stay open while the file is written: closing one flushes its chunks, and a
        write failing there could not be reported (it happens in a destructor)."""
        if key not in self._open:
            self._open[key] = self.h5[key]
        return self._open[key]

    @contextmanager
    def _failing_write(self) -> Iterator[None]:
        """A write that fails inside HDF5 anyway (an I/O error that no check foresees) poisons
        the open file: closing it would fail again, print errors at exit or crash the library.
        Instead HDF5's file descriptor is pointed at /dev/null and the file closed, so the file
        on disk keeps what the last flush committed, and the error goes on to the caller."""
        try:
            yield
        except (OSError, RuntimeError):
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Close the file without writing to it again (HDF5's descriptor is pointed at
        /dev/null first): what the last flush committed stays as it is."""
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.h5.id.get_vfd_handle())
            os.close(null)
            self._open.clear()
            self.h5.close()
        except Exception:  # noqa: S110  (the original error is what the caller reports)
            pass

    def ensure_space(self, nbytes: int) -> None:
        """Stop with one clear line, before HDF5 writes, where ``nbytes`` more would not fit:
        the free-space margin (blocks reserved ahead but not used yet count as free), then a
        reservation of the blocks (quota, file-size limit)."""
        size = self.h5.id.get_filesize()
        require_space(self.path, nbytes, size=size, reserved=self.reserved - size)
        if size + nbytes + RESERVE_SLACK > self.reserved \
                and reserve(self.h5.id.get_vfd_handle(), self.path, size, nbytes):
            self.reserved = size + nbytes + RESERVE_SLACK

    def commit_rows(self, role: str, scales: Sequence[int], rows: int,
                    view: str = HARD_RESIZE) -> None:
        """Record that images [0, rows) of ``role`` (at ``view``) are written at ``scales``:
        data first, then the counter."""
        with self._failing_write():
            self.h5.flush()
            for s in scales:
                self.h5[f"scales/{s}"].attrs[rows_done_attr(role, view)] = rows
            self.h5.flush()

    def write_aggregation_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Store the aggregation weights the rows are made with (``/model/aggregation``)."""
        self._store_arrays("model/aggregation", arrays)

    def aggregation_arrays(self) -> dict[str, np.ndarray]:
        """The stored aggregation weights, by name (empty where none are stored)."""
        group = self.h5.get("model/aggregation")
        return {} if group is None else {name: ds[()] for name, ds in group.items()}

    def _store_arrays(self, group: str, arrays: Mapping[str, np.ndarray]) -> None:
        for name, value in arrays.items():
            key = f"{group}/{name}"
            if key in self.h5:
                del self.h5[key]
            self.h5.create_dataset(key, data=value)

    def write_combine_record(self, spec: dict, pcas: Sequence[Mapping | None]) -> None:
        """An ensemble's record (see ``DescriptorFile.combine_record``): the spec, and for each
        input reduced by PCA its arrays and attributes."""
        group = self.h5.create_group("combine")
        group.attrs["spec"] = _json_attr(spec)
        for i, pca in enumerate(pcas):
            if pca is None:
                continue
            g = group.create_group(f"pca/{i}")
            for key in PCA_ARRAYS:
                g[key] = np.asarray(pca[key])
            for key, kind in PCA_ATTRS.items():
                g.attrs[key] = kind(pca[key])

    def finalize(self, final_path: Path) -> Path:
        """Mark complete, close, and atomically rename onto ``final_path``."""
        for role in ROLES:
            n = int(self.h5[f"{role}/utm"].shape[0])
            if self.scales and self.rows_done(role, self.scales) != n:
                raise VprkitError(f"internal error: {self.path} has unwritten {role} rows")
        n = int(self.h5["queries/utm"].shape[0])
        for s in self.scales:
            for view in self.views(s)[1:]:
                if self.rows_done("queries", [s], view) != n:
                    raise VprkitError(f"internal error: {self.path} has unwritten {view} rows")
        with self._failing_write():
            self.h5.attrs["complete"] = True
            self.h5.flush()
        size = self.h5.id.get_filesize()
        self._open.clear()
        self.h5.close()
        if os.stat(self.path).st_size > size:  # blocks reserved by ensure_space, never used
            os.truncate(self.path, size)
        self.path.replace(final_path)
        return final_path

    def close(self) -> None:
        self._open.clear()
        try:
            self.h5.close()
        except Exception:  # already closed
            pass
