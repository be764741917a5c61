"""The limits on what a descriptor file or a checkpoint may record, and the checks of recorded
values that descriptor files (``vprkit.store.validate``) and stored model configs
(``vprkit.models.validation``) share.

A recorded value is checked once, where its file is opened: a value of the wrong type, out of
range, or of a size no image or layer may have gives one ``VprkitError`` line naming the file
and the key, e.g. ``gem.h5: header attribute 'model.clusters' is 'abc'; expected an integer
1..4096 (the file is damaged or was not written by vprkit)``. Importing this module loads
numpy, not torch nor h5py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn, TypeGuard

import numpy as np

from vprkit.choices import L2_PLACEMENTS
from vprkit.errors import VprkitError, shown

MAX_SIDE = 16384  # pixels: each side of an image size (resize, image_size, a checkpoint's resize)
MAX_CLUSTERS = 4096  # NetVLAD clusters
MAX_DIM = 1 << 20  # a descriptor's dimensions (output_dim, fc_output_dim, clusters x channels)
MAX_LAYER_WEIGHTS = 1 << 28  # weights of one layer rebuilt from a record (1 GiB of float32)
MAX_SHARDS = 1 << 16  # shards of one extraction
MAX_ROWS = 1 << 40  # images of a role (shard rows and totals, rows done)
MAX_INPUTS = 64  # inputs of an ensemble
MAX_DEPTH = 4  # ensembles of ensembles, nested at most this deep
PRECISIONS = ("float32", "float16", "bfloat16")  # inference precisions a file may record
DAMAGED = "the file is damaged or was not written by vprkit"
MISSING = object()  # a key that is absent
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Where:
    """A recorded value's place, for the error line ``{file}: {kind} '{key}' is ...``.

    Attributes:
        file: the file, as the line names it (``gem.h5``, ``checkpoint best.pth``).
        kind: what holds the value (``header attribute``, ``attribute``, ``stored``).
        key: the value's key (``model.clusters``, ``scales/1/image_size``).
        note: said in brackets at the end (None: nothing).
    """

    file: str
    kind: str
    key: str
    note: str | None = DAMAGED

    def at(self, key: str | int) -> Where:
        """The place of ``key`` inside this value (a list index for an int)."""
        if isinstance(key, int):
            return replace(self, key=f"{self.key}[{key}]")
        return replace(self, key=f"{self.key}.{key}" if self.key else key)

    def fail(self, value: object, expected: str) -> NoReturn:
        """Raise the one line saying that ``value`` (or ``MISSING``) is not ``expected``."""
        note = f" ({self.note})" if self.note else ""
        raise VprkitError(
            f"{self.file}: {self.kind} '{self.key}' is {describe(value)}; expected {expected}{note}"
        )


def describe(value: object) -> str:
    """``value`` as the error line shows it: its Python literal, made printable and cut."""
    if value is MISSING:
        return "missing"
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    return shown(repr(value), 60)


def get(data: Mapping, key: str) -> object:
    """``data[key]``, or ``MISSING``."""
    return data.get(key, MISSING)


def is_int(value: object) -> TypeGuard[int]:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(at: Where, value: object, low: int, high: int) -> int:
    """An integer (not a bool) in low..high."""
    if not is_int(value) or not low <= int(value) <= high:
        at.fail(value, f"an integer {low}..{high}")
    return int(value)


def number(at: Where, value: object, low: float, high: float, low_open: bool = False) -> float:
    """A finite number in [low, high] (``low_open``: (low, high])."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    x = float(value) if real else math.nan  # type: ignore[arg-type]
    if not math.isfinite(x) or not (low < x if low_open else low <= x) or not x <= high:
        at.fail(value, f"a number {'>' if low_open else '>='} {low:g} and <= {high:g}")
    return x


def boolean(at: Where, value: object) -> bool:
    """True or false (numpy's too)."""
    if not isinstance(value, (bool, np.bool_)):
        at.fail(value, "true or false")
    return bool(value)


def text(at: Where, value: object, optional: bool = False) -> str | None:
    """A string without NUL (a file name, a label); ``optional``: None too."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or "\x00" in value:
        at.fail(value, "a string without NUL" + (" or null" if optional else ""))
    return value


def one_of(at: Where, value: object, choices: tuple, optional: bool = False) -> object:
    """One of the strings ``choices`` (``optional``: None too)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or value not in choices:
        at.fail(value, f"one of {', '.join(map(str, choices))}" + (" or null" if optional else ""))
    return value


def mapping(at: Where, value: object, optional: bool = False) -> dict | None:
    """A dict (a JSON object; ``optional``: None too)."""
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        at.fail(value, "a JSON object" + (" or null" if optional else ""))
    return value


def items(at: Where, value: object, low: int, high: int) -> list:
    """A list of low..high items."""
    if not isinstance(value, (list, tuple)) or not low <= len(value) <= high:
        at.fail(value, f"a list of {low}..{high} items")
    return list(value)


