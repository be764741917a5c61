"""The ensemble transform that ``combine`` applies and stores: a PCA per input, optional part
weights, concatenation; and the PCA fit (exact in memory, exact streamed, or incremental)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vprkit.errors import ParameterError, VprkitError
from vprkit.store import DescriptorFile


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
                raise VprkitError(
                    f"input {i + 1} has {x.shape[1]} dimensions, the ensemble expects {self.dims[i]}"
                )
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
        return cls(
            dims=[inp["dim"] for inp in spec["inputs"]],
            pcas=pcas,
            weights=spec["weights"],
            info=spec["inputs"],
        )


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_pca(
    scales,
    dim: int,
    sources: list[tuple[DescriptorFile, str]],
    whiten: bool,
    block_rows: int,
    memory_bytes: int,
    label: str,
) -> PCAParams:
    """PCA of the rows of ``sources`` [(file, role)]: exact in memory when they fit in
    ``memory_bytes``, else exact by a streamed covariance when a D x D float64 matrix fits,
    else streamed with scikit-learn's IncrementalPCA."""
    from sklearn.decomposition import PCA, IncrementalPCA

    rows = sum(f.num(role) for f, role in sources)
    in_dim = sources[0][0].dim
    if dim > in_dim:
        raise ParameterError("pca", f"pca {dim} is larger than the {in_dim} dimensions of {label}")
    if dim > rows:
        raise ParameterError(
            "pca",
            f"pca {dim} is larger than the {rows} rows that fit it "
            f"({label}); choose a smaller pca or fit on more rows "
            "(pca_fit)",
            "pca_fit",
        )
    if rows * in_dim * 4 <= memory_bytes:
        data = np.concatenate([f.read_rows(role, scales, 0, f.num(role)) for f, role in sources])
        model = PCA(n_components=dim, whiten=whiten, svd_solver="full").fit(data)
        fitted = model.mean_, model.components_, model.explained_variance_
        method = "exact (scikit-learn PCA, full SVD)"
    elif in_dim * in_dim * 8 <= memory_bytes:
        fitted = _streamed_covariance_pca(scales, dim, sources, block_rows)
        method = (
            f"exact, streamed (covariance of {rows} rows accumulated in blocks of {block_rows}, scipy eigh)"
        )
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
        mean=mean,
        components=components,
        explained_variance=variance,
        whiten=whiten,
        fitted_on=", ".join(f"{f.path.name}:{r}" for f, r in sources),
        rows=rows,
        method=method,
    )


def _streamed_covariance_pca(
    scales, dim: int, sources: list[tuple[DescriptorFile, str]], block_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
