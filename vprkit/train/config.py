"""The configuration of a training run (``TrainConfig``, stored as RUN_DIR/config.json), and the
checks of its every field (the same for a command line's, a Python caller's and a stored one).

The network is a nested ``ModelConfig`` (``TrainConfig.model``, stored as ``"model"``); the
config.json of the previous release held its fields flat (``backbone``, ``aggregation``,
``clusters``, ...), and ``TrainConfig.load`` reads that form too, into the nested one."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeGuard

import numpy as np

from vprkit.choices import AGGREGATIONS, AUGMENT_PRESETS, BACKBONES, DEFAULT_RESIZE, L2_PLACEMENTS, RECIPES
from vprkit.errors import ParameterError, VprkitError, shown
from vprkit.inputs import read_bytes
from vprkit.models import ModelConfig, check_sizes
from vprkit.store.checks import MAX_SIDE, Where, is_int
from vprkit.train.mining import MINING

OPTIMIZERS = ("sgd", "adam", "adamw", "asgd")
SCHEDULERS = ("none", "plateau", "cosine")
# fields added after the first runs: what a config.json without them ran with (TrainConfig.load)
RAN_BEFORE = {"amp": False, "channels_last": False}
# "format" of the config.json that vprkit writes (absent from those of earlier versions)
FORMAT = "vprkit.train"
# the fields of ModelConfig that the config.json of the previous release held flat (now "model")
MODEL_FIELDS = ("backbone", "aggregation", "clusters", "weights", "checkpoint", "l2", "fc_output_dim")
# the keys of every config.json vprkit wrote (the other fields came later: l2, fc_output_dim,
# recipe, amp, channels_last); the model's are "model" in the nested form
FIRST_KEYS = ("root", "backbone", "aggregation", "clusters", "weights", "checkpoint", "resize",
              "train_split", "val_split", "mining", "negatives", "neg_samples", "margin",
              "queries_per_epoch", "cache_refresh", "batch_size", "infer_batch_size", "epochs",
              "patience", "optimizer", "lr", "weight_decay", "scheduler", "augment", "recalls",
              "seed", "workers", "device")
MAX_CONFIG_BYTES = 1 << 20  # a vprkit config.json is about 1 kB
MAX_WORKERS = 1024  # image-decoding processes


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored as RUN_DIR/config.json).

    Attributes:
        root: dataset root in the benchmark layout.
        model: the network to train (``ModelConfig``: backbone, aggregation and their options,
            initial ``weights``, or a ``checkpoint`` to start from; not a zoo ``model``). An
            untrained NetVLAD's clusters are initialised by k-means on training images.
        resize: ``(H, W)`` of training and validation images; None keeps their own size.
        train_split: split the triplets are mined from.
        val_split: split validated on after every epoch.
        mining: ``"partial"`` (``neg_samples`` database images per refresh), ``"full"`` or
            ``"random"``.
        negatives: hard negatives per query (each triplet group is 2 + ``negatives`` images).
        neg_samples: database images sampled per cache refresh by partial mining.
        margin: triplet margin loss margin.
        queries_per_epoch: training queries per epoch.
        cache_refresh: queries mined at a time with the current model.
        batch_size: triplet groups per optimisation step (all processes together).
        infer_batch_size: images per batch when computing cache and validation descriptors.
        epochs: at most this many epochs.
        patience: stop after this many epochs without a better validation R@5.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"`` or ``"asgd"``.
        lr: learning rate.
        weight_decay: weight decay.
        scheduler: ``"none"``, ``"plateau"`` or ``"cosine"``.
        augment: augmentation presets for training queries (``"night:M1"`` ... ``"occlusion:M6"``).
        recalls: the N of the validation Recall@N.
        seed: seed of the weights, the mining and the augmentation.
        workers: image-decoding processes.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: automatic mixed precision for the training steps (``torch.autocast``: bfloat16 on
            a CPU, float16 with a gradient scaler on CUDA); the caches and validation stay
            float32. Absent (False) in runs made before it.
        channels_last: channels-last memory format for the network and its inputs (the same
            computation in another layout; faster on CPUs, see the training guide). Absent in runs made
            before it, which resume as they ran (False).
        recipe: the named recipe (``vprkit.train.recipes``) the run started from, or None; a
            record only: the fields above are what the run uses (a recipe's, unless
            overridden). Absent from the ``config.json`` of runs made before recipes.
    """

    root: str
    model: ModelConfig = field(default_factory=ModelConfig)
    resize: tuple[int, int] | None = DEFAULT_RESIZE  # (H, W); None: native size
    train_split: str = "train"
    val_split: str = "val"
    mining: str = "partial"
    negatives: int = 10
    neg_samples: int = 1000
    margin: float = 0.1
    queries_per_epoch: int = 5000
    cache_refresh: int = 1000
    batch_size: int = 4
    infer_batch_size: int = 16
    epochs: int = 5
    patience: int = 3
    optimizer: str = "adam"
    lr: float = 1e-5
    weight_decay: float = 0.0
    scheduler: str = "none"
    augment: list[str] = field(default_factory=list)
    recalls: tuple[int, ...] = (1, 5, 10, 20)
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    recipe: str | None = None

    def check(self, source: Path | None = None) -> None:
        """Refuse a field of the wrong type or value (``bool`` is not an integer) in one line:
        a ``ParameterError`` naming the field (``batch_size must be at least 1, got 0``; the CLI
        shows ``--batch-size``), or with ``source``, the config.json it was read from and the
        key (``RUN/config.json: 'batch_size' is 0; expected an integer >= 1``)."""
        for item in fields(self):
            value = getattr(self, item.name)
            ok, expected = RULES[item.name]
            if ok(value):
                continue
            if source is not None:
                raise VprkitError(f"{source}: {item.name!r} is {shown_value(value)}; "
                                  f"expected {expected}")
            raise _refused(item.name, value, expected)
        _check_model(self, source)

    def to_dict(self) -> dict:
        """The fields as JSON values (``"model"``: ``ModelConfig.to_dict()``), marked
        ``"format": "vprkit.train"``: config.json, and the ``train_config`` of checkpoints."""
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        for key in ("resize", "recalls", "augment"):
            if data[key] is not None:
                data[key] = list(data[key])
        return {"format": FORMAT, **data, "model": self.model.to_dict()}

    def to_json(self) -> str:
        """The text of RUN_DIR/config.json (``to_dict``)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """The config of a run folder, every key and value checked (``check``); one clear line
        naming the file (and the key) where it is missing, damaged or not vprkit's."""
        data = _read_json(path)

        def damaged(detail: str) -> VprkitError:
            return VprkitError(f"{path} is damaged ({detail}); it cannot be resumed")

        if not isinstance(data, dict):
            raise damaged(f"a JSON {_json_type(data)}, not an object")
        if "format" in data and data["format"] != FORMAT:
            raise VprkitError(f"{path}: 'format' is {shown_value(data['format'])}; expected "
                              f"{json.dumps(FORMAT)} (a config.json of vprkit train)")
        # the nested form, or the previous release's: the model's fields flat
        nested = "model" in data or not any(key in data for key in MODEL_FIELDS)
        known = {item.name for item in fields(cls)} | (set() if nested else set(MODEL_FIELDS))
        unknown = [key for key in data if key not in known and key != "format"]
        if unknown:
            raise damaged(f"unknown key {shown(repr(unknown[0]), 60)}")
        required = ([k for k in FIRST_KEYS if k not in MODEL_FIELDS] + ["model"] if nested
                    else list(FIRST_KEYS))
        missing = [key for key in required if key not in data]
        if missing:
            raise damaged(f"no {missing[0]!r} key")
        values = {key: value for key, value in data.items() if key != "format"}
        record = values.pop("model") if nested else {k: values.pop(k) for k in MODEL_FIELDS
                                                       if k in values}
        for key in ("resize", "recalls"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        model = _stored_model(record, path, "model" if nested else "")
        config = cls(**{**RAN_BEFORE, **values, "model": model})
        config.check(path)
        return config


def _read_json(path: Path) -> object:
    """The JSON value of a config.json (a regular file of at most ``MAX_CONFIG_BYTES``, read by
    ``vprkit.inputs``); one line otherwise."""
    if not os.path.lexists(path):
        raise VprkitError(f"{path} does not exist: not a run folder")
    raw = read_bytes(path, "run config", MAX_CONFIG_BYTES)
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VprkitError(f"{path} is damaged ({shown(detail, 120)}); it cannot be resumed") from None


def _json_type(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def shown_value(value: object) -> str:
    """A stored value as a message shows it: short, printable, JSON-like (``0``, ``"x"``,
    ``NaN``, ``[32, 40]``), or what it is (``a dict of 3 keys``, ``a torch.float32 tensor of
    shape (3,)``)."""
    if value is None or isinstance(value, (str, int, float, bool, np.integer, np.floating)):
        if isinstance(value, (np.integer, np.floating)):
            value = value.item()
        try:
            return shown(json.dumps(value), 40)
        except ValueError:  # an integer of more than 4300 digits
            return "an integer of thousands of digits"
    if isinstance(value, (list, tuple)):
        if len(value) <= 4 and all(v is None or isinstance(v, (str, int, float)) for v in value):
            return shown("[" + ", ".join(shown_value(v) for v in value) + "]", 60)
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"a dict of {len(value)} keys"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"a {dtype} {type(value).__name__.lower()} of shape {tuple(shape)}"
    return f"a {type(value).__name__}"


def is_number(value: object) -> TypeGuard[float]:
    """A real number, not a bool (numpy numbers included)."""
    return is_int(value) or isinstance(value, (float, np.floating))


def _name(value: object) -> bool:
    """A non-empty one-line string (a path, a name)."""
    return isinstance(value, str) and value != "" and "\x00" not in value


def _split_name(value: object) -> bool:
    """A folder name of ROOT/images: no separator, not ``.`` or ``..``."""
    return _name(value) and not re.search(r"[/\\]", str(value)) and value not in (".", "..")


Rule = tuple[Callable[[object], bool], str]


def _int_rule(low: int, high: int | None = None) -> Rule:
    text = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    return (lambda v: is_int(v) and low <= v and (high is None or v <= high)), text


def _choice_rule(allowed: tuple[str, ...], optional: bool = False) -> Rule:
    return ((lambda v: (optional and v is None) or (isinstance(v, str) and v in allowed)),
            ("null or " if optional else "") + f"one of {', '.join(allowed)}")


def _number_rule(positive: bool) -> Rule:
    return ((lambda v: is_number(v) and math.isfinite(v) and (v > 0 if positive else v >= 0)),
            f"a finite number {'>' if positive else '>='} 0")


_COUNTS = ("clusters", "negatives", "neg_samples", "queries_per_epoch", "cache_refresh",
           "batch_size", "infer_batch_size", "epochs", "patience")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,4})?")