def image_size(at: Where, value: object, optional: bool = True) -> tuple[int, int] | None:
    """``[H, W]`` of integers 1..``MAX_SIDE`` (``optional``: or null, each image's own size)."""
    if value is None and optional:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(is_int(v) and 1 <= int(v) <= MAX_SIDE for v in value)
    ):
        at.fail(value, f"[H, W] of integers 1..{MAX_SIDE}" + (" or null" if optional else ""))
    return int(value[0]), int(value[1])


def plain_name(at: Where, value: object) -> str:
    """One folder name: no ``/``, not ``.`` nor ``..``, no NUL (a split)."""
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\x00" in value:
        at.fail(value, "a folder name (no '/', not '.' or '..')")
    return value


def sha256_hex(at: Where, value: object) -> str:
    """A SHA-256 as 64 lowercase hexadecimal digits."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        at.fail(value, "64 hexadecimal digits (a SHA-256)")
    return value


def name_problem(name: str) -> str | None:
    """Why an image name read from a file would name a file outside its folder (it is empty,
    absolute, holds NUL or a ``..`` component), or None. ``.`` components are harmless."""
    if name and name[0] != "/" and ".." not in name and "\x00" not in name:
        return None  # (the quick test of every name)
    if not name:
        return "is empty"
    if "\x00" in name:
        return "holds a NUL character"
    if name.startswith("/"):
        return "is absolute"
    if ".." in name.split("/"):
        return "climbs out of its folder ('..')"
    return None


def model_record(model: object, at: Where, depth: int = 0) -> dict:
    """Check the types and ranges of the fields a model record (a descriptor file's ``model``,
    a checkpoint's ``model_config``) holds; absent fields are not required here (see
    ``vprkit.models.validate_model_config`` for a network to rebuild)."""
    model = mapping(at, model)
    assert model is not None
    kind = get(model, "type")
    if kind is not MISSING:
        one_of(at.at("type"), kind, ("ensemble",), optional=True)
    if kind == "ensemble":
        ensemble_record(model, at, depth)
        return model
    for key in ("backbone", "aggregation", "model", "fingerprint", "backbone_fingerprint"):
        if key in model:
            text(at.at(key), model[key], optional=key != "backbone" and key != "aggregation")
    for key in ("weights", "checkpoint"):
        if key in model:
            text(at.at(key), model[key], optional=key == "checkpoint")
    if "clusters" in model:
        integer(at.at("clusters"), model["clusters"], 1, MAX_CLUSTERS)
    if "l2" in model:
        one_of(at.at("l2"), model["l2"], L2_PLACEMENTS, optional=True)
    if model.get("fc_output_dim") is not None:
        integer(at.at("fc_output_dim"), model["fc_output_dim"], 1, MAX_DIM)
    if "output_dim" in model:
        integer(at.at("output_dim"), model["output_dim"], 1, MAX_DIM)
    if "netvlad_init" in model:
        mapping(at.at("netvlad_init"), model["netvlad_init"], optional=True)
    return model


def ensemble_record(model: dict, at: Where, depth: int, scales: bool = True) -> None:
    """Check an ensemble's ``inputs`` (dimension, scale, model, PCA of each) and ``weights``
    (an ensemble's ``model`` header, or with ``scales=False``, where an input's scale is
    optional, the spec of its ``/combine`` record)."""
    if depth >= MAX_DEPTH:
        at.fail("...", f"ensembles nested at most {MAX_DEPTH} deep")
    inputs = items(at.at("inputs"), get(model, "inputs"), 1, MAX_INPUTS)
    for i, inp in enumerate(inputs):
        where = at.at("inputs").at(i)
        inp = mapping(where, inp)
        assert inp is not None
        integer(where.at("dim"), get(inp, "dim"), 1, MAX_DIM)
        scale = get(inp, "scale")
        if (scales or scale is not MISSING) and not isinstance(scale, str) and not is_int(scale):
            where.at("scale").fail(scale, "a scale such as 1 or 1+2")
        if "model" in inp:
            model_record(inp["model"], where.at("model"), depth + 1)
        pca = mapping(where.at("pca"), inp.get("pca"), optional=True)
        if pca is not None:
            integer(where.at("pca").at("dim"), get(pca, "dim"), 1, MAX_DIM)
    weights(at.at("weights"), model.get("weights"), len(inputs))
    if "output_dim" in model:
        integer(at.at("output_dim"), model["output_dim"], 1, MAX_DIM)


def weights(at: Where, value: object, count: int) -> None:
    """An ensemble's weights: null, or ``count`` finite numbers."""
    if value is None:
        return
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in value
        )
    ):
        at.fail(value, f"null or a list of {count} finite numbers")


def refuse_shard(f: Any) -> None:
    """One clear error where a single shard is given as a database."""
    shard = f.dataset.get("shard")
    if shard:
        raise VprkitError(
            f"{f.path} is shard {shard['index']} of {shard['count']} of an extraction; "
            "join the shards first: vprkit merge SHARDS... -o FILE"
        )
