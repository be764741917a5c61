"""The HDF5 descriptor file: one file per model, self-describing, written atomically.

This module is the only code that reads or writes the HDF5 layout; every other part of vprkit
goes through ``DescriptorFile`` (reading), ``writing`` / ``DescriptorWriter`` (writing) and the
``Header`` they share. Importing it loads numpy and h5py, not torch nor scikit-learn.

File format (``format = "vprkit.descriptors"``, ``format_version = 1``)
-----------------------------------------------------------------------

Root attributes:

=================  ==========================================================================
``format``         ``"vprkit.descriptors"``
``format_version`` ``1`` (a reader refuses any other version)
``vprkit_version`` the vprkit that wrote the file
``created``        creation time, ISO 8601 UTC (``2024-05-01T12:00:00+00:00``); a copy extended
                   with new scales keeps it. Indexes built from the file record it.
``complete``       false while the file is written (``<name>.partial``), true once renamed
``model``          JSON: backbone, aggregation, clusters, weights or checkpoint, ``output_dim``,
                   ``fingerprint`` (hash of the weights), ``backbone_fingerprint``,
                   ``netvlad_init`` (how k-means made NetVLAD's clusters, or null); for an
                   ensemble ``type = "ensemble"``, its ``inputs``, ``weights``, ``output_dim``
``aggregation``    JSON: the pyramid rule and its parameters (``{"type": "gem", "p": 3.0, ...}``,
                   ``{"type": "netvlad", ...}``, ``{"type": "ensemble"}``)
``dataset``        JSON: ``root``, ``split``, ``skipped_unparsable``; a shard adds ``shard =
                   {index, count, names_sha256, database_rows, database_total, queries_rows,
                   queries_total}``, a merged file ``merged_shards``
``preprocessing``  JSON: ``resize`` ([H, W] or null for each image's own size), ``normalize``
                   (mean, std), ``interpolation``, ``precision`` of inference
``dtype``          storage type of the descriptors: ``"float32"`` or ``"float16"``
=================  ==========================================================================

The five header attributes ``model``, ``aggregation``, ``dataset``, ``preprocessing`` and
``dtype`` are ``Header`` (``Header.to_attrs`` / ``Header.from_attrs``); a header attribute longer
than ``MAX_ATTR_CHARS`` characters is damage.

Datasets and groups (``<role>`` is ``database`` or ``queries``, N and M their image counts):

=====================================  ==============================================================
``/<role>/names``                      (N,) UTF-8 image paths relative to the role's folder
``/<role>/utm``                        (N, 2) float64 east, north (metres), finite
``/<role>/sha256``                     (N, 32) uint8 SHA-256 of each image file's bytes (since
                                       vprkit 0.2; absent in older files; an all-zero row is not
                                       known yet), checked when an extraction resumes or adds
                                       scales and when combine aligns inputs
``/scales/<s>/``                       one group per stored scale s >= 1 (image at H/s x W/s);
                                       attributes ``scale``, ``image_size`` (JSON [h, w] at that
                                       scale, or null at native size), ``rows_done_database`` and
                                       ``rows_done_queries`` (rows committed so far)
``/scales/<s>/<role>``                 (N, D) descriptors, ``dtype``, chunked by rows (about 1 MiB
                                       a chunk); D is the same at every scale
``/scales/<s>/stats/<role>/<name>``    (N, ...) per-image statistics from which a pyramid of
                                       several scales is formed (GeM: ``count`` (N,) int64 local
                                       features; NetVLAD: ``cluster_norms`` (N, K) float32)
``/model/aggregation/<name>``          aggregation weights the descriptors were made with
                                       (NetVLAD clusters initialised by k-means), optional
``/combine``                           ensembles only: attribute ``spec`` (JSON ``{"inputs":
                                       [{file, scale, dim, model, dataset, pca}], "weights"}``)
``/combine/pca/<i>/``                  the PCA fitted for input i (absent: input kept as it is):
                                       datasets ``mean`` (D_i,), ``components`` (d, D_i),
                                       ``explained_variance`` (d,) float32; attributes ``whiten``,
                                       ``fitted_on``, ``rows``, ``method``
=====================================  ==============================================================

Writing: a file is written as ``<name>.partial`` while ``<name>.lock`` is held (a second writer
is refused), and renamed to ``<name>`` once ``complete`` is true, so a file at the final path is
always whole. Rows are written block by block; after each block the data is flushed, then the
``rows_done_<role>`` counters of its scales, so an unfinished file holds exactly the committed
rows and an extraction resumes from them. A complete file is extended with new scales by
copying it to ``<name>.partial``. No step writes through a symbolic link.
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import VprkitError
from .files import (
    copy_exclusive,
    guarded_write,
    human_bytes,
    output_lock,
    partial_path,
    refuse_link,
    require_space,
    reserve,
)
from .pyramid import pyramid, stat_names
from .roles import ROLES

__all__ = ["ROLES", "DescriptorFile", "DescriptorWriter", "Header", "Output", "human_bytes",
           "parse_scale_spec", "parse_scales", "partial_path", "spec_name", "writing"]

FORMAT = "vprkit.descriptors"
FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20
HEADER_ATTRS = ("model", "aggregation", "dataset", "preprocessing", "dtype", "vprkit_version",
                "created")
MAX_ATTR_CHARS = 1 << 20  # a header attribute longer than this is damage, not a header
HASH_BYTES = 32  # SHA-256 of each image file
STRINGS = h5py.string_dtype("utf-8")
PCA_ARRAYS = ("mean", "components", "explained_variance")
PCA_ATTRS = {"whiten": bool, "fitted_on": str, "rows": int, "method": str}


_SCALE_LIST = re.compile(r"\s*[1-9]\d{0,3}(\s*,\s*[1-9]\d{0,3})*\s*")
_SCALE_SPEC = re.compile(r"\s*[1-9]\d{0,3}(\s*\+\s*[1-9]\d{0,3})*\s*")


def parse_scales(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3): the scales to extract (distinct integers 1..9999)."""
    if not _SCALE_LIST.fullmatch(str(text)):
        raise VprkitError(f"bad scale list {str(text)!r}: expected distinct integers >= 1 "
                          "separated by commas, like 1,2,3")
    scales = tuple(int(s) for s in str(text).split(","))
    if len(set(scales)) != len(scales):
        raise VprkitError(f"bad scale list {str(text)!r}: a scale is repeated")
    return scales


