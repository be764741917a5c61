"""Checks of a run folder before vprkit trains in it.

On resume, every value of the run state ``last.pth`` (state dicts, RNG states, progress) and what
the stored config asks of the dataset, each refused in one line naming the file and the key
(``RUN/last.pth: 'state.epoch' is 1.5; expected an integer from 0 to 2 (the run's epochs)``).
For a new run, the files it would replace must be those of a vprkit run stopped before its first
checkpoint (``stale_files``): a file vprkit did not write is never deleted nor overwritten.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from vprkit.data.datasets import Split
from vprkit.errors import VprkitError, shown
from vprkit.store.checks import is_int
from vprkit.train.config import TrainConfig, is_number, shown_value
from vprkit.train.mining import TripletSource

# the keys of every last.pth
LAST_KEYS = ("model_state_dict", "optimizer_state_dict", "rng_numpy", "rng_torch", "state")
MISSING = object()  # a key that is absent
Fail = Callable[[str, object, str], NoReturn]


class Said(str):
    """A value's description, shown as it is (``'rng_torch' is not a state torch takes``)."""


def _failing(path: Path) -> Fail:
    def fail(key: str, value: object, expected: str) -> NoReturn:
        what = (
            "is missing"
            if value is MISSING
            else f"is {value}"
            if isinstance(value, Said)
            else f"is {shown_value(value)}"
        )
        raise VprkitError(f"{path}: {shown(repr(key), 100)} {what}; expected {expected}")

    return fail


def check_config_fits(config: TrainConfig, path: Path, source: TripletSource) -> None:
    """The sampling sizes of a stored config are within what the dataset has (``_adapted``
    clipped them so when the run started; mining refuses more negatives than images)."""
    n_q, n_db = len(source.queries), len(source.split.database)
    usable = f"the {config.train_split} queries of {source.split.root} with a database image within 10 m"
    fail = _failing(path)
    for key, most, what in (
        ("queries_per_epoch", n_q, usable),
        ("cache_refresh", min(n_q, config.queries_per_epoch), f"queries_per_epoch and {usable}"),
        ("neg_samples", n_db, f"the {config.train_split} database images of {source.split.root}"),
        ("negatives", n_db, f"the {config.train_split} database images of {source.split.root}"),
    ):
        if getattr(config, key) > most:
            fail(key, getattr(config, key), f"an integer from 1 to {most} ({what})")


def check_run_state(data: object, path: Path, config: TrainConfig, split: Split) -> dict:
    """``data`` read from ``last.pth``, every value checked against ``config`` and the training
    ``split`` (its neg_cache indexes the split's queries and database); returns it."""
    if not isinstance(data, dict):
        raise VprkitError(
            f"{path} is not a vprkit run state (it holds {shown_value(data)}); it cannot be resumed"
        )
    missing = [k for k in LAST_KEYS if k not in data]
    if missing:
        raise VprkitError(f"{path} is not a vprkit run state (no {', '.join(missing)}); it cannot be resumed")
    fail = _failing(path)
    _tensors(fail, "model_state_dict", data["model_state_dict"])
    _optimizer(fail, data["optimizer_state_dict"])
    for key in ("scheduler_state_dict", "scaler_state_dict"):
        value = data.get(key)
        if value is not None and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
            fail(key, value, "null or a dict of settings")
    _numpy_rng(fail, data["rng_numpy"])
    _torch_rng(fail, "rng_torch", data["rng_torch"])
    ranks = data.get("rng_torch_ranks")
    if ranks is not None:
        if not isinstance(ranks, (list, tuple)) or not ranks:
            fail("rng_torch_ranks", ranks, "null or a list of torch RNG states, one per process")
        for i, state in enumerate(ranks):
            _torch_rng(fail, f"rng_torch_ranks[{i}]", state)
    world = data.get("world_size", 1)
    if not (is_int(world) and 1 <= world <= 1 << 20):
        fail("world_size", world, "an integer >= 1 (the processes of the run)")
    _progress(fail, data["state"], config, split)
    return data