# the fields of the model (TrainConfig.model) that a training run takes: what a value must be
MODEL_RULES: dict[str, Rule] = {
    "backbone": _choice_rule(BACKBONES),
    "aggregation": _choice_rule(AGGREGATIONS),
    "clusters": _int_rule(1),
    "weights": (_name, "imagenet, none or the path of a state dict"),
    "checkpoint": (lambda v: v is None or _name(v), "null or the path of a checkpoint"),
    "l2": _choice_rule(L2_PLACEMENTS, optional=True),
    "fc_output_dim": (lambda v: v is None or (is_int(v) and v >= 1), "null or an integer >= 1"),
}
# every field of TrainConfig: what a value must be, and how a message says it
RULES: dict[str, Rule] = {
    "root": (_name, "the path of a dataset (a non-empty string)"),
    "model": (lambda v: isinstance(v, ModelConfig), "a ModelConfig"),
    **{name: _int_rule(1) for name in _COUNTS if name != "clusters"},
    "resize": (lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == 2
                                       and all(is_int(x) and 1 <= x <= MAX_SIDE for x in v)),
               f"null or [height, width], integers from 1 to {MAX_SIDE}"),
    "train_split": (_split_name, "the name of a split (a folder of ROOT/images)"),
    "val_split": (_split_name, "the name of a split (a folder of ROOT/images)"),
    "mining": _choice_rule(MINING),
    "margin": _number_rule(positive=True),
    "optimizer": _choice_rule(OPTIMIZERS),
    "lr": _number_rule(positive=True),
    "weight_decay": _number_rule(positive=False),
    "scheduler": _choice_rule(SCHEDULERS),
    "augment": (lambda v: isinstance(v, (list, tuple))
                and all(isinstance(x, str) and x in AUGMENT_PRESETS for x in v),
                f"a list of augmentation presets ({', '.join(AUGMENT_PRESETS)})"),
    "recalls": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                and all(is_int(x) and x >= 1 for x in v), "a non-empty list of integers >= 1"),
    "seed": _int_rule(0, 2**64 - 1),  # what torch.manual_seed takes
    "workers": _int_rule(0, MAX_WORKERS),
    "device": (lambda v: isinstance(v, str) and DEVICE.fullmatch(v) is not None,
               "auto, cpu, cuda or cuda:N"),
    "amp": (lambda v: isinstance(v, bool), "true or false"),
    "channels_last": (lambda v: isinstance(v, bool), "true or false"),
    "recipe": _choice_rule(RECIPES, optional=True),
}


