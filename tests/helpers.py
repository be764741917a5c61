"""Helpers shared by tests: hand-made descriptor files (written by ``vprkit.testing``), file
comparisons, an interrupted training, and `guarded` (an alarm and an address-space cap, so that a
hang or a read without end fails a test). The oracles are in ``tests/reference/``."""

import contextlib
import os
import resource
import signal
from pathlib import Path

import h5py
import numpy as np

from vprkit.testing import GEM, write_descriptor_file


def header(dtype="float32"):
    return {
        "model": {"backbone": "x"},
        "aggregation": GEM,
        "dataset": {"split": "test"},
        "preprocessing": {"resize": None},
        "dtype": dtype,
    }


def write_file(path: Path, db: np.ndarray, q: np.ndarray, dtype="float32", complete=True) -> Path:
    """``db`` and ``q`` at scale 1 in the default layout of ``vprkit.testing`` (database row i
    at UTM (i, 0), query j at (j, 5)); ``complete=False``: the ``.partial`` path."""
    return write_descriptor_file(path, db, q, dtype=dtype, header=header(dtype), complete=complete)


def datasets_of(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path) as f:
        f.visititems(
            lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
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


ALARM_S = 30  # far beyond what any guarded case takes (a few seconds)
MEMORY_HEADROOM = 1 << 30  # address space a case may add before a read without end fails


class Hung(Exception):
    """A case ran past ``ALARM_S`` (blocked opening or reading a FIFO)."""


@contextlib.contextmanager
def guarded():
    """An alarm (a blocked open or read raises ``Hung``) and a cap on the address space (a read
    without end raises MemoryError), both lifted after the block."""

    def ring(signum, frame):
        raise Hung(f"still running after {ALARM_S} s")

    with open("/proc/self/statm") as handle:
        used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(ALARM_S)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def flat_config(**fields):
    """A ``TrainConfig`` from flat fields: the model's (``vprkit.train.config.MODEL_FIELDS``:
    backbone, aggregation, clusters, weights ...) go to ``TrainConfig.model``."""
    from vprkit.models import ModelConfig
    from vprkit.train.config import MODEL_FIELDS, TrainConfig

    model = {k: fields.pop(k) for k in MODEL_FIELDS if k in fields}
    return TrainConfig(**fields, model=ModelConfig(**model))