def _tensors(fail: Fail, key: str, value: object) -> None:
    if not isinstance(value, dict):
        fail(key, value, "a dict of names -> tensors (a state dict)")
    for name, tensor in value.items():
        if not isinstance(name, str):
            fail(key, name, "a dict keyed by parameter names")
        if not isinstance(tensor, torch.Tensor):
            fail(f"{key}.{name}", tensor, "a tensor")


def _finite(value: object) -> bool:
    return is_number(value) and math.isfinite(value)


def _setting(value: object) -> bool:
    """A value of an optimiser's parameter group: a finite number, a flag, null, or numbers."""
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return value is None or isinstance(value, bool) or _finite(value)


def _optimizer(fail: Fail, value: object) -> None:
    key = "optimizer_state_dict"
    if not (
        isinstance(value, dict)
        and isinstance(value.get("state"), dict)
        and isinstance(value.get("param_groups"), list)
        and value["param_groups"]
    ):
        fail(key, value, "a dict of 'state' and 'param_groups' (a torch optimizer's state)")
    for i, group in enumerate(value["param_groups"]):
        at = f"{key}.param_groups[{i}]"
        if not (
            isinstance(group, dict)
            and isinstance(group.get("params"), list)
            and all(is_int(p) for p in group["params"])
        ):
            fail(at, group, "a dict of the group's settings and its 'params' (integers)")
        for name, setting in group.items():
            if name != "params" and not _setting(setting):
                fail(f"{at}.{name}", setting, "a finite number, true, false, null or numbers")
        lr = group.get("lr", MISSING)
        if not (is_number(lr) and lr >= 0):
            fail(f"{at}.lr", lr, "a finite number >= 0")
    for index, entry in value["state"].items():
        at = f"{key}.state[{shown(index, 20)}]"
        if not is_int(index):
            fail(f"{key}.state", index, "a dict keyed by parameter indices (integers)")
        if not isinstance(entry, dict):
            fail(at, entry, "a dict of tensors and numbers")
        for name, item in entry.items():
            if not (isinstance(item, torch.Tensor) or _setting(item)):
                fail(f"{at}.{name}", item, "a tensor or a finite number")


def _numpy_rng(fail: Fail, value: object) -> None:
    key = "rng_numpy"
    if not (isinstance(value, dict) and isinstance(value.get("state"), dict)):
        fail(key, value, "the state of numpy's PCG64 generator (a dict)")
    if value.get("bit_generator") != "PCG64":
        fail(f"{key}.bit_generator", value.get("bit_generator", MISSING), '"PCG64"')
    for name in ("state", "inc"):
        number = value["state"].get(name, MISSING)
        if not (is_int(number) and 0 <= number < 1 << 128):
            fail(f"{key}.state.{name}", number, "an integer from 0 to 2**128 - 1")
    for name, most in (("has_uint32", 1), ("uinteger", (1 << 32) - 1)):
        number = value.get(name, MISSING)
        if not (is_int(number) and 0 <= number <= most):
            fail(f"{key}.{name}", number, f"an integer from 0 to {most}")


def _torch_rng(fail: Fail, key: str, value: object) -> None:
    current = torch.get_rng_state()
    expected = f"a torch.uint8 tensor of {current.numel()} bytes (a torch.get_rng_state())"
    if not (
        isinstance(value, torch.Tensor)
        and value.dtype == torch.uint8
        and value.dim() == 1
        and value.numel() == current.numel()
    ):
        fail(key, value, expected)
    try:  # torch checks the generator's own fields
        torch.set_rng_state(value)
    except (RuntimeError, ValueError):
        fail(key, Said("not a state that torch takes"), expected)
    finally:
        torch.set_rng_state(current)


