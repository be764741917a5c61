"""Helpers shared by tests: hand-made descriptor files."""

from pathlib import Path

import h5py
import numpy as np

from vprkit.store import DescriptorWriter, partial_path

GEM = {"type": "gem", "p": 3.0, "eps": 1e-6}


def header(dtype="float32"):
    return {"model": {"backbone": "x"}, "aggregation": GEM, "dataset": {"split": "test"},
            "preprocessing": {"resize": None}, "dtype": dtype}


def write_file(path: Path, db: np.ndarray, q: np.ndarray, dtype="float32", complete=True) -> Path:
    names = {"database": [f"@{i}@0@.jpg" for i in range(len(db))],
             "queries": [f"@{i}@5@.jpg" for i in range(len(q))]}
    utm = {"database": np.c_[np.arange(len(db)), np.zeros(len(db))],
           "queries": np.c_[np.arange(len(q)), np.full(len(q), 5.0)]}
    part = partial_path(path)
    w = DescriptorWriter.create(part, header(dtype), names, utm)
    w.add_scale(1, db.shape[1], {"count": ((), "int64")}, None)
    for role, rows in (("database", db), ("queries", q)):
        w.write(role, 1, 0, rows.astype(dtype), {"count": np.ones(len(rows), np.int64)})
        w.commit_rows(role, [1], len(rows))
    if complete:
        return w.finalize(path)
    w.close()
    return part


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
