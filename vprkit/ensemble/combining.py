"""Pipeline step: concatenation and PCA ensembles of stored descriptor files.

``combine([gem.h5, netvlad.h5], "ens.h5", pca=2048)`` writes an ordinary descriptor file whose
scale ``1`` holds, for every image, the concatenation of the inputs' descriptors (at the scale or
pyramid chosen for each input), where each input wider than ``pca`` dimensions is first reduced
by PCA (the paper: NetVLAD 16384 -> 2048, GeM 256 kept: 2304 dimensions). With ``weights`` each
part is L2-normalised and multiplied by its weight, and the result is L2-normalised again;
without, the raw descriptors are concatenated (as the paper did).

Inputs must describe the same images; rows are aligned by name when the files order them
differently. The fitted PCA (mean, components, explained variance) is stored in the output
(``/combine/pca/<input>/...``) with everything else needed to apply the same transform to new
descriptors (``EnsembleTransform.from_file``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vprkit.data.datasets import ROLES
from vprkit.descriptors.views import HARD_RESIZE, VIEWS
from vprkit.ensemble.pca import EnsembleTransform, PCAParams, fit_pca
from vprkit.errors import ParameterError, VprkitError
from vprkit.progress import ProgressCallback, progress_callback, progress_task
from vprkit.store import DescriptorFile, Header, Output, parse_scale_spec, spec_name, writing
from vprkit.store.checks import refuse_shard
from vprkit.store.format import PCA_ARRAYS
from vprkit.store.writer import rows_bytes

PCA_FITS = ("database", "queries+database")
__all__ = ["PCA_FITS", "EnsembleTransform", "PCAParams", "combine", "fit_pca"]
logger = logging.getLogger(__name__)


def _alignment(ref: DescriptorFile, other: DescriptorFile, role: str) -> np.ndarray | None:
    """Row order of ``other`` matching ``ref`` by name (None when identical), or a clear error."""
    ref_names, names = ref.names(role), other.names(role)
    for f, listed in ((ref, ref_names), (other, names)):
        if len(set(listed)) != len(listed):
            seen: set[str] = set()
            twice = ""
            for n in listed:
                if n in seen:
                    twice = n
                    break
                seen.add(n)
            raise VprkitError(
                f"{f.path.name} lists the {role} image {twice} more than once: rows cannot be matched by name"
            )
    if ref_names == names:
        if not np.array_equal(ref.utm(role), other.utm(role)):
            raise VprkitError(
                f"{ref.path.name} and {other.path.name} give different coordinates to the same {role} images"
            )
        _same_bytes(ref, other, role, None)
        return None
    a, b = set(ref_names), set(names)
    if a != b or len(names) != len(ref_names):
        only_a, only_b = sorted(a - b), sorted(b - a)
        detail = []
        if only_a:
            detail.append(f"{len(only_a)} only in {ref.path.name} (e.g. {only_a[0]})")
        if only_b:
            detail.append(f"{len(only_b)} only in {other.path.name} (e.g. {only_b[0]})")
        raise VprkitError(
            f"{ref.path.name} and {other.path.name} describe different {role} images: {'; '.join(detail)}"
        )
    position = {n: i for i, n in enumerate(names)}
    index = np.array([position[n] for n in ref_names], dtype=np.int64)
    if not np.array_equal(ref.utm(role), other.utm(role)[index]):
        raise VprkitError(
            f"{ref.path.name} and {other.path.name} give different coordinates to the same {role} images"
        )
    _same_bytes(ref, other, role, index)
    return index


def _same_bytes(ref: DescriptorFile, other: DescriptorFile, role: str, index: np.ndarray | None) -> None:
    """Refuse inputs whose images had other bytes under the same names (where both files kept
    the images' SHA-256)."""
    a, b = ref.hashes(role), other.hashes(role)
    if a is None or b is None:
        return
    b = b if index is None else b[index]
    known = a.any(axis=1) & b.any(axis=1)
    differ = np.flatnonzero(known & (a != b).any(axis=1))
    if len(differ):
        name = ref.names(role)[int(differ[0])]
        raise VprkitError(
            f"{ref.path.name} and {other.path.name} were extracted from different "
            f"images under the same names ({len(differ)} {role} images differ, "
            f"e.g. {name})"
        )


def _read(
    store: DescriptorFile,
    role: str,
    scales,
    start: int,
    stop: int,
    order: np.ndarray | None,
    view: str = HARD_RESIZE,
) -> np.ndarray:
    """The rows of images [start, stop) of the reference order (``VIEWS[view]`` per image)."""
    c = VIEWS[view]
    if order is None:
        return store.read_rows(role, scales, start * c, stop * c, view)
    return store.read_index(role, scales, (order[start:stop, None] * c + np.arange(c)).ravel(), view)


def _common_views(stores: list[DescriptorFile], spec_of) -> list[str]:
    """The query views every input holds at its scale or pyramid (the ensemble holds those);
    a note names the views that some input lacks."""
    held = [st.views(sp) for st, sp in zip(stores, spec_of, strict=True)]
    common = [v for v in held[0] if all(v in h for h in held)]
    left = sorted({v for h in held for v in h} - set(common))
    if left:
        logger.warning(
            f"note: the ensemble has no {', '.join(left)} query view"
            f"{'s' if len(left) > 1 else ''}: not every input holds "
            f"{'them' if len(left) > 1 else 'it'}"
        )
    return common


def _fit_roles(fit: str) -> list[str]:
    return ["database"] if fit == "database" else ["queries", "database"]


def combine(
    inputs: Sequence[str | Path],
    output: str | Path,
    scales: Sequence[str | None] | str | None = None,
    pca: int | None = None,
    pca_fit: str | Sequence[str | Path] = "database",
    whiten: bool = False,
    weights: Sequence[float] | None = None,
    block_rows: int = 8192,
    pca_memory_bytes: int = 2 << 30,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write the ensemble of ``inputs`` to ``output``; returns its path.

    ``scales``: one spec for every input (``"1+2+3"``) or one per input (None: the first scale).
    ``pca_fit``: ``database``, ``queries+database``, or descriptor files (one per input that PCA
    reduces, in input order) made by the same model, e.g. of the train split.

    For every image the ensemble row is the concatenation of the inputs' rows ``(N, D_i)`` at
    their scale or pyramid, each input wider than ``pca`` first reduced to ``(N, pca)``: the
    output has ``sum_i min(D_i, pca)`` dimensions (``sum_i D_i`` without ``pca``). The output is
    an ordinary descriptor file with one scale, ``1``, that records its inputs and the fitted PCA
    (``vprkit.ensemble.combining.EnsembleTransform.from_file`` applies the same transform to new rows).

    Args:
        inputs: descriptor files of the same images (rows are aligned by name); at least two,
            or one with ``pca``.
        output: the ensemble descriptor file to write.
        scales: a scale spec for all inputs, or one per input (None entries: that file's first
            scale).
        pca: reduce each input wider than this many dimensions to it by PCA (None: no PCA).
        pca_fit: rows the PCA is fitted on (see above).
        whiten: whiten the PCA output (divide by the square root of the explained variance).
        weights: one positive weight per input: each part is L2-normalised and weighted, and
            the concatenation L2-normalised again (None: raw concatenation, as in the paper).
        block_rows: rows read and written at a time.
        pca_memory_bytes: fitting rows up to this size (as float32) get an exact in-memory
            PCA; beyond, an exact streamed covariance when the ``D x D`` float64 covariance
            fits in this size, else scikit-learn's IncrementalPCA.
        overwrite: replace an existing ``output``.
        progress: called as the work goes (``vprkit.progress``); None: silent. The summary
            line is logged (``logging``, ``vprkit`` logger).

    Returns:
        The path of the ensemble file (``output``).

    Raises:
        VprkitError: too few inputs, ``output`` existing (without ``overwrite``) or being an
            input, inputs of different images, a shard as input, bad weights, ``pca`` larger
            than an input's dimensions or than the fitting rows, or a bad ``pca_fit``.
    """
    progress = progress_callback(progress)
    paths = [Path(p) for p in inputs]
    output = Path(output)
    if len(paths) < 2 and pca is None:
        raise ParameterError(
            "inputs", "combine needs at least two descriptor files in inputs (or one with pca)"
        )
    if output.exists() and not overwrite:
        raise ParameterError("overwrite", f"{output} exists; pass overwrite to replace it")
    if output.resolve() in [p.resolve() for p in paths]:
        raise VprkitError(f"output {output} is also an input")
    specs = _scale_specs(scales, len(paths))
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(paths) or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ParameterError(
                "weights",
                f"weights needs {len(paths)} positive numbers, one per "
                f"input, got {','.join(f'{w:g}' for w in weights)}",
            )
    if block_rows < 1:
        raise ParameterError("block_rows", f"block_rows must be at least 1, got {block_rows}")
    if pca is not None and pca < 1:
        raise ParameterError("pca", f"pca must be a positive number of dimensions, got {pca}")

    # the lock before any work: a second combine into the same output is refused at once
    with writing(output, overwrite=overwrite) as out:
        stores = [DescriptorFile(p) for p in paths]
        extra: list[DescriptorFile] = []
        try:
            for st in stores:
                refuse_shard(st)
            spec_of = [s if s else (st.scales[0],) for s, st in zip(specs, stores, strict=True)]
            for st, sp in zip(stores, spec_of, strict=True):
                st.check_spec(sp)
            ref = stores[0]
            orders = {
                (i, role): _alignment(ref, st, role) for i, st in enumerate(stores) for role in ROLES if i > 0
            }
            dims = [st.dim for st in stores]
            pcas = _fit_pcas(stores, spec_of, pca, pca_fit, whiten, block_rows, pca_memory_bytes, extra)
            info = [
                {
                    "file": str(st.path.resolve()),
                    "scale": spec_name(sp),
                    "dim": st.dim,
                    "model": st.model,
                    "dataset": st.dataset,
                    "pca": None
                    if p is None
                    else {
                        "dim": pca,
                        "whiten": whiten,
                        "rows": p.rows,
                        "fitted_on": p.fitted_on,
                        "method": p.method,
                    },
                }
                for st, sp, p in zip(stores, spec_of, pcas, strict=True)
            ]
            transform = EnsembleTransform(dims=dims, pcas=pcas, weights=weights, info=info)
            _write(stores, spec_of, orders, transform, out, block_rows, progress)
        finally:
            for st in stores + extra:
                st.close()
    logger.info(
        f"wrote {out.written}: {transform.output_dim} dims from "
        + " + ".join(
            f"{Path(i['file']).name}[{i['scale']}]" + (f"->PCA {i['pca']['dim']}" if i["pca"] else "")
            for i in transform.info
        )
    )
    assert out.written is not None  # the block ended without error
    return out.written


def _fit_pcas(
    stores: list[DescriptorFile],
    spec_of,
    pca: int | None,
    pca_fit,
    whiten: bool,
    block_rows: int,
    memory_bytes: int,
    opened: list[DescriptorFile],
) -> list[PCAParams | None]:
    """The PCA of each input wider than ``pca`` (None for the others), fitted where ``pca_fit``
    says; ``--pca-fit`` files are opened into ``opened`` (the caller closes them)."""
    reduce = [pca is not None and st.dim > pca for st in stores]
    fit_files = _fit_files(pca_fit, sum(reduce))
    pcas: list[PCAParams | None] = []
    for i, (st, sp) in enumerate(zip(stores, spec_of, strict=True)):
        if not reduce[i]:
            pcas.append(None)
            continue
        assert pca is not None  # reduce[i] needs it
        if fit_files is None:
            sources = [(st, r) for r in _fit_roles(str(pca_fit))]
        else:
            fit_store = DescriptorFile(fit_files[sum(reduce[:i])])
            opened.append(fit_store)
            if fit_store.model.get("fingerprint") != st.model.get("fingerprint"):
                raise ParameterError(
                    "pca_fit", f"pca_fit file {fit_store.path} was made by another model than {st.path}"
                )
            fit_store.check_spec(sp)
            sources = [(fit_store, r) for r in ("queries", "database")]
        logger.info(f"fitting PCA {st.dim} -> {pca} on {', '.join(f'{f.path.name}:{r}' for f, r in sources)}")
        pcas.append(fit_pca(sp, pca, sources, whiten, block_rows, memory_bytes, str(st.path)))
    return pcas


def _scale_specs(scales, n: int) -> list[tuple[int, ...] | None]:
    if scales is None or isinstance(scales, str):
        return [parse_scale_spec(scales) if scales else None] * n
    scales = list(scales)
    if len(scales) == 1:
        return [parse_scale_spec(scales[0]) if scales[0] else None] * n
    if len(scales) != n:
        raise ParameterError(
            "scales", f"give one scale for all inputs or one per input ({n}) in scales, not {len(scales)}"
        )
    return [parse_scale_spec(s) if s else None for s in scales]


def _fit_files(pca_fit, needed: int) -> list[Path] | None:
    if isinstance(pca_fit, str) and pca_fit in PCA_FITS:
        return None
    files = [Path(pca_fit)] if isinstance(pca_fit, (str, Path)) else [Path(p) for p in pca_fit]
    if needed and len(files) != needed:
        raise ParameterError(
            "pca_fit",
            f"{needed} input(s) are reduced by PCA but {len(files)} "
            "pca_fit file(s) were given (one per reduced input, in input order)",
        )
    return files


def _write(
    stores,
    spec_of,
    orders,
    transform: EnsembleTransform,
    out: Output,
    block_rows: int,
    progress: ProgressCallback | None,
) -> None:
    ref = stores[0]
    header = Header(
        model={
            "type": "ensemble",
            "inputs": [{k: v for k, v in inp.items() if k != "dataset"} for inp in transform.info],
            "weights": transform.weights,
            "output_dim": transform.output_dim,
        },
        aggregation={"type": "ensemble"},
        dataset=ref.dataset,
        preprocessing={"inputs": [st.preprocessing for st in stores]},
        dtype="float32",
    )
    hashes = {r: ref.hashes(r) for r in ROLES}
    views = _common_views(stores, spec_of)
    parts = [(role, HARD_RESIZE) for role in ROLES] + [("queries", v) for v in views[1:]]
    pcas = [None if p is None else asdict(p) for p in transform.pcas]
    # everything written after the names, checked and reserved with them before the first byte
    more = sum(
        rows_bytes(ref.num(role) * VIEWS[view], transform.output_dim, "float32", {}) for role, view in parts
    )
    more += sum(np.asarray(p[key]).nbytes for p in pcas if p is not None for key in PCA_ARRAYS)
    writer = out.create(
        header,
        names={r: ref.names(r) for r in ROLES},
        utm={r: ref.utm(r) for r in ROLES},
        hashes=None if any(h is None for h in hashes.values()) else hashes,
        more_bytes=more,
    )
    writer.add_scale(1, transform.output_dim, {}, None)
    for view in views[1:]:
        writer.add_view(1, view, transform.output_dim, {}, None)
    writer.write_combine_record({"inputs": transform.info, "weights": transform.weights}, pcas)
    total = sum(ref.num(r) for r, _ in parts)
    with progress_task(progress, "combine", total) as task:
        for role, view in parts:
            n = ref.num(role)
            step = max(1, block_rows // VIEWS[view])  # images per block
            for start in range(0, n, step):
                stop = min(n, start + step)
                rows = [
                    _read(st, role, sp, start, stop, orders.get((i, role)), view)
                    for i, (st, sp) in enumerate(zip(stores, spec_of, strict=True))
                ]
                writer.write(role, 1, start, transform.apply(rows), {}, view)
                writer.commit_rows(role, [1], stop, view)
                task.advance(stop - start)