def _progress(fail: Fail, state: object, config: TrainConfig, split: Split) -> None:
    """``state``: epoch, refresh, best_r5, not_improved, neg_cache and dataset."""
    if not isinstance(state, dict):
        fail("state", state, "a dict of the run's progress (epoch, refresh, best_r5, ...)")
    refreshes = math.ceil(config.queries_per_epoch / config.cache_refresh)
    for name, most, what in (
        ("epoch", config.epochs, " (the run's epochs)"),
        ("refresh", refreshes, " (the cache refreshes of an epoch)"),
        ("not_improved", None, ""),
    ):
        value = state.get(name, MISSING)
        if not (is_int(value) and 0 <= value and (most is None or value <= most)):
            fail(
                f"state.{name}",
                value,
                (f"an integer from 0 to {most}" if most is not None else "an integer >= 0") + what,
            )
    best = state.get("best_r5", MISSING)
    if not (_finite(best) and -1 <= best <= 100):
        fail(
            "state.best_r5",
            best,
            "a finite number from -1 to 100 (the best validation R@5 in %, -1 before the first)",
        )
    _neg_cache(fail, state.get("neg_cache", {}), len(split.queries), len(split.database))
    dataset = state.get("dataset")
    if dataset is not None and not (
        isinstance(dataset, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in dataset.items())
    ):
        fail("state.dataset", dataset, "null or a dict of the image lists' hashes")


def _neg_cache(fail: Fail, cache: object, n_queries: int, n_database: int) -> None:
    """Query index -> the database indices of its hard negatives (full mining)."""
    if not isinstance(cache, dict):
        fail("state.neg_cache", cache, "a dict of query index -> database indices")
    for query, negatives in cache.items():
        if not (is_int(query) and 0 <= query < n_queries):
            fail("state.neg_cache", query, f"query indices from 0 to {n_queries - 1} as keys")
        at = f"state.neg_cache[{query}]"
        array = negatives.numpy() if isinstance(negatives, torch.Tensor) else negatives
        if not (isinstance(array, np.ndarray) and array.ndim == 1 and array.dtype.kind in "iu"):
            fail(at, negatives, "database indices (a 1-D integer tensor)")
        if array.size and not (0 <= array.min() and array.max() < n_database):
            fail(at, negatives, f"database indices from 0 to {n_database - 1}")


def check_fits(data: dict, path: Path, optimizer, scheduler, scaler) -> None:
    """The stored optimiser, scheduler and gradient scaler states are those of the objects this
    run builds: the shapes of the optimiser's tensors, the kinds of every setting."""
    fail = _failing(path)
    fresh = optimizer.state_dict()
    stored = data["optimizer_state_dict"]
    shapes = {}
    if [len(g["params"]) for g in stored["param_groups"]] == [
        len(g["params"]) for g in fresh["param_groups"]
    ]:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        ids = [i for group in stored["param_groups"] for i in group["params"]]
        shapes = {i: p.shape for i, p in zip(ids, params, strict=True)}
        for i, (old, new) in enumerate(zip(stored["param_groups"], fresh["param_groups"], strict=True)):
            _same_kinds(fail, f"optimizer_state_dict.param_groups[{i}]", old, new, ("params",))
    for index, entry in stored["state"].items():
        for name, item in entry.items():
            if (
                isinstance(item, torch.Tensor)
                and item.dim() > 0
                and index in shapes
                and item.shape != shapes[index]
            ):
                fail(
                    f"optimizer_state_dict.state[{index}].{name}",
                    item,
                    f"a tensor of the parameter's shape {tuple(shapes[index])}",
                )
    for key, built in (("scheduler_state_dict", scheduler), ("scaler_state_dict", scaler)):
        if built is not None and data.get(key):
            _same_kinds(fail, key, data[key], built.state_dict(), (), strict=True)
            if key == "scheduler_state_dict":
                for name in STATIC_SCHEDULER_KEYS:
                    new = built.state_dict().get(name, MISSING)
                    if name in data[key] and new is not MISSING and data[key][name] != new:
                        fail(
                            f"{key}.{name}",
                            data[key][name],
                            f"{shown_value(new)}, as this run's config makes it",
                        )


