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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .datasets import ROLES
from .errors import VprkitError
from .progress import console, progress_bar, styled
from .shards import refuse_shard
from .store import DescriptorFile, Header, Output, parse_scale_spec, spec_name, writing

PCA_FITS = ("database", "queries+database")


@dataclass
class PCAParams:
    """A fitted PCA: ``(x - mean) @ components.T``, divided by ``sqrt(variance)`` if whitened."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    whiten: bool
    fitted_on: str
    rows: int
    method: str

    def transform(self, x: np.ndarray) -> np.ndarray:
        out = (np.asarray(x, dtype=np.float32) - self.mean) @ self.components.T
        if self.whiten:
            out /= np.sqrt(self.explained_variance)
        return out.astype(np.float32)


@dataclass
class EnsembleTransform:
    """How the inputs' descriptors become one ensemble descriptor."""

    dims: list[int]
    pcas: list[PCAParams | None]
    weights: list[float] | None = None
    info: list[dict] = field(default_factory=list)

    @property
    def output_dim(self) -> int:
        return sum(p.components.shape[0] if p else d for p, d in zip(self.pcas, self.dims, strict=True))

    def apply(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble of one block of rows, given each input's rows (same images, same order)."""
        if len(parts) != len(self.dims):
            raise VprkitError(f"the ensemble has {len(self.dims)} inputs, got {len(parts)}")
        out = []
        for i, (x, pca) in enumerate(zip(parts, self.pcas, strict=True)):
            if x.shape[1] != self.dims[i]:
                raise VprkitError(f"input {i + 1} has {x.shape[1]} dimensions, the ensemble "
                                  f"expects {self.dims[i]}")
            x = pca.transform(x) if pca is not None else np.asarray(x, dtype=np.float32)
            if self.weights is not None:
                x = _l2(x) * self.weights[i]
            out.append(x)
        joined = np.concatenate(out, axis=1)
        return _l2(joined) if self.weights is not None else joined

    @classmethod
    def from_file(cls, path: str | Path) -> EnsembleTransform:
        """The transform stored in a combined descriptor file."""
        with DescriptorFile(path) as f:
            record = f.combine_record()
        if record is None:
            raise VprkitError(f"{path} is not a combined descriptor file")
        spec, stored = record
        pcas = [None if p is None else PCAParams(**p) for p in stored]
        return cls(dims=[inp["dim"] for inp in spec["inputs"]], pcas=pcas,
                   weights=spec["weights"], info=spec["inputs"])


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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
            raise VprkitError(f"{f.path.name} lists the {role} image {twice} more than once: rows "
                              "cannot be matched by name")
    if ref_names == names:
        if not np.array_equal(ref.utm(role), other.utm(role)):
            raise VprkitError(f"{ref.path.name} and {other.path.name} give different coordinates "
                              f"to the same {role} images")
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
        raise VprkitError(f"{ref.path.name} and {other.path.name} describe different {role} "
                          f"images: {'; '.join(detail)}")
    position = {n: i for i, n in enumerate(names)}
    index = np.array([position[n] for n in ref_names], dtype=np.int64)
    if not np.array_equal(ref.utm(role), other.utm(role)[index]):
        raise VprkitError(f"{ref.path.name} and {other.path.name} give different coordinates "
                          f"to the same {role} images")
    _same_bytes(ref, other, role, index)
    return index


def _same_bytes(ref: DescriptorFile, other: DescriptorFile, role: str,
                index: np.ndarray | None) -> None:
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
        raise VprkitError(f"{ref.path.name} and {other.path.name} were extracted from different "
                          f"images under the same names ({len(differ)} {role} images differ, "
                          f"e.g. {name})")


def _read(store: DescriptorFile, role: str, scales, start: int, stop: int,
          order: np.ndarray | None) -> np.ndarray:
    if order is None:
        return store.read_rows(role, scales, start, stop)
    return store.read_index(role, scales, order[start:stop])


def _fit_roles(fit: str) -> list[str]:
    return ["database"] if fit == "database" else ["queries", "database"]


def fit_pca(scales, dim: int, sources: list[tuple[DescriptorFile, str]],
            whiten: bool, block_rows: int, memory_bytes: int, label: str) -> PCAParams:
    """PCA of the rows of ``sources`` [(file, role)]: exact in memory when they fit in
    ``memory_bytes``, else exact by a streamed covariance when a D x D float64 matrix fits,
    else streamed with scikit-learn's IncrementalPCA."""
    from sklearn.decomposition import PCA, IncrementalPCA

    rows = sum(f.num(role) for f, role in sources)
    in_dim = sources[0][0].dim
    if dim > in_dim:
        raise VprkitError(f"--pca {dim} is larger than the {in_dim} dimensions of {label}")
    if dim > rows:
        raise VprkitError(f"--pca {dim} is larger than the {rows} rows that fit it ({label}); "
                          "choose a smaller --pca or fit on more rows (--pca-fit)")
    if rows * in_dim * 4 <= memory_bytes:
        data = np.concatenate([f.read_rows(role, scales, 0, f.num(role)) for f, role in sources])
        model = PCA(n_components=dim, whiten=whiten, svd_solver="full").fit(data)
        fitted = model.mean_, model.components_, model.explained_variance_
        method = "exact (scikit-learn PCA, full SVD)"
    elif in_dim * in_dim * 8 <= memory_bytes:
        fitted = _streamed_covariance_pca(scales, dim, sources, block_rows)
        method = (f"exact, streamed (covariance of {rows} rows accumulated in blocks of "
                  f"{block_rows}, scipy eigh)")
    else:
        batch = max(block_rows, dim)
        model = IncrementalPCA(n_components=dim, whiten=whiten, batch_size=batch)
        for f, role in sources:
            n = f.num(role)
            for start in range(0, n, batch):
                stop = min(n, start + batch)
                if stop - start < dim:  # IncrementalPCA needs >= n_components rows per batch
                    start = max(0, stop - dim)
                model.partial_fit(f.read_rows(role, scales, start, stop))
        fitted = model.mean_, model.components_, model.explained_variance_
        method = f"incremental (scikit-learn IncrementalPCA, batches of {batch} rows)"
    mean, components, variance = (a.astype(np.float32) for a in fitted)
    return PCAParams(
        mean=mean, components=components, explained_variance=variance, whiten=whiten,
        fitted_on=", ".join(f"{f.path.name}:{r}" for f, r in sources), rows=rows,
        method=method)


def _streamed_covariance_pca(scales, dim: int, sources: list[tuple[DescriptorFile, str]],
                             block_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact PCA of any number of rows in memory independent of them: the covariance is
    accumulated block by block (a D x D float64 sum of float32 block products, 3 GiB at
    D = 16384), then its top ``dim`` eigenvectors are taken. Rows are shifted by the first
    block's mean before the products (no cancellation when the mean is large). Signs as
    scikit-learn's (largest absolute entry of each component positive). Returns the mean, the
    components (dim x D) and their variances."""
    from scipy.linalg import eigh

    in_dim = sources[0][0].dim
    shift = None
    total = np.zeros(in_dim, dtype=np.float64)
    gram = np.zeros((in_dim, in_dim), dtype=np.float64)
    rows = 0
    for f, role in sources:
        for _, block in f.iter_blocks(role, scales, block_rows):
            if shift is None:
                shift = block.mean(axis=0, dtype=np.float64).astype(np.float32)
            block = block - shift
            total += block.sum(axis=0, dtype=np.float64)
            gram += block.T @ block
            rows += len(block)
    assert shift is not None  # set by the first block (there are rows: dim <= rows)
    centre = total / rows  # mean of the shifted rows
    gram -= rows * np.outer(centre, centre)
    gram /= max(rows - 1, 1)
    mean = centre + shift
    values, vectors = eigh(gram, subset_by_index=[in_dim - dim, in_dim - 1], overwrite_a=True)
    values, vectors = values[::-1].clip(min=0), vectors[:, ::-1].T
    signs = np.sign(vectors[np.arange(dim), np.abs(vectors).argmax(axis=1)])
    vectors *= np.where(signs == 0, 1, signs)[:, None]
    return mean, vectors, values


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
    progress: bool = True,
) -> Path:
    """Write the ensemble of ``inputs`` to ``output``; returns its path.

    ``scales``: one spec for every input (``"1+2+3"``) or one per input (None: the first scale).
    ``pca_fit``: ``database``, ``queries+database``, or descriptor files (one per input that PCA
    reduces, in input order) made by the same model, e.g. of the train split.

    For every image the ensemble row is the concatenation of the inputs' rows ``(N, D_i)`` at
    their scale or pyramid, each input wider than ``pca`` first reduced to ``(N, pca)``: the
    output has ``sum_i min(D_i, pca)`` dimensions (``sum_i D_i`` without ``pca``). The output is
    an ordinary descriptor file with one scale, ``1``, that records its inputs and the fitted PCA
    (``vprkit.combine.EnsembleTransform.from_file`` applies the same transform to new rows).

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
        progress: show progress bars and a summary line.

    Returns:
        The path of the ensemble file (``output``).

    Raises:
        VprkitError: too few inputs, ``output`` existing (without ``overwrite``) or being an
            input, inputs of different images, a shard as input, bad weights, ``pca`` larger
            than an input's dimensions or than the fitting rows, or a bad ``pca_fit``.
    """
    paths = [Path(p) for p in inputs]
    output = Path(output)
    if len(paths) < 2 and pca is None:
        raise VprkitError("combine needs at least two descriptor files (or one with --pca)")
    if output.exists() and not overwrite:
        raise VprkitError(f"{output} exists; pass --overwrite to replace it")
    if output.resolve() in [p.resolve() for p in paths]:
        raise VprkitError(f"output {output} is also an input")
    specs = _scale_specs(scales, len(paths))
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(paths) or not all(math.isfinite(w) and w > 0 for w in weights):
            raise VprkitError(f"--part-weights needs {len(paths)} positive numbers, one per input, "
                              f"got {','.join(f'{w:g}' for w in weights)}")
    if block_rows < 1:
        raise VprkitError(f"--block-rows must be at least 1, got {block_rows}")
    if pca is not None and pca < 1:
        raise VprkitError(f"--pca must be a positive number of dimensions, got {pca}")

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
            orders = {(i, role): _alignment(ref, st, role)
                      for i, st in enumerate(stores) for role in ROLES if i > 0}
            dims = [st.dim for st in stores]
            pcas = _fit_pcas(stores, spec_of, pca, pca_fit, whiten, block_rows, pca_memory_bytes,
                             extra, progress)
            info = [{"file": str(st.path.resolve()), "scale": spec_name(sp), "dim": st.dim,
                     "model": st.model, "dataset": st.dataset,
                     "pca": None if p is None else {"dim": pca, "whiten": whiten, "rows": p.rows,
                                                     "fitted_on": p.fitted_on, "method": p.method}}
                    for st, sp, p in zip(stores, spec_of, pcas, strict=True)]
            transform = EnsembleTransform(dims=dims, pcas=pcas, weights=weights, info=info)
            _write(stores, spec_of, orders, transform, out, block_rows, progress)
        finally:
            for st in stores + extra:
                st.close()
    if progress:
        console.print(styled("wrote", "green", f" {out.written}: {transform.output_dim} dims from "
                      + " + ".join(f"{Path(i['file']).name}[{i['scale']}]"
                                   + (f"->PCA {i['pca']['dim']}" if i["pca"] else "")
                                   for i in transform.info)))
    assert out.written is not None  # the block ended without error
    return out.written


def _fit_pcas(stores: list[DescriptorFile], spec_of, pca: int | None, pca_fit, whiten: bool,
              block_rows: int, memory_bytes: int, opened: list[DescriptorFile],
              progress: bool) -> list[PCAParams | None]:
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
                raise VprkitError(f"--pca-fit file {fit_store.path} was made by another model "
                                  f"than {st.path}")
            fit_store.check_spec(sp)
            sources = [(fit_store, r) for r in ("queries", "database")]
        if progress:
            console.print(f"fitting PCA {st.dim} -> {pca} on "
                          f"{', '.join(f'{f.path.name}:{r}' for f, r in sources)}")
        pcas.append(fit_pca(sp, pca, sources, whiten, block_rows, memory_bytes, str(st.path)))
    return pcas


def _scale_specs(scales, n: int) -> list[tuple[int, ...] | None]:
    if scales is None or isinstance(scales, str):
        return [parse_scale_spec(scales) if scales else None] * n
    scales = list(scales)
    if len(scales) == 1:
        return [parse_scale_spec(scales[0]) if scales[0] else None] * n
    if len(scales) != n:
        raise VprkitError(f"give one --scale for all inputs or one per input ({n}), "
                          f"not {len(scales)}")
    return [parse_scale_spec(s) if s else None for s in scales]


def _fit_files(pca_fit, needed: int) -> list[Path] | None:
    if isinstance(pca_fit, str) and pca_fit in PCA_FITS:
        return None
    files = [Path(pca_fit)] if isinstance(pca_fit, (str, Path)) else [Path(p) for p in pca_fit]
    if needed and len(files) != needed:
        raise VprkitError(f"{needed} input(s) are reduced by PCA but {len(files)} --pca-fit "
                          "file(s) were given (one per reduced input, in input order)")
    return files


def _write(stores, spec_of, orders, transform: EnsembleTransform, out: Output,
           block_rows: int, progress: bool) -> None:
    ref = stores[0]
    header = Header(
        model={"type": "ensemble", "inputs": [
            {k: v for k, v in inp.items() if k != "dataset"} for inp in transform.info],
            "weights": transform.weights, "output_dim": transform.output_dim},
        aggregation={"type": "ensemble"},
        dataset=ref.dataset,
        preprocessing={"inputs": [st.preprocessing for st in stores]},
        dtype="float32",
    )
    hashes = {r: ref.hashes(r) for r in ROLES}
    writer = out.create(header, names={r: ref.names(r) for r in ROLES},
                        utm={r: ref.utm(r) for r in ROLES},
                        hashes=None if any(h is None for h in hashes.values()) else hashes)
    writer.add_scale(1, transform.output_dim, {}, None)
    writer.write_combine_record({"inputs": transform.info, "weights": transform.weights},
                                [None if p is None else asdict(p) for p in transform.pcas])
    total = sum(ref.num(r) for r in ROLES)
    with progress_bar(progress) as bar:
        task = bar.add_task("combine", total=total, rate="")
        for role in ROLES:
            n = ref.num(role)
            for start in range(0, n, block_rows):
                stop = min(n, start + block_rows)
                parts = [_read(st, role, sp, start, stop, orders.get((i, role)))
                         for i, (st, sp) in enumerate(zip(stores, spec_of, strict=True))]
                writer.write(role, 1, start, transform.apply(parts), {})
                writer.commit_rows(role, [1], stop)
                bar.update(task, advance=stop - start)