_TOGETHER = {"lr": ("margin", "weight_decay"), "margin": ("lr", "weight_decay"),
             "weight_decay": ("lr", "margin"), "workers": ("seed",), "seed": ("workers",)}


def _refused(name: str, value: object, expected: str) -> ParameterError:
    """The error of field ``name`` refused with ``value`` (the CLI shows its option)."""
    message = _option_message(name, value) or f"{name} is {shown_value(value)}; expected {expected}"
    return ParameterError(name, message, *_TOGETHER.get(name, ()))


def _option_message(name: str, value: object) -> str | None:
    """The wording of a refused value of the right type, where it has one."""
    if isinstance(value, str) and name in ("mining", "optimizer", "scheduler", "l2", "recipe"):
        allowed = {"mining": MINING, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS,
                   "l2": L2_PLACEMENTS, "recipe": RECIPES}[name]
        return f"unknown {name} {shown(repr(value), 60)}; choose one of {', '.join(allowed)}"
    if name == "augment" and isinstance(value, (list, tuple)):
        bad = next((x for x in value if x not in AUGMENT_PRESETS), None)
        if isinstance(bad, str):
            return (f"unknown augmentation {shown(repr(bad), 60)}; choose from "
                    f"{', '.join(AUGMENT_PRESETS)}")
    if is_int(value) and (name in _COUNTS or name == "fc_output_dim") and value < 1:
        return f"{name} must be at least 1, got {value}"
    if is_number(value) and name in ("lr", "margin", "weight_decay"):
        return "lr and margin must be positive, weight_decay not negative " \
               f"(got {shown_value(value)} for {name})"
    if is_int(value) and name in ("workers", "seed") and value < 0:
        return f"workers and seed must not be negative (got {value} for {name})"
    if name == "resize" and isinstance(value, (list, tuple)) and len(value) == 2 \
            and all(is_int(x) for x in value) and min(value) < 1:
        return f"bad resize {tuple(value)}: height and width must be positive"
    return None


