"""``DescriptorFile``: read access to a descriptor file, checked when it is opened."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from vprkit.descriptors.pyramid import pyramid, stat_names
from vprkit.descriptors.views import HARD_RESIZE, VIEWS
from vprkit.errors import VprkitError
from vprkit.files import (
    partial_path,
)
from vprkit.store.checks import MISSING
from vprkit.store.format import (
    HEADER_ATTRS,
    MAX_ATTR_CHARS,
    PCA_ARRAYS,
    PCA_ATTRS,
    _json_dict,
    _text_attr,
    descriptor_key,
    image_hashes,
    image_size_attr,
    rows_done_attr,
    spec_name,
    stats_key,
)
from vprkit.store.layout import check_layout
from vprkit.store.validate import (
    check_combine,
    check_counts,
    check_format,
    check_names,
    check_scales,
    read_header,
    role_counts,
)


class DescriptorFile:
    """Read access to a descriptor file; rows are read lazily, block by block.

    Opening checks the format, version, completeness and layout, and every recorded attribute
    (types, ranges, sizes: ``vprkit.store.validate``); the header is parsed then,
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
        attrs, file = self.h5.attrs, str(self.path)
        with self._damaged("its header"):
            fmt, version, complete = (attrs.get(k, MISSING) for k in ("format", "format_version",
                                                                       "complete"))
        version, complete = check_format(fmt, version, complete, file)
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
            self.header = read_header(attrs, file)
            self.model = self.header.model
            self.aggregation = self.header.aggregation
            self.dataset = self.header.dataset
            self.preprocessing = self.header.preprocessing
            self.dtype = self.header.dtype
            self.vprkit_version = _text_attr(attrs.get("vprkit_version"))
            self.created = _text_attr(attrs.get("created"))
        with self._damaged("its layout"):
            counts = role_counts(self.h5)
            check_scales(self.h5, file, counts)
            check_counts(self.header, file, counts)
            self._utm = check_layout(self.h5, self.aggregation, self.dtype, require_complete)
            check_combine(self.h5, file)

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

    def num_rows(self, role: str, view: str = HARD_RESIZE) -> int:
        """Stored rows of ``role`` at ``view``: ``num(role)`` times the view's rows per image
        (5 for ``five_crops``)."""
        return self.num(role) * VIEWS[view]

    def views(self, scales: Sequence[int] | None = None) -> list[str]:
        """The query views (``vprkit.descriptors.views``) stored at every scale of ``scales`` (None: at
        every stored scale), ``hard_resize`` first."""
        have = None
        for s in self.check_spec(scales) if scales is not None else self.scales:
            group = self.h5[f"scales/{s}"].get("views")
            names = set(group.keys()) if group is not None else set()
            have = names if have is None else have & names
        return [HARD_RESIZE, *[v for v in VIEWS if v in (have or ())]]

    def check_view(self, scales: Sequence[int], view: str) -> None:
        """One clear error where ``view`` is not stored at every scale of ``scales``."""
        if view not in VIEWS:
            raise VprkitError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
        if view not in self.views(scales):
            have = ", ".join(self.views(scales))
            raise VprkitError(
                f"{self.path} has no {view} query descriptors at scale {spec_name(scales)} "
                f"(it has {have}); add them with vprkit extract ... --views {view} "
                f"--scales {','.join(map(str, scales))} -o {self.path.name}")

    def names(self, role: str) -> list[str]:
        """The N image paths of ``role``, relative to its folder, in row order.

        Raises:
            VprkitError: the stored names are damaged (not valid UTF-8), or a name is empty,
                absolute, holds NUL or a ``..`` component (it would name a file outside the
                folder: ``vprkit.store.checks.name_problem``).
        """
        with self._damaged(f"the {role} names"):
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in self.h5[f"{role}/names"][:]]
            "\n".join(names).encode("utf-8")  # damaged bytes come back as surrogates
        check_names(names, role, str(self.path))
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

    def image_size(self, scale: int, view: str = HARD_RESIZE) -> tuple[int, int] | None:
        """(h, w) of the images (of query view ``view``) at ``scale`` (None: each image's own
        size, at native size or for ``single_query``)."""
        with self._damaged(f"the attributes of scale {scale}"):
            size = self._scale(scale).attrs.get(image_size_attr(view))
            size = json.loads(size) if size else None
            return None if size is None else (int(size[0]), int(size[1]))

    def rows_done(self, role: str, scale: int, view: str = HARD_RESIZE) -> int:
        """Images of ``role`` (at ``view``) committed at ``scale`` (all in a complete file)."""
        with self._damaged(f"the attributes of scale {scale}"):
            return int(self._scale(scale).attrs.get(rows_done_attr(role, view), 0))

    def stat_specs(self, scale: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """The per-image statistics stored at ``scale``: name -> (shape of one row, dtype),
        as ``DescriptorWriter.add_scale`` takes them."""
        with self._damaged(f"the statistics of scale {scale}"):
            group = self._scale(scale).get("stats/database")
            return {} if group is None else {name: (tuple(ds.shape[1:]), ds.dtype.str)
                                             for name, ds in group.items()}

    def read_stats(self, role: str, scale: int, start: int, stop: int,
                   view: str = HARD_RESIZE) -> dict[str, np.ndarray]:
        """Rows [start, stop) of every per-image statistic of ``role`` (at ``view``) at
        ``scale``."""
        names = self.stat_specs(scale)
        with self._damaged(f"the {role} statistics of scale {scale}"):
            self._scale(scale)
            return {name: self.h5[stats_key(scale, role, view, name)][start:stop]
                    for name in names}

    def read_raw(self, role: str, scale: int, start: int, stop: int, view: str = HARD_RESIZE
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Rows [start, stop) of one stored scale (and view) as they are stored (storage
        dtype, no pyramid, no check), with their statistics: for copying them into another
        file."""
        stats = self.read_stats(role, scale, start, stop, view)
        with self._damaged(f"{role} rows at scale {scale}"):
            return self.h5[descriptor_key(scale, role, view)][start:stop], stats

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

    def read_rows(self, role: str, scales: Sequence[int], start: int, stop: int,
                  view: str = HARD_RESIZE) -> np.ndarray:
        """Rows [start, stop) of a scale or of the pyramid of several scales, as float32.

        Args:
            role: ``"database"`` or ``"queries"``.
            scales: a scale spec: ``(2,)`` for one stored scale, ``(1, 2)`` for the pyramid.
            start: first row.
            stop: row after the last (at most ``num_rows(role, view)``).
            view: the query view (``vprkit.descriptors.views``); ``five_crops`` has 5 rows per query.

        Returns:
            ``(stop - start, D)`` float32 descriptors, in row order (a pyramid is formed from
            the stored scales' rows and statistics: the same D).

        Raises:
            VprkitError: a scale is not stored, the rows cannot be read (damaged file), or a
                descriptor is not finite (the message names its row and image).
        """
        return self._read(role, scales, slice(start, stop), np.arange(start, stop), view)

    def read_index(self, role: str, scales: Sequence[int], index: np.ndarray,
                   view: str = HARD_RESIZE) -> np.ndarray:
        """Rows at arbitrary (distinct) positions ``index``, in that order, as float32.

        Args:
            role: ``"database"`` or ``"queries"``.
            scales: a scale spec, as in ``read_rows``.
            index: ``(M,)`` distinct row numbers, in any order.
            view: the query view, as in ``read_rows``.

        Returns:
            ``(M, D)`` float32 descriptors; row ``i`` is row ``index[i]`` of the file.

        Raises:
            VprkitError: as ``read_rows``.
        """
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        rows = self._read(role, scales, index[order], index[order], view)
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def _read(self, role: str, scales: Sequence[int], selection, row_numbers: np.ndarray,
              view: str = HARD_RESIZE):
        scales = self.check_spec(scales)
        if view != HARD_RESIZE:
            self.check_view(scales, view)
        descs, stats = [], []
        with self._damaged(f"{role} rows at scale {spec_name(scales)}"):
            for s in scales:
                descs.append(self.h5[descriptor_key(s, role, view)][selection])
                if len(scales) > 1:
                    names = stat_names(self.aggregation)
                    stats.append({n: self.h5[stats_key(s, role, view, n)][selection]
                                  for n in names})
            rows = pyramid(self.aggregation, descs, stats)
        bad = ~np.isfinite(rows.sum(axis=1, dtype=np.float64))  # NaN/Inf propagate to the sum
        if bad.any():
            row = int(row_numbers[np.flatnonzero(bad)[0]])
            name = self.h5[f"{role}/names"][row // VIEWS[view]]
            name = name.decode() if isinstance(name, bytes) else name
            where = "" if view == HARD_RESIZE else f" of view {view}"
            raise VprkitError(
                f"{self.path}: non-finite descriptor in {role} row {row}{where} ({name}) at "
                f"scale {spec_name(scales)}"
            )
        return rows

    def iter_blocks(
        self, role: str, scales: Sequence[int], block_rows: int, view: str = HARD_RESIZE
    ) -> Iterator[tuple[int, np.ndarray]]:
        """All rows of ``role`` (at ``view``), ``block_rows`` at a time (bounded memory).

        Args:
            role: ``"database"`` or ``"queries"``.
            scales: a scale spec, as in ``read_rows``.
            block_rows: rows per block (the last block may be shorter).
            view: the query view, as in ``read_rows``.

        Yields:
            ``(start, rows)``: the first row number and the ``(n, D)`` float32 rows
            ``[start, start + n)``, with ``n <= block_rows``.
        """
        n = self.num_rows(role, view)
        for start in range(0, n, block_rows):
            yield start, self.read_rows(role, scales, start, min(n, start + block_rows), view)

    def default_block_rows(self, budget_bytes: int = 256 << 20) -> int:
        """Rows of float32 descriptors that fit in ``budget_bytes`` (at least 1024)."""
        return max(1024, budget_bytes // (4 * self.dim))
