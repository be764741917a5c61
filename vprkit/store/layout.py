"""The layout check of a descriptor file, run when ``DescriptorFile`` opens it."""

from __future__ import annotations

import h5py
import numpy as np

from vprkit.choices import ROLES
from vprkit.descriptors.pyramid import stat_names
from vprkit.descriptors.views import HARD_RESIZE, VIEWS
from vprkit.store.checks import MAX_DIM
from vprkit.store.format import HASH_BYTES, descriptor_key, rows_done_attr, stats_key


def check_stored(dataset: h5py.Dataset) -> None:
    """ValueError where ``dataset``, read whole when a file is opened (names, coordinates), does
    not hold its rows: a crafted file may declare billions of rows that it never stored (HDF5
    allocates nothing for them), and reading them would ask for as many bytes of memory."""
    if dataset.chunks is None:
        stored = dataset.id.get_storage_size() >= dataset.size * dataset.dtype.itemsize
    else:
        per_chunk = int(np.prod(dataset.chunks))
        stored = dataset.id.get_num_chunks() >= -(-dataset.size // per_chunk)
    if not stored:
        raise ValueError(f"{dataset.name} declares {dataset.shape[0]} rows but does not store them")


def check_layout(h5: h5py.File, aggregation: dict, dtype: str, complete: bool) -> dict[str, np.ndarray]:
    """Check a descriptor file's datasets (names, coordinates, hashes, every scale and view);
    return its (N, 2) UTM coordinates per role, read once (checked finite). Raises KeyError,
    ValueError... where the layout is damaged (``DescriptorFile`` reports them)."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"unknown storage dtype {dtype!r}")
    counts = {}
    utm_of: dict[str, np.ndarray] = {}
    for role in ROLES:
        names, utm = h5[f"{role}/names"], h5[f"{role}/utm"]
        if names.ndim != 1 or utm.shape != (names.shape[0], 2) or utm.dtype.kind != "f":
            raise ValueError(f"{role}/names {names.shape} and {role}/utm {utm.shape} do not match")
        hashes = h5.get(f"{role}/sha256")
        if hashes is not None and (hashes.shape != (names.shape[0], HASH_BYTES) or hashes.dtype != np.uint8):
            raise ValueError(f"{role}/sha256 has shape {hashes.shape}, type {hashes.dtype}")
        for dataset in (names, utm):
            check_stored(dataset)
        utm_of[role] = utm[()]
        bad = ~np.isfinite(utm_of[role]).all(axis=1)
        if bad.any():
            raise ValueError(f"{role} row {int(np.flatnonzero(bad)[0])} has non-finite coordinates")
        counts[role] = names.shape[0]
    scales = h5["scales"]
    if not len(scales):
        raise ValueError("no scales")
    dims = set()
    for key in scales:
        group = scales[key]
        if not key.isdigit() or int(key) < 1:
            raise ValueError(f"bad scale name {key!r}")
        views = list(group.get("views", {}))
        unknown = [v for v in views if v not in VIEWS or v == HARD_RESIZE]
        if unknown:
            raise ValueError(f"scales/{key} has an unknown view {unknown[0]!r}")
        parts = [(role, HARD_RESIZE) for role in ROLES] + [("queries", v) for v in views]
        for role, view in parts:
            dims.add(_check_part(h5, aggregation, int(key), role, view, counts[role], complete))
    if len(dims) != 1:
        raise ValueError(f"scales of different dimensions {sorted(dims)}")
    return utm_of


def _check_part(
    h5: h5py.File, aggregation: dict, scale: int, role: str, view: str, images: int, complete: bool
) -> int:
    """Check the descriptors of ``role`` at ``view`` and ``scale``; their dimension."""
    rows = images * VIEWS[view]
    key = descriptor_key(scale, role, view)
    ds = h5[key]
    if ds.ndim != 2 or ds.shape[0] != rows or ds.dtype.kind != "f" or not 0 < ds.shape[1] <= MAX_DIM:
        raise ValueError(f"{key} has shape {ds.shape}, type {ds.dtype}")
    done = int(h5[f"scales/{scale}"].attrs.get(rows_done_attr(role, view), -1))
    if complete and done != images:
        what = role if view == HARD_RESIZE else f"{view} queries"
        raise ValueError(f"scales/{scale} holds {done} of {images} {what} rows")
    for name in stat_names(aggregation):
        stat = h5.get(stats_key(scale, role, view, name))
        if stat is not None and stat.shape[:1] != (rows,):
            raise ValueError(f"{stats_key(scale, role, view, name)} has the wrong length")
    return int(ds.shape[1])
