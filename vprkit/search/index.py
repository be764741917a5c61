"""Approximate nearest-neighbour indexes for serving (faiss factory strings), stored next to the
descriptor file they index.

``build_or_load(store, scales, "IVF1024,PQ32")`` returns a faiss index over the database rows of
one scale or pyramid. It is trained on up to ``train_rows`` database rows drawn at random, filled
block by block, and written as ``<file>.<spec>.<scale>.faiss`` with a JSON sidecar that ties it to
the descriptor file (its creation time, model fingerprint and row count); a later call with the
same file, scale and spec loads it instead of building it again. Results from such an index are
always labelled approximate.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import faiss
import numpy as np

from vprkit.errors import VprkitError
from vprkit.files import atomic_output, write_text
from vprkit.store import DescriptorFile, spec_name


def index_path(store: DescriptorFile, scales, spec: str) -> Path:
    """Where the index of ``spec`` over ``scales`` of ``store`` is kept: beside the file."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", spec)
    return store.path.with_name(f"{store.path.name}.{safe}.{spec_name(scales)}.faiss")


def _identity(store: DescriptorFile, scales, spec: str) -> dict:
    return {
        "descriptor_file": store.path.name,
        "created": str(store.created),
        "fingerprint": store.model.get("fingerprint"),
        "rows": store.num("database"),
        "scale": spec_name(scales),
        "factory": spec,
    }


def build_or_load(
    store: DescriptorFile, scales, spec: str, block_rows: int, train_rows: int = 100_000, seed: int = 0
) -> tuple[faiss.Index, bool]:
    """The index and whether it was loaded from disk (True) or built now (False)."""
    path = index_path(store, scales, spec)
    meta_path = path.with_name(path.name + ".json")
    identity = _identity(store, scales, spec)
    if path.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()) == identity:
                return faiss.read_index(str(path)), True
        except (OSError, json.JSONDecodeError, RuntimeError):
            pass  # stale or damaged: build again
    try:
        index = faiss.index_factory(store.dim, spec, faiss.METRIC_L2)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "invalid"
        raise VprkitError(f"bad faiss index string {spec!r}: {first}") from None
    n = store.num("database")
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(n, size=min(n, train_rows), replace=False))
        sample = store.read_index("database", scales, take)
        try:
            index.train(sample)
        except RuntimeError as err:
            last = str(err).strip().splitlines()[-1]
            raise VprkitError(f"cannot train {spec!r} on {len(sample)} rows: {last}") from None
        del sample
    for _, rows in store.iter_blocks("database", scales, block_rows):
        index.add(np.ascontiguousarray(rows, dtype=np.float32))
    try:
        with atomic_output(path, "wb") as handle:
            faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))  # type: ignore[attr-defined]
        write_text(meta_path, json.dumps(identity, indent=2) + "\n")
    except (VprkitError, OSError) as err:
        reason = str(err) if isinstance(err, VprkitError) else f"cannot write {path}: {err.strerror}"
        warnings.warn(
            f"the index was built but not stored ({reason}); it is built again next time", stacklevel=2
        )
    return index, False


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """nprobe for IVF indexes (ignored by others)."""
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except RuntimeError:
        pass


def faiss_has_gpu() -> bool:
    """Whether this faiss build has GPU support and sees a GPU (faiss-cpu: never)."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except (AttributeError, RuntimeError):
        return False


def on_device(index: faiss.Index, device, nprobe: int) -> tuple[faiss.Index, str]:
    """``index`` where searches with it should run, and where that is (``"CPU"``/``"GPU N"``).

    On a CUDA ``device`` (``"auto"`` with a GPU, ``"cuda"``, ``"cuda:N"``) a faiss build with GPU
    support gets a copy on that GPU (``index_cpu_to_gpu``, nprobe kept); without one, or for an
    index type faiss cannot put on a GPU, the CPU index is kept, with a warning where a GPU was
    asked for by name. ``device="cpu"`` keeps it on the CPU.
    """
    if str(device) == "cpu":
        return index, "CPU"
    from vprkit.search.exact import search_device

    dev = search_device(device)
    if dev == "cpu":
        return index, "CPU"
    gpu = dev.index or 0
    if not faiss_has_gpu():
        if str(device) != "auto":
            warnings.warn(
                "this faiss has no GPU support (faiss-cpu): the --index search runs "
                "on the CPU; install a faiss GPU build for it to run on the GPU "
                "(see the docs: guides/scale, 'Search and k-means on a GPU')",
                stacklevel=2,
            )
        return index, "CPU"
    try:
        resources = faiss.StandardGpuResources()
        moved = faiss.index_cpu_to_gpu(resources, gpu, index)
        moved.referenced_objects = [resources]  # type: ignore[attr-defined]  # kept alive with it
        try:
            faiss.GpuParameterSpace().set_index_parameter(moved, "nprobe", nprobe)
        except (AttributeError, RuntimeError):
            pass  # not an IVF index
    except (RuntimeError, AttributeError) as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        warnings.warn(
            f"faiss cannot put this index on GPU {gpu} ({last}): the --index search runs on the CPU",
            stacklevel=2,
        )
        return index, "CPU"
    return moved, f"GPU {gpu}"