def _stored_model(record: object, path: Path, key: str) -> ModelConfig:
    """The ``ModelConfig`` of a config.json: its ``"model"`` (``key``), or the model's fields of
    the previous release's flat form (``key`` empty); every value checked as a training run takes
    it (``MODEL_RULES``), then as vprkit.models reads a recorded model config
    (``ModelConfig.from_dict``: registered names, their declared options, layers of the sizes
    vprkit builds; no zoo model)."""
    if isinstance(record, dict):
        for name, (ok, expected) in MODEL_RULES.items():
            if name in record and not ok(record[name]):
                where = f"{key}.{name}" if key else name
                raise VprkitError(f"{path}: {where!r} is {shown_value(record[name])}; "
                                  f"expected {expected}")
    return ModelConfig.from_dict(record, where=Where(str(path), "key", key), zoo=False)


def _check_model(config: TrainConfig, source: Path | None) -> None:
    """The model as vprkit.models checks it: a stored config was checked when read
    (``_stored_model``); a given one as a network is built (``--l2`` where it applies, layers of
    the sizes vprkit builds), each field of ``MODEL_RULES`` first with the option's wording."""
    if source is not None:
        return
    model = config.model
    if model.model is not None:
        raise VprkitError(f"model {model.model} is a whole network of the zoo: vprkit trains a "
                          "backbone and an aggregation")
    for name, (ok, expected) in MODEL_RULES.items():
        value = getattr(model, name)
        if not ok(value):
            raise _refused(name, value, expected)
    model.aggregation_settings()  # --l2 where it applies, the options each component declares
    model.backbone_settings()
    check_sizes(model)  # layers of the sizes vprkit builds (on the meta device: no memory)