def parse_scale_spec(text: str) -> tuple[int, ...]:
    """``"1+2+3"`` -> (1, 2, 3): one scale or a pyramid of several."""
    if not _SCALE_SPEC.fullmatch(str(text)):
        raise VprkitError(f"bad scale list {str(text)!r}: expected one scale such as 2 or a "
                          "pyramid of distinct scales such as 1+2+3")
    return parse_scales(str(text).replace("+", ","))


def spec_name(scales: Sequence[int]) -> str:
    """(1, 2, 3) -> ``"1+2+3"``: how a scale or pyramid is named."""
    return "+".join(str(s) for s in scales)


def _json_dict(text) -> dict:
    if isinstance(text, str):
        text.encode("utf-8")  # damaged bytes come back as surrogates: UnicodeEncodeError
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _json_attr(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def _text_attr(value) -> str | None:
    """A root attribute as text (None where it is absent)."""
    if value is None:
        return None
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def chunk_rows(dim: int, itemsize: int, rows: int) -> int:
    return max(1, min(rows, CHUNK_BYTES // max(1, dim * itemsize)))


def image_hashes(h5: h5py.File, role: str) -> np.ndarray | None:
    """The (N, 32) SHA-256 rows of ``role``, or None where the file has none."""
    ds = h5.get(f"{role}/sha256")
    return None if ds is None else ds[()]


@dataclass(frozen=True)
class Header:
    """What a descriptor file's rows were made with: its five header attributes.

    Attributes:
        model: the model (backbone, aggregation, clusters, weights, ``output_dim``,
            ``fingerprint``, ...); for an ensemble, ``type = "ensemble"`` and its inputs.
        aggregation: the pyramid rule and its parameters (e.g. GeM's ``p``).
        dataset: dataset root and split (and ``shard`` for a shard file).
        preprocessing: resize (or None), normalisation, interpolation, precision.
        dtype: storage type of the descriptors, ``"float32"`` or ``"float16"``.
    """

    model: dict
    aggregation: dict
    dataset: dict
    preprocessing: dict
    dtype: str

    JSON_FIELDS = ("model", "aggregation", "dataset", "preprocessing")

    def to_attrs(self) -> dict[str, str]:
        """The HDF5 root attributes: the four dicts as sorted JSON, ``dtype`` as it is."""
        attrs = {key: _json_attr(getattr(self, key)) for key in self.JSON_FIELDS}
        attrs["dtype"] = str(self.dtype)
        return attrs

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> Header:
        """The header stored in ``attrs``.

        Raises:
            KeyError, ValueError, UnicodeError: an attribute is missing, too long, not a JSON
                object or not valid UTF-8 (``DescriptorFile`` reports these as damage).
        """
        for key in ("model", "aggregation", "dataset", "preprocessing", "dtype"):
            value = attrs.get(key)
            if isinstance(value, (str, bytes)) and len(value) > MAX_ATTR_CHARS:
                raise ValueError(f"attribute {key} holds {len(value)} characters, more than "
                                 f"{MAX_ATTR_CHARS}")
        return cls(**{key: _json_dict(attrs[key]) for key in cls.JSON_FIELDS},
                   dtype=str(attrs["dtype"]))

    @classmethod
    def of(cls, header: Header | Mapping) -> Header:
        """``header`` as a Header (a mapping with the five keys is converted)."""
        if isinstance(header, Header):
            return header
        return cls(**{f.name: header[f.name] for f in fields(cls)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class DescriptorFile:
    """Read access to a descriptor file; rows are read lazily, block by block.

    Opening checks the format, version, completeness and layout; the header is parsed then,
    the descriptors are read only by ``read_rows``, ``read_index`` and ``iter_blocks``, as
    float32 whatever the storage type. A role is ``"database"`` or ``"queries"``; a scale
    spec is a sequence of stored scales: ``(2,)`` for one scale, ``(1, 2, 3)`` for the pyramid
    of several (formed from the stored per-image statistics, without the network). Use it as a
    context manager (``with DescriptorFile(path) as f:``) or call ``close()``.

    Args:
        path: the descriptor file (``.h5``).
        require_complete: refuse a file whose extraction did not finish (False reads the
            committed rows of a ``.partial`` file).

    Attributes:
        path: the file's path.
        header: the ``Header``; its fields are also attributes of their own:
        model: the model header (backbone, aggregation, clusters, weights, ``output_dim``,
            ``fingerprint``, ...); for an ensemble, ``type = "ensemble"`` and its inputs.
        aggregation: the pyramid rule and its parameters (e.g. GeM's ``p``).
        dataset: dataset root and split (and ``shard`` for a shard file).
        preprocessing: resize (or None), normalisation, interpolation, precision.
        dtype: storage type of the descriptors, ``"float32"`` or ``"float16"``.
        h5: the open ``h5py.File``, read-only (for tests and inspection: vprkit itself reads
            through the methods).

    Raises:
        VprkitError: the file does not exist, is not HDF5, is not a vprkit descriptor file of
            this format version, is incomplete (with ``require_complete``) or is damaged.
    """

    def __init__(self, path: str | Path, require_complete: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            hint = ""
            if partial_path(self.path).exists():
                hint = " (an unfinished extraction left a .partial file: rerun extract to resume)"
            raise VprkitError(f"descriptor file {self.path} does not exist{hint}")
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError:
            raise VprkitError(f"{self.path} is not an HDF5 file (or is damaged)") from None
        try:
            self._open_header(require_complete)
        except VprkitError:
            self.h5.close()
            raise

    def _open_header(self, require_complete: bool) -> None:
        attrs = self.h5.attrs
        with self._damaged("its header"):
            fmt = attrs.get("format")
            version = int(attrs.get("format_version", -1)) if fmt == FORMAT else None
            complete = bool(attrs.get("complete", False))
        if fmt != FORMAT:
            raise VprkitError(f"{self.path} is not a vprkit descriptor file (no format={FORMAT!r})")
        if version != FORMAT_VERSION:
            raise VprkitError(
                f"{self.path} has descriptor format version {version}; this vprkit reads "
                f"version {FORMAT_VERSION}"
            )
        if require_complete and not complete:
            raise VprkitError(f"{self.path} is incomplete (its extraction did not finish)")
        self.complete = complete
        self.format_version = version
        with self._damaged("its header"):
            for key in HEADER_ATTRS:
                value = attrs.get(key)
                if isinstance(value, (str, bytes)) and len(value) > MAX_ATTR_CHARS:
                    raise ValueError(f"attribute {key} holds {len(value)} characters, more than "
                                     f"{MAX_ATTR_CHARS}")
            self.header = Header.from_attrs(attrs)
            self.model = self.header.model
            self.aggregation = self.header.aggregation
            self.dataset = self.header.dataset
            self.preprocessing = self.header.preprocessing
            self.dtype = self.header.dtype
            self.vprkit_version = _text_attr(attrs.get("vprkit_version"))
            self.created = _text_attr(attrs.get("created"))
        with self._damaged("its layout"):
            self._check_layout(require_complete)

    @contextmanager
    def _damaged(self, what: str) -> Iterator[None]:
        """Any failure to read ``what`` becomes one error naming the file."""
        try:
            yield
        except VprkitError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, OSError, RuntimeError,
                AttributeError) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise VprkitError(f"{self.path} is damaged: cannot read {what} ({detail})") from None

    def _check_layout(self, complete: bool) -> None:
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"unknown storage dtype {self.dtype!r}")
        counts = {}
        self._utm = {}  # read once here (checked finite); utm() hands out copies
        for role in ROLES:
            names, utm = self.h5[f"{role}/names"], self.h5[f"{role}/utm"]
            if names.ndim != 1 or utm.shape != (names.shape[0], 2) or utm.dtype.kind != "f":
                raise ValueError(f"{role}/names {names.shape} and {role}/utm {utm.shape} do not match")
            hashes = self.h5.get(f"{role}/sha256")
            if hashes is not None and (hashes.shape != (names.shape[0], HASH_BYTES)
                                       or hashes.dtype != np.uint8):
                raise ValueError(f"{role}/sha256 has shape {hashes.shape}, type {hashes.dtype}")
            self._utm[role] = utm[()]
            bad = ~np.isfinite(self._utm[role]).all(axis=1)
            if bad.any():
                raise ValueError(f"{role} row {int(np.flatnonzero(bad)[0])} has non-finite coordinates")
            counts[role] = names.shape[0]
        scales = self.h5["scales"]
        if not len(scales):
            raise ValueError("no scales")
        dims = set()
        for key in scales:
            group = scales[key]
            if not key.isdigit() or int(key) < 1:
                raise ValueError(f"bad scale name {key!r}")
            for role in ROLES:
                ds = group[role]
                if ds.ndim != 2 or ds.shape[0] != counts[role] or ds.dtype.kind != "f" or not ds.shape[1]:
                    raise ValueError(f"scales/{key}/{role} has shape {ds.shape}, type {ds.dtype}")
                dims.add(ds.shape[1])
                done = int(group.attrs.get(f"rows_done_{role}", -1))
                if complete and done != counts[role]:
                    raise ValueError(f"scales/{key} holds {done} of {counts[role]} {role} rows")
                for name in stat_names(self.aggregation):
                    if f"stats/{role}/{name}" in group and \
                            group[f"stats/{role}/{name}"].shape[:1] != (counts[role],):
                        raise ValueError(f"scales/{key}/stats/{role}/{name} has the wrong length")
        if len(dims) != 1:
            raise ValueError(f"scales of different dimensions {sorted(dims)}")

    def __enter__(self) -> DescriptorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the HDF5 file (also done on leaving a ``with`` block)."""
        self.h5.close()

    @property
    def scales(self) -> list[int]:
        """The stored scales, sorted, e.g. ``[1, 2, 3]``."""
        return sorted(int(s) for s in self.h5["scales"].keys())

    @property
    def dim(self) -> int:
        """The descriptor dimension D (the same at every scale and for every pyramid)."""
        first = str(self.scales[0])
        return int(self.h5[f"scales/{first}/database"].shape[1])

    def num(self, role: str) -> int:
        """Number of images (rows) N of ``role`` (``"database"`` or ``"queries"``)."""
        return int(self.h5[f"{role}/utm"].shape[0])

    def names(self, role: str) -> list[str]:
        """The N image paths of ``role``, relative to its folder, in row order.

        Raises:
            VprkitError: the stored names are damaged (not valid UTF-8).
        """
        with self._damaged(f"the {role} names"):
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in self.h5[f"{role}/names"][:]]
            "\n".join(names).encode("utf-8")  # damaged bytes come back as surrogates
            return names

    def utm(self, role: str) -> np.ndarray:
        """UTM coordinates of ``role``'s images: a copy, ``(N, 2)`` float64 east, north (m)."""
        return self._utm[role].copy()

    def hashes(self, role: str) -> np.ndarray | None:
        """(N, 32) SHA-256 of each image file, or None for files made before they were kept."""
        return image_hashes(self.h5, role)

    def aggregation_arrays(self) -> dict[str, np.ndarray]:
        """The stored aggregation weights (``/model/aggregation/*``: NetVLAD's k-means
        clusters), by name; empty where the file has none."""
        with self._damaged("its aggregation weights"):
            group = self.h5.get("model/aggregation")
            return {} if group is None else {name: ds[()] for name, ds in group.items()}

    def _scale(self, scale: int) -> h5py.Group:
        self.check_spec((scale,))
        return self.h5[f"scales/{scale}"]

    def image_size(self, scale: int) -> tuple[int, int] | None:
        """(h, w) of the images at ``scale`` (None: each image's own size)."""
        with self._damaged(f"the attributes of scale {scale}"):
            size = self._scale(scale).attrs.get("image_size")
            size = json.loads(size) if size else None
            return None if size is None else (int(size[0]), int(size[1]))

    def rows_done(self, role: str, scale: int) -> int:
        """Rows of ``role`` committed at ``scale`` (all of them in a complete file)."""
        with self._damaged(f"the attributes of scale {scale}"):
            return int(self._scale(scale).attrs.get(f"rows_done_{role}", 0))

    def stat_specs(self, scale: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """The per-image statistics stored at ``scale``: name -> (shape of one row, dtype),
        as ``DescriptorWriter.add_scale`` takes them."""
        with self._damaged(f"the statistics of scale {scale}"):
            group = self._scale(scale).get("stats/database")
            return {} if group is None else {name: (tuple(ds.shape[1:]), ds.dtype.str)
                                             for name, ds in group.items()}

    def read_stats(self, role: str, scale: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows [start, stop) of every per-image statistic of ``role`` at ``scale``."""
        names = self.stat_specs(scale)
        with self._damaged(f"the {role} statistics of scale {scale}"):
            group = self._scale(scale)
            return {name: group[f"stats/{role}/{name}"][start:stop] for name in names}

    def read_raw(self, role: str, scale: int, start: int, stop: int
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Rows [start, stop) of one stored scale as they are stored (storage dtype, no pyramid,
        no check), with their statistics: for copying them into another file."""
        stats = self.read_stats(role, scale, start, stop)
        with self._damaged(f"{role} rows at scale {scale}"):
            return self._scale(scale)[role][start:stop], stats

    def combine_record(self) -> tuple[dict, list[dict | None]] | None:
        """An ensemble's record (``/combine``): its spec (``{"inputs": [...], "weights"}``) and,
        per input, its PCA (``mean``, ``components``, ``explained_variance``, ``whiten``,
        ``fitted_on``, ``rows``, ``method``) or None; None for a file that is no ensemble."""
        with self._damaged("its combine record"):
            group = self.h5.get("combine")
            if group is None:
                return None
            spec = _json_dict(group.attrs["spec"])
            pcas: list[dict | None] = []
            for i in range(len(spec["inputs"])):
                g = group.get(f"pca/{i}")
                if g is None:
                    pcas.append(None)
                    continue
                pcas.append({**{k: g[k][:] for k in PCA_ARRAYS},
                             **{k: kind(g.attrs[k]) for k, kind in PCA_ATTRS.items()}})
            return spec, pcas

    def check_spec(self, scales: Sequence[int]) -> tuple[int, ...]:
        """Check that every scale of a spec is stored.

        Args:
            scales: a scale spec, e.g. ``(2,)`` or ``(1, 2, 3)``.

        Returns:
            The spec as a tuple.

        Raises:
            VprkitError: a scale is not in the file (the message lists the stored ones).
        """
        missing = [s for s in scales if s not in self.scales]
        if missing:
            have = ", ".join(str(s) for s in self.scales)
            raise VprkitError(
                f"scale {spec_name(missing)} is not in {self.path} (it has scales {have})"
            )
        return tuple(scales)

    def read_rows(self, role: str, scales: Sequence[int], start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a scale or of the pyramid of several scales, as float32.

        Args:
            role: ``"database"`` or ``"queries"``.
            scales: a scale spec: ``(2,)`` for one stored scale, ``(1, 2)`` for the pyramid.
            start: first row.
            stop: row after the last (at most ``num(role)``).

        Returns:
            ``(stop - start, D)`` float32 descriptors, in row order (a pyramid is formed from
            the stored scales' rows and statistics: the same D).

        Raises:
            VprkitError: a scale is not stored, the rows cannot be read (damaged file), or a
                descriptor is not finite (the message names its row and image).
        """
        return self._read(role, scales, slice(start, stop), np.arange(start, stop))

    def read_index(self, role: str, scales: Sequence[int], index: np.ndarray) -> np.ndarray:
        """Rows at arbitrary (distinct) positions ``index``, in that order, as float32.

        Args:
            role: ``"database"`` or ``"queries"``.
            scales: a scale spec, as in ``read_rows``.
            index: ``(M,)`` distinct row numbers, in any order.

        Returns:
            ``(M, D)`` float32 descriptors; row ``i`` is row ``index[i]`` of the file.

        Raises:
            VprkitError: as ``read_rows``.
        """
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        rows = self._read(role, scales, index[order], index[order])
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def _read(self, role: str, scales: Sequence[int], selection, row_numbers: np.ndarray):
        scales = self.check_spec(scales)
        descs, stats = [], []
        with self._damaged(f"{role} rows at scale {spec_name(scales)}"):
            for s in scales:
                group = self.h5[f"scales/{s}"]
                descs.append(group[role][selection])
                if len(scales) > 1:
                    names = stat_names(self.aggregation)
                    stats.append({n: group[f"stats/{role}/{n}"][selection] for n in names})
            rows = pyramid(self.aggregation, descs, stats)
        bad = ~np.isfinite(rows.sum(axis=1, dtype=np.float64))  # NaN/Inf propagate to the sum
        if bad.any():
            row = int(row_numbers[np.flatnonzero(bad)[0]])
            name = self.h5[f"{role}/names"][row]
            name = name.decode() if isinstance(name, bytes) else name
            raise VprkitError(
                f"{self.path}: non-finite descriptor in {role} row {row} ({name}) at scale "
                f"{spec_name(scales)}"
            )
        return rows

    def iter_blocks(
        self, role: str, scales: Sequence[int], block_rows: int
    ) -> Iterator[tuple[int, np.ndarray]]:
        """All rows of ``role``, ``block_rows`` at a time (bounded memory).

        Args:
            role: ``"database"`` or ``"queries"``.
            scales: a scale spec, as in ``read_rows``.
            block_rows: rows per block (the last block may be shorter).

        Yields:
            ``(start, rows)``: the first row number and the ``(n, D)`` float32 rows
            ``[start, start + n)``, with ``n <= block_rows``.
        """
        n = self.num(role)
        for start in range(0, n, block_rows):
            yield start, self.read_rows(role, scales, start, min(n, start + block_rows))

    def default_block_rows(self, budget_bytes: int = 256 << 20) -> int:
        """Rows of float32 descriptors that fit in ``budget_bytes`` (at least 1024)."""
        return max(1024, budget_bytes // (4 * self.dim))


class DescriptorWriter:
    """Creates or resumes a ``.partial`` descriptor file and finalises it by renaming.

    Commands write through ``writing`` (lock, guarded writes, finalisation); the writer holds
    the open file: ``add_scale``, ``write`` then ``commit_rows`` block by block, ``finalize``."""

    def __init__(self, h5: h5py.File, path: Path):
        self.h5 = h5
        self.path = path
        self._open: dict[str, h5py.Dataset] = {}

    @classmethod
    def create(
        cls,
        path: Path,
        header: Header | Mapping,
        names: dict[str, list[str]],
        utm: dict[str, np.ndarray],
        hashes: dict[str, np.ndarray] | None = None,
    ) -> DescriptorWriter:
        """A new file at ``path`` (a .partial path, which must not exist: not even as a link)."""
        header = Header.of(header)
        refuse_link(path)
        try:
            h5 = h5py.File(path, "x")  # O_CREAT | O_EXCL: never through a planted link
        except FileExistsError:
            raise VprkitError(f"{path} exists already (left by another process?); remove it") \
                from None
        attrs = h5.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["vprkit_version"] = __version__
        attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        attrs["complete"] = False
        for key, value in header.to_attrs().items():
            attrs[key] = value
        for role in ROLES:
            h5.create_dataset(f"{role}/names", data=np.array(names[role], dtype=object),
                              dtype=STRINGS)
            h5.create_dataset(f"{role}/utm", data=np.asarray(utm[role], dtype=np.float64))
            rows = len(names[role])
            if hashes is not None:
                h5.create_dataset(f"{role}/sha256", data=np.asarray(hashes[role], dtype=np.uint8)
                                  .reshape(rows, HASH_BYTES))
            else:
                h5.create_dataset(f"{role}/sha256", shape=(rows, HASH_BYTES), dtype=np.uint8)
        h5.create_group("scales")
        h5.flush()
        return cls(h5, path)

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
            group.create_dataset(role, shape=(n, dim), dtype=dtype, chunks=(rows, dim))
            for name, (shape, stat_dtype) in stats.items():
                group.create_dataset(f"stats/{role}/{name}", shape=(n, *shape), dtype=stat_dtype)
            group.attrs[f"rows_done_{role}"] = 0
        self.h5.flush()

    def drop_scale(self, scale: int) -> None:
        self._open = {k: v for k, v in self._open.items() if not k.startswith(f"scales/{scale}/")}
        del self.h5[f"scales/{scale}"]
        self.h5.flush()

    def rows_done(self, role: str, scales: Sequence[int]) -> int:
        return min(int(self.h5[f"scales/{s}"].attrs[f"rows_done_{role}"]) for s in scales)

    def write(self, role: str, scale: int, start: int, desc: np.ndarray,
              stats: dict[str, np.ndarray]) -> None:
        self.ensure_space(desc.nbytes + sum(v.nbytes for v in stats.values()))
        with self._failing_write():
            stop = start + len(desc)
            self._dataset(f"scales/{scale}/{role}")[start:stop] = desc
            for name, values in stats.items():
                self._dataset(f"scales/{scale}/stats/{role}/{name}")[start:stop] = values

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
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self.h5.id.get_vfd_handle())
                os.close(null)
                self._open.clear()
                self.h5.close()
            except Exception:  # noqa: S110  (the original error is what the caller reports)
                pass
            raise

    def ensure_space(self, nbytes: int) -> None:
        """Stop with one clear line, before HDF5 writes, where ``nbytes`` more would not fit:
        the free-space margin, then a reservation of the blocks (quota, file-size limit)."""
        require_space(self.path, nbytes)
        reserve(self.h5.id.get_vfd_handle(), self.path, self.h5.id.get_filesize(), nbytes)

    def commit_rows(self, role: str, scales: Sequence[int], rows: int) -> None:
        """Record that rows [0, rows) of ``scales`` are written: data first, then the counter."""
        with self._failing_write():
            self.h5.flush()
            for s in scales:
                self.h5[f"scales/{s}"].attrs[f"rows_done_{role}"] = rows
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

    def create(self, header: Header | Mapping, names: dict[str, list[str]],
               utm: dict[str, np.ndarray], hashes: dict[str, np.ndarray] | None = None
               ) -> DescriptorWriter:
        """A new file (a ``.partial`` left there is removed first, unless ``resumable``: a
        resumable output resumes it or refuses)."""
        with guarded_write(self.partial, self.path, resumable=self.resumable):
            if not self.resumable:
                self.partial.unlink(missing_ok=True)
            writer = DescriptorWriter.create(self.partial, header, names, utm, hashes)
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
        warnings.warn(f"{self.partial} is damaged ({type(err).__name__}); starting it again",
                      stacklevel=4)
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
def writing(output: str | Path, *, resumable: bool = False, overwrite: bool = False
            ) -> Iterator[Output]:
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
