"""Helpers shared by tests: hand-made descriptor files (written by ``vprkit.testing``), file
comparisons, an interrupted training. The oracles are in ``tests/reference/``."""

from pathlib import Path

import h5py
import numpy as np

from vprkit.testing import GEM, write_descriptor_file


def header(dtype="float32"):
    return {"model": {"backbone": "x"}, "aggregation": GEM, "dataset": {"split": "test"},
            "preprocessing": {"resize": None}, "dtype": dtype}


def write_file(path: Path, db: np.ndarray, q: np.ndarray, dtype="float32", complete=True) -> Path:
    """``db`` and ``q`` at scale 1 in the default layout of ``vprkit.testing`` (database row i
    at UTM (i, 0), query j at (j, 5)); ``complete=False``: the ``.partial`` path."""
    return write_descriptor_file(path, db, q, dtype=dtype, header=header(dtype), complete=complete)


def datasets_of(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Byte-identical arrays (string arrays compared by value)."""
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def interrupt_training_at(monkeypatch, call: int) -> None:
    """Make the trainer's ``call``-th batch of triplet steps raise KeyboardInterrupt (a Ctrl-C
    between cache refreshes)."""
    from vprkit.train import trainer

    real = trainer._train_groups
    calls = {"n": 0}

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(trainer, "_train_groups", interrupted)
