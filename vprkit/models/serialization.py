"""Reading and writing torch files (checkpoints, weights, run states) without running code.

``load_safely`` is the only way vprkit reads a ``.pth`` file: ``torch.load(weights_only=True)``,
which unpickles tensors, numbers, strings and containers and refuses every other Python object,
so a crafted file cannot run code. The one addition is numpy arrays and scalars (the benchmark's
checkpoints store their recalls as a numpy array): only numpy's array and scalar reconstruction is
allowed, and what an array holds goes through the same restricted unpickler. There is no fallback
to ``weights_only=False``.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vprkit.errors import VprkitError
from vprkit.files import atomic_output

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _numpy_globals() -> list:
    """numpy's array and scalar reconstruction, under the names that numpy 1 and 2 pickle."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover  (numpy 1)
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        allowed += [(function, f"numpy.core.multiarray.{name}"), (function, f"numpy._core.multiarray.{name}")]
    allowed += sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUO"}, key=str)
    return allowed


def load_safely(path: str | Path, what: str = "checkpoint") -> Any:
    """The contents of a torch file, read without running any code from it; one clear error
    (naming the file) where it is missing, empty, damaged or holds other Python objects."""
    path = Path(path)
    if not path.is_file():
        raise VprkitError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise VprkitError(f"{what} {path} is empty (an interrupted copy or save?)")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _refused_globals(path, err)
        if not found:
            raise VprkitError(
                f"cannot read {what} {path}: {_first_line(err)} (damaged or not a torch file?)"
            ) from None
        names = f"{', '.join(found[:3])}{', ...' if len(found) > 3 else ''}"
        raise VprkitError(
            f"{what} {path} holds Python objects ({names}) that vprkit does not load: only tensors, "
            "numbers, strings, numpy arrays and containers are read, since anything else can "
            "run code from the file (to convert a file you trust, see the docs' guide "
            "'Benchmark datasets', 'Checkpoints')"
        ) from None
    except Exception as err:
        raise VprkitError(
            f"cannot read {what} {path}: {_first_line(err)} (damaged or not a torch file?)"
        ) from None


def _first_line(err: BaseException) -> str:
    text = _ANSI.sub("", str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _refused_globals(path: Path, err: BaseException) -> list[str]:
    """The Python globals that the safe loader refused (none where the file is damaged)."""
    text = _ANSI.sub("", str(err))
    if "Weights only load failed" not in text:
        return []
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: the names are in the error
        found = []
    found = found or re.findall(r"Unsupported global: GLOBAL (\S+)", text)
    return sorted({name for name in found if not name.startswith("numpy.")})


def save_atomically(payload: Any, path: str | Path) -> Path:
    """``torch.save`` through a new temporary file renamed onto ``path`` (never half a file,
    never written through a link at ``path``)."""
    with atomic_output(path, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)
