"""The configuration of a training run (``TrainConfig``, stored as RUN_DIR/config.json)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..choices import DEFAULT_RESIZE, L2_PLACEMENTS, RECIPES
from ..errors import VprkitError
from .augment import build_augmentation
from .mining import MINING

OPTIMIZERS = ("sgd", "adam", "adamw", "asgd")
SCHEDULERS = ("none", "plateau", "cosine")
# The defaults of --amp and --channels-last (the command line reads them from this source)
STEP_DEFAULTS = {"amp": False, "channels_last": True}
# fields added after the first runs: what a config.json without them ran with (TrainConfig.load)
RAN_BEFORE = {"amp": False, "channels_last": False}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored as RUN_DIR/config.json).

    Attributes:
        root: dataset root in the benchmark layout.
        backbone: backbone name, as ``ModelConfig.backbone``.
        aggregation: aggregation name, as ``ModelConfig.aggregation``.
        clusters: NetVLAD clusters (initialised by k-means on training images).
        l2: the benchmark's ``--l2`` placement, as ``ModelConfig.l2`` (None: ``before_pool``).
        fc_output_dim: the benchmark's ``--fc_output_dim``, as ``ModelConfig.fc_output_dim``.
        weights: backbone weights: ``"imagenet"``, ``"none"`` or a state-dict path.
        checkpoint: a benchmark or vprkit checkpoint to start from instead (its architecture).
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
            computation in another layout; faster on CPUs, see the README). Absent in runs made
            before it, which resume as they ran (False).
        recipe: the named recipe (``vprkit.train.recipes``) the run started from, or None; a
            record only: the fields above are what the run uses (a recipe's, unless
            overridden). Absent from the ``config.json`` of runs made before recipes.
    """

    root: str
    backbone: str = "resnet18conv4"
    aggregation: str = "gem"
    clusters: int = 64
    weights: str = "imagenet"
    checkpoint: str | None = None  # start from these weights instead
    l2: str | None = None  # before_pool (None) | after_pool | none
    fc_output_dim: int | None = None
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
    amp: bool = STEP_DEFAULTS["amp"]
    channels_last: bool = STEP_DEFAULTS["channels_last"]
    recipe: str | None = None

    def check(self) -> None:
        for name, value, allowed in (("mining", self.mining, MINING),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("scheduler", self.scheduler, SCHEDULERS)):
            if value not in allowed:
                raise VprkitError(f"unknown --{name} {value!r}; choose one of {', '.join(allowed)}")
        for name in ("negatives", "neg_samples", "queries_per_epoch", "cache_refresh", "batch_size",
                     "epochs", "patience", "infer_batch_size"):
            if getattr(self, name) < 1:
                raise VprkitError(f"--{name.replace('_', '-')} must be at least 1")
        if not (math.isfinite(self.lr) and math.isfinite(self.weight_decay)
                and math.isfinite(self.margin)) \
                or self.lr <= 0 or self.weight_decay < 0 or self.margin <= 0:
            raise VprkitError("--lr and --margin must be positive, --weight-decay not negative "
                              f"(got {self.lr}, {self.margin}, {self.weight_decay})")
        if self.workers < 0 or self.seed < 0 or self.clusters < 1:
            raise VprkitError("--workers and --seed must not be negative, --clusters at least 1")
        if self.l2 is not None and self.l2 not in L2_PLACEMENTS:
            raise VprkitError(f"unknown --l2 {self.l2!r}; choose one of {', '.join(L2_PLACEMENTS)}")
        if self.fc_output_dim is not None and self.fc_output_dim < 1:
            raise VprkitError(f"--fc-output-dim must be at least 1, got {self.fc_output_dim}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 1):
            raise VprkitError(f"bad --resize {self.resize}: height and width must be positive")
        if not self.recalls or min(self.recalls) < 1:
            raise VprkitError(f"bad recalls {self.recalls}: expected integers >= 1")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise VprkitError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        build_augmentation(self.augment)  # refuses unknown presets

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """The config of a run folder; one clear line where it is missing or damaged."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
            for key in ("resize", "recalls"):
                if data.get(key) is not None:
                    data[key] = tuple(data[key])
            for key, value in RAN_BEFORE.items():
                data.setdefault(key, value)
            config = cls(**data)
            if not isinstance(config.root, str):
                raise ValueError("'root' is not a path")
        except FileNotFoundError:
            raise VprkitError(f"{path} does not exist: not a run folder") from None
        except (OSError, ValueError, TypeError) as err:  # JSONDecodeError, unknown or missing keys
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise VprkitError(f"{path} is damaged ({detail}); it cannot be resumed") from None
        return config