# settings of a scheduler that its config fixes (the others change as it steps)
STATIC_SCHEDULER_KEYS = (
    "T_max",
    "eta_min",
    "base_lrs",
    "factor",
    "min_lrs",
    "default_min_lr",
    "patience",
    "cooldown",
    "eps",
    "mode",
    "mode_worse",
    "threshold",
    "threshold_mode",
)


def _kind(value: object) -> object:
    if isinstance(value, bool) or value is None:
        return "flag"  # torch's optional flags are None until set
    if is_number(value):
        return "number"
    if isinstance(value, (list, tuple)):
        return ("list", len(value), tuple(_kind(v) for v in value))
    return type(value).__name__


def _same_kinds(
    fail: Fail, key: str, stored: dict, fresh: dict, skip: tuple[str, ...], strict: bool = False
) -> None:
    """Every value of ``stored`` of the kind of the same key in ``fresh`` (a state dict this
    run builds); ``strict``: no key that ``fresh`` lacks (a scheduler loads every key as an
    attribute). Numbers are finite where ``fresh``'s are."""
    for name, value in stored.items():
        if name in skip:
            continue
        if name not in fresh:
            if strict and not (name == "verbose" and isinstance(value, bool)):  # older torch
                fail(f"{key}.{name}", value, f"none of this key (it holds {', '.join(fresh)})")
            continue
        new = fresh[name]
        if _kind(value) != _kind(new) or (_finite(new) and is_number(value) and not _finite(value)):
            fail(f"{key}.{name}", value, f"a value like {shown_value(new)}")
        if is_int(new) and is_int(value) and value < 0:
            fail(f"{key}.{name}", value, "an integer >= 0")


# ---------------------------------------------------------------- a new run in a used folder
# what a run stopped before its first checkpoint leaves, and what only a later run writes
STALE = ("config.json", "train.log", "metrics.jsonl")
LATER = ("best.pth", "curves.png")
LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S")  # RunLog.say's time stamp


def stale_files(run_dir: Path) -> list[Path]:
    """The files of a vprkit run stopped before its first checkpoint (no ``last.pth``) that a
    new run in ``run_dir`` replaces: links (removed, never followed) and files vprkit can prove
    it wrote. Any other file there is refused in one line, before anything is removed."""
    found = []
    for name in LATER:
        path = run_dir / name
        if path.exists() and not path.is_symlink():
            raise VprkitError(
                f"{run_dir} holds {name} without last.pth: not a vprkit run that "
                "can be started again; choose another output folder or remove it"
            )
    for name in STALE:
        path = run_dir / name
        if path.is_symlink():
            found.append(path)  # removed: its target is never read nor changed
        elif path.exists():
            if not (path.is_file() and _written_by_vprkit(path)):
                raise VprkitError(
                    f"{run_dir} holds {name} that vprkit did not write; choose "
                    "another output folder or remove it"
                )
            found.append(path)
    return found


def _written_by_vprkit(path: Path) -> bool:
    """config.json: a whole TrainConfig (its keys, every value checked); train.log: a first line
    stamped as RunLog writes it; metrics.jsonl: a first line that is a metric row."""
    if path.name == "config.json":
        try:
            TrainConfig.load(path)
        except VprkitError:
            return False
        return True
    try:
        with open(path, "rb") as handle:
            first = handle.read(1 << 16).split(b"\n", 1)[0]
    except OSError:
        return False
    if path.name == "train.log":
        return LOG_LINE.match(first) is not None
    try:
        row = json.loads(first)
    except (ValueError, RecursionError):
        return False
    return isinstance(row, dict) and is_int(row.get("epoch"))
