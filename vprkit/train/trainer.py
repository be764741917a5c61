"""Pipeline step: triplet training of a place-recognition network (the benchmark's recipe).

``train(config, run_dir)`` trains and writes a run folder::

    RUN_DIR/config.json    the full configuration (a run can be reproduced or resumed from it)
    RUN_DIR/train.log      a text log
    RUN_DIR/metrics.jsonl  one JSON line per cache refresh (loss, lr, time) and per epoch
                           (validation Recall@N)
    RUN_DIR/last.pth       model + model config + optimizer, scheduler, RNG states, progress
    RUN_DIR/best.pth       the model with the best validation R@5 (``vprkit extract --checkpoint``)
    RUN_DIR/curves.png     loss per cache refresh and validation recalls per epoch

Each epoch has ``ceil(queries_per_epoch / cache_refresh)`` cache refreshes; at each refresh,
``cache_refresh`` random training queries are mined (``vprkit.train.mining``) with the current
model and trained on in batches of ``batch_size`` triplet groups with the triplet margin loss
(margin 0.1, summed over the negatives and averaged over the batch). ``last.pth`` is written after
every refresh, so a stopped run resumed with ``train(..., resume=True)`` loses at most one refresh
and continues exactly (same RNG states) where it stopped.

Several processes (``torchrun --nproc_per_node N -m vprkit.cli train ...``; ``WORLD_SIZE`` > 1):
one process per GPU (``cuda:LOCAL_RANK``, NCCL) or several CPU processes (gloo), see
``vprkit.train.distributed``. The model is wrapped in DistributedDataParallel; each step's global
batch is still ``batch_size`` triplet groups, split into contiguous shares (a process may get none
when a step has fewer groups than processes), each process's loss is its groups' share of the
global loss times the number of processes, so DDP's averaged gradient is the gradient of the
global batch, and BatchNorm normalises with the statistics of the whole batch (SyncBatchNorm on
GPUs, ``GlobalBatchNorm2d`` on CPUs). Cache descriptors and validation descriptors are computed
in whole ``infer_batch_size`` batches split among the processes and gathered; every process then
mines the same triplets from the same descriptors and RNG state (checked against process 0's).
Only process 0 writes the run folder and prints; checkpoints hold the unwrapped model's state dict
and the number of processes (``world_size``).

What is guaranteed: without ``--augment``, N processes train the weights of one process with the
same configuration, up to floating-point rounding (sums in another order; a near tie in mining
could then pick another negative; Adam turns rounding noise in gradient elements that are
themselves about 0 into steps of up to ~lr for those few weights). Augmentation draws its random
factors from each process's own torch RNG, so with ``--augment`` runs with different numbers of
processes differ. A run can be resumed with any number of processes, one included: model, optimizer,
scheduler, mining RNG and progress continue; the torch RNG of every process is stored, so a resume
with the same number of processes continues exactly, and with another number only augmentation
draws differ from an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..choices import DEFAULT_RESIZE
from ..datasets import EVAL_POSITIVE_RADIUS, Split, load_split
from ..errors import VprkitError
from ..evaluate import recall_at_n
from ..extract import ExtractOptions, compute_descriptors, resolve_device, sample_local_features
from ..files import open_append, output_lock, refuse_link, write_text
from ..images import load_image, normalize, resize
from ..models import ModelConfig, NetVLAD, VPRModel, build_model, save_checkpoint
from ..models.serialization import load_safely
from ..plotting import pyplot, save_figure
from ..progress import console, progress_bar
from ..search import exact_search
from .augment import build_augmentation
from .distributed import Processes
from .mining import MINING, TripletSource, mine

OPTIMIZERS = ("sgd", "adam", "adamw", "asgd")
SCHEDULERS = ("none", "plateau", "cosine")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored as RUN_DIR/config.json).

    Attributes:
        root: dataset root in the benchmark layout.
        backbone: backbone name, as ``ModelConfig.backbone``.
        aggregation: ``"gem"`` or ``"netvlad"``.
        clusters: NetVLAD clusters (initialised by k-means on training images).
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
    """

    root: str
    backbone: str = "resnet18conv4"
    aggregation: str = "gem"
    clusters: int = 64
    weights: str = "imagenet"
    checkpoint: str | None = None  # start from these weights instead
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
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 1):
            raise VprkitError(f"bad --resize {self.resize}: height and width must be positive")
        if not self.recalls or min(self.recalls) < 1:
            raise VprkitError(f"bad recalls {self.recalls}: expected integers >= 1")
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
            config = cls(**data)
            if not isinstance(config.root, str):
                raise ValueError("'root' is not a path")
        except FileNotFoundError:
            raise VprkitError(f"{path} does not exist: not a run folder") from None
        except (OSError, ValueError, TypeError) as err:  # JSONDecodeError, unknown or missing keys
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise VprkitError(f"{path} is damaged ({detail}); it cannot be resumed") from None
        return config


class TripletImages(Dataset):
    """Item i: the 2 + negatives images of triplet group i as one (2 + n, 3, H, W) tensor."""

    def __init__(self, source: TripletSource, groups: np.ndarray, size, augment):
        self.db = source.split.database.paths()
        self.q = source.split.queries.paths()
        self.groups = groups
        self.size = size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.groups)

    def _image(self, path: Path, augment=None) -> torch.Tensor:
        try:
            image = load_image(path)
        except Exception as err:
            raise VprkitError(f"cannot read image {path}: {err}") from None
        if self.size is not None:
            image = resize(image, self.size)
        if augment is not None:
            image = augment(image)
        return normalize(image)

    def __getitem__(self, i: int) -> torch.Tensor:
        q, pos, *negs = self.groups[i].tolist()
        images = [self._image(self.q[q], self.augment), self._image(self.db[pos])]
        images += [self._image(self.db[n]) for n in negs]
        try:
            return torch.stack(images)
        except RuntimeError:
            raise VprkitError("training images differ in size; give --resize H W") from None


def triplet_loss(features: torch.Tensor, groups: int, negatives: int, margin: float,
                 total_groups: int | None = None) -> torch.Tensor:
    """Triplet margin loss of ``groups`` blocks of (query, positive, negatives...) features,
    summed over negatives and divided by groups x negatives (the benchmark's normalisation);
    divided by ``total_groups`` x negatives instead when given (one process's share of the loss
    of a batch of ``total_groups`` groups)."""
    feats = features.view(groups, 2 + negatives, -1)
    q = feats[:, :1].expand(-1, negatives, -1).reshape(-1, feats.shape[-1])
    p = feats[:, 1:2].expand(-1, negatives, -1).reshape(-1, feats.shape[-1])
    n = feats[:, 2:].reshape(-1, feats.shape[-1])
    loss = torch.nn.functional.triplet_margin_loss(q, p, n, margin=margin, p=2, reduction="sum")
    return loss / ((groups if total_groups is None else total_groups) * negatives)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.ASGD(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer, config: TrainConfig, refreshes_per_epoch: int):
    """plateau: x0.1 when the refresh loss stops improving by 0.5% (patience 1); cosine: over all
    cache refreshes of the run."""
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=1,
                                                          threshold=0.005)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs * refreshes_per_epoch)
    return None


class RunLog:
    def __init__(self, run_dir: Path):
        self.log = run_dir / "train.log"
        self.metrics = run_dir / "metrics.jsonl"

    def say(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open_append(self.log) as f:
            f.write(f"{stamp} {text}\n")
        console.print(text)

    def metric(self, **row) -> None:
        with open_append(self.metrics) as f:
            f.write(json.dumps(row) + "\n")


def _drop_partial_line(path: Path) -> None:
    """A process killed while appending a line leaves half of it: cut it before appending more."""
    refuse_link(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


class _Silent:
    """The log of processes other than 0: they write and print nothing."""

    def say(self, text: str) -> None:
        pass

    def metric(self, **row) -> None:
        pass


def validate(model: VPRModel, split: Split, config: TrainConfig, device,
             procs: Processes | None = None) -> dict[int, float]:
    """Recall@N on the validation split (positives within 25 m); with several processes, each
    computes a share of the descriptors and every process gets process 0's recalls."""
    procs = procs or Processes()
    options = _inference_options(config)
    model.eval()
    db = _descriptors(model, split.database.paths(), options, device, procs, "val database",
                      to_all=False)
    q = _descriptors(model, split.queries.paths(), options, device, procs, "val queries",
                     to_all=False)

    def recalls() -> dict[int, float]:
        _, predictions = exact_search(q, db, min(max(config.recalls), len(db)))
        values = recall_at_n(predictions, split.positives(EVAL_POSITIVE_RADIUS), config.recalls)
        return {n: float(v) for n, v in zip(config.recalls, values, strict=True)}

    return procs.on_main(recalls)


def _descriptors(model: VPRModel, paths: list[Path], options: ExtractOptions, device,
                 procs: Processes, label: str, to_all: bool = True) -> np.ndarray | None:
    """compute_descriptors, split among the processes in whole batches and gathered (on every
    process, or on process 0 only when not ``to_all``)."""
    if procs.world == 1:
        return compute_descriptors(model, paths, options, device, label=label)
    start, stop = procs.batch_slice(len(paths), options.batch_size)
    local = procs.each(lambda: compute_descriptors(model, paths[start:stop], options, device,
                                                   label=label))
    return procs.gather_rows(local, len(paths), options.batch_size, to_all=to_all)


def _inference_options(config: TrainConfig) -> ExtractOptions:
    return ExtractOptions(resize=config.resize, batch_size=config.infer_batch_size,
                          workers=config.workers, device=config.device, seed=config.seed)


def _init_model(config: TrainConfig, source: TripletSource, device, log: RunLog,
                kmeans: bool = True) -> VPRModel:
    torch.manual_seed(config.seed)
    model = build_model(ModelConfig(backbone=config.backbone, aggregation=config.aggregation,
                                    clusters=config.clusters, weights=config.weights,
                                    checkpoint=config.checkpoint)).to(device)
    if kmeans and isinstance(model.aggregation, NetVLAD) and not config.checkpoint:
        paths = source.split.database.paths()
        options = _inference_options(config)
        log.say(f"NetVLAD: k-means on local features of {min(options.cluster_images, len(paths))} "
                f"{config.train_split} database images")
        model.eval()
        feats = sample_local_features(model, paths, options, device)
        model.aggregation.init_from_descriptors(feats, seed=config.seed)
    return model


def _adapted(config: TrainConfig, source: TripletSource, log: RunLog) -> TrainConfig:
    """Sampling sizes clipped to what the dataset has, with a note for each."""
    n_q, n_db = len(source.queries), len(source.split.database)
    changes = {}
    if config.queries_per_epoch > n_q:
        changes["queries_per_epoch"] = n_q
    if config.cache_refresh > min(n_q, changes.get("queries_per_epoch", config.queries_per_epoch)):
        changes["cache_refresh"] = min(n_q, changes.get("queries_per_epoch",
                                                        config.queries_per_epoch))
    if config.neg_samples > n_db:
        changes["neg_samples"] = n_db
    for key, value in changes.items():
        log.say(f"--{key.replace('_', '-')} {getattr(config, key)} is more than the dataset "
                f"allows: using {value}")
    return TrainConfig(**{**asdict(config), **changes})


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Train (or resume) a run; returns the path of ``best.pth``.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this with the same arguments; see the
    module docstring for what several processes compute and guarantee.

    Triplet training as in the benchmark: per epoch ``config.queries_per_epoch`` training
    queries, mined ``config.cache_refresh`` at a time with the current model, trained on in
    steps of ``config.batch_size`` triplet groups; validation Recall@N on ``config.val_split``
    after every epoch, ``best.pth`` kept by R@5, early stop after ``config.patience`` epochs
    without improvement. ``run_dir`` receives ``config.json``, ``train.log``, ``metrics.jsonl``,
    ``last.pth`` (after every cache refresh), ``best.pth`` and ``curves.png``.

    Args:
        config: the run's configuration (ignored with ``resume``: the run folder's
            ``config.json`` is used). Sampling sizes larger than the dataset are clipped.
        run_dir: the run folder, created if needed; it must not already hold a run unless
            ``resume``.
        resume: continue the run of ``run_dir`` from its ``last.pth`` (model, optimizer,
            scheduler, RNG states and progress), losing at most one cache refresh.
        progress: show progress bars and log lines on the terminal.

    Returns:
        The path of ``run_dir/best.pth``: the model with the best validation R@5 and its config
        (``extract_split(..., ModelConfig(checkpoint=str(path)))`` needs nothing else).

    Raises:
        VprkitError: a bad configuration, a dataset or image that cannot be read, a run folder
            that already holds a run (or, with ``resume``, holds none or a damaged one), or a
            run folder that another ``train`` is using.
    """
    procs = Processes.from_env()
    run_dir = Path(run_dir)
    try:
        with ExitStack() as stack:
            procs.on_main(lambda: stack.enter_context(_run_lock(run_dir, resume)))
            return _train(config, run_dir, resume, progress and procs.main, procs)
    finally:
        procs.close()


@contextmanager
def _run_lock(run_dir: Path, resume: bool) -> Iterator[None]:
    """Held by process 0 while it trains: a second ``train`` into the same folder is refused."""
    if not resume:
        refuse_link(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise VprkitError(f"{run_dir} has no last.pth to resume from (the folder does not exist)")
    with output_lock(run_dir / "train", what=f"the run folder {run_dir} (another vprkit train)"):
        yield


def _prepare_run_dir(config: TrainConfig | None, run_dir: Path, resume: bool) -> TrainConfig:
    config_path = run_dir / "config.json"
    if resume:
        if not (run_dir / "last.pth").is_file():
            raise VprkitError(f"{run_dir} has no last.pth to resume from")
        return TrainConfig.load(config_path)
    if (run_dir / "last.pth").exists():
        raise VprkitError(f"{run_dir} already holds a run; use --resume {run_dir} or "
                          "another --out")
    for stale in ("config.json", "train.log", "metrics.jsonl"):  # a run stopped before
        (run_dir / stale).unlink(missing_ok=True)                # its first checkpoint
    config.check()
    run_dir.mkdir(parents=True, exist_ok=True)
    return config


def _train(config: TrainConfig | None, run_dir: Path, resume: bool, progress: bool,
           procs: Processes) -> Path:
    config = procs.on_main(lambda: _prepare_run_dir(config, run_dir, resume))
    root = Path(config.root)
    device = procs.each(lambda: procs.pin(resolve_device(config.device)))
    log = RunLog(run_dir) if procs.main else _Silent()
    if resume and procs.main:
        for name in ("train.log", "metrics.jsonl"):
            _drop_partial_line(run_dir / name)

    def load():
        split = load_split(root, config.train_split)
        val_split = load_split(root, config.val_split)  # read once; fails now, not after an epoch
        return split, val_split, TripletSource.from_split(split)

    split, val_split, source = procs.each(load)
    if not resume:
        def adapt() -> TrainConfig:
            if source.dropped:
                log.say(f"{source.dropped} {config.train_split} queries have no database image "
                        "within 10 m and are not used")
            adapted = _adapted(config, source, log)
            write_text(run_dir / "config.json", json.dumps(asdict(adapted), indent=2) + "\n")
            return adapted

        config = procs.on_main(adapt)
    refreshes = math.ceil(config.queries_per_epoch / config.cache_refresh)

    # resume: weights from last.pth; several processes: the same init everywhere, and DDP
    # starts from process 0's weights anyway
    model = procs.each(lambda: _init_model(config, source, device, log, kmeans=not resume))
    if procs.world > 1:
        model = procs.synchronize_batchnorm(model, device)
        if procs.rank > 0:
            torch.manual_seed(_process_seed(config.seed, procs.rank))  # own augmentation draws
        per = config.batch_size / procs.world
        backend = "nccl" if device.type == "cuda" else "gloo"
        log.say(f"{procs.world} processes ({backend} on {device.type}): {config.batch_size} "
                f"triplet groups per step in all, {per:g} per process"
                + (" (some processes idle in every step: use a --batch-size of at least the "
                   "number of processes)" if per < 1 else ""))
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, refreshes)
    rng = np.random.default_rng(config.seed)
    state = {"epoch": 0, "refresh": 0, "best_r5": -1.0, "not_improved": 0, "neg_cache": {},
             "dataset": _dataset_identity(split, val_split)}
    if resume:
        data = procs.on_main(lambda: _read_last(run_dir / "last.pth", split, val_split))
        state = _restore(data, model, optimizer, scheduler, rng, procs, config.seed)
        saved = data.get("world_size", 1)
        log.say(f"resuming {run_dir} at epoch {state['epoch'] + 1}, refresh "
                f"{state['refresh'] + 1}" + (f" ({saved} process(es) before, {procs.world} now)"
                                             if saved != procs.world else ""))
    net = procs.wrap(model, device)  # the model itself for one process
    if not resume and config.epochs:
        recalls = validate(model, val_split, config, device, procs)
        log.say(f"untrained model: validation {_fmt(recalls)}")
        log.metric(epoch=0, val_recalls=recalls, time=time.time())

    augment = build_augmentation(config.augment)
    options = _inference_options(config)
    db_paths, q_paths = split.database.paths(), split.queries.paths()

    def features(db_idx, q_idx):
        return (_descriptors(model, [db_paths[i] for i in db_idx], options, device, procs,
                             "descriptors"),
                _descriptors(model, [q_paths[i] for i in q_idx], options, device, procs,
                             "descriptors"))

    while state["epoch"] < config.epochs:
        epoch = state["epoch"]
        while state["refresh"] < refreshes:
            r = state["refresh"]
            n_q = min(config.cache_refresh, config.queries_per_epoch - r * config.cache_refresh)
            query_ids = rng.choice(source.queries, size=n_q, replace=False)
            model.eval()
            groups = mine(source, query_ids, features, config.mining, config.negatives,
                          config.neg_samples, rng, state["neg_cache"])
            _check_same(groups, procs)
            loss = _train_groups(net, optimizer, source, groups, config, augment, device,
                                 progress, f"epoch {epoch + 1}/{config.epochs} refresh "
                                           f"{r + 1}/{refreshes}", procs=procs)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(loss)
            elif scheduler is not None:
                scheduler.step()
            lr = optimizer.param_groups[0]["lr"]
            log.metric(epoch=epoch + 1, refresh=r + 1, loss=loss, lr=lr, time=time.time())
            log.say(f"epoch {epoch + 1} refresh {r + 1}/{refreshes}: loss {loss:.4f}, lr {lr:.3g}")
            state["refresh"] = r + 1
            _save(run_dir / "last.pth", model, optimizer, scheduler, rng, state, config, procs)
        recalls = validate(model, val_split, config, device, procs)
        r5 = recalls.get(5, next(iter(recalls.values())))
        improved = r5 > state["best_r5"]
        state.update(epoch=epoch + 1, refresh=0)
        if improved:
            state.update(best_r5=r5, not_improved=0)
            _save(run_dir / "best.pth", model, optimizer, scheduler, rng, state, config, procs)
        else:
            state["not_improved"] += 1
        _save(run_dir / "last.pth", model, optimizer, scheduler, rng, state, config, procs)
        log.metric(epoch=epoch + 1, val_recalls=recalls, best=improved, time=time.time())
        log.say(f"epoch {epoch + 1}: validation {_fmt(recalls)}" + (" (best)" if improved else ""))
        if state["not_improved"] >= config.patience:
            log.say(f"no better validation R@5 for {config.patience} epochs: stopping early")
            break
    procs.on_main(lambda: plot_run(run_dir))
    return run_dir / "best.pth"


def _process_seed(seed: int, rank: int, *more: int) -> int:
    """Seed of the torch RNG of process ``rank`` > 0 (augmentation draws)."""
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1)[0])


def _check_same(groups: np.ndarray, procs: Processes) -> None:
    """Every process must train on the triplets of process 0."""
    if procs.world == 1:
        return
    reference = procs.broadcast(groups)
    error = None
    if not np.array_equal(reference, groups):
        error = VprkitError(f"process {procs.rank} mined other triplets than process 0 "
                            "(descriptors differ between processes)")
    procs.agree(error)


def _fmt(recalls: dict[int, float]) -> str:
    return ", ".join(f"R@{n} {v:.1f}" for n, v in recalls.items())


def _train_groups(model, optimizer, source, groups, config: TrainConfig, augment, device,
                  progress: bool, label: str, procs: Processes | None = None) -> float:
    """Train on the groups in steps of ``batch_size`` groups; the mean loss of the steps. With
    several processes ``model`` is the DDP-wrapped model and each process takes its share of
    every step."""
    procs = procs or Processes()
    dataset = TripletImages(source, groups, config.resize, augment)
    steps = [np.arange(start, min(start + config.batch_size, len(groups)))
             for start in range(0, len(groups), config.batch_size)]
    if procs.world == 1:
        loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers,
                            drop_last=False)
    else:
        loader = DataLoader(dataset, batch_sampler=[procs.share(s).tolist() for s in steps],
                            num_workers=config.workers, collate_fn=_stack_or_none)
    model.train()
    total, batches = 0.0, 0
    with progress_bar(progress) as bar:
        task = bar.add_task(label, total=len(groups), rate="")
        for step, images in zip(steps, procs.guarded(loader), strict=True):
            n = len(step)
            if procs.world == 1:
                x = images.flatten(0, 1).to(device)
                loss = triplet_loss(model(x), n, config.negatives, config.margin)
            else:
                if images is None:  # no group for this process in this step: an empty batch
                    images = _no_images(dataset, config, int(step[0]))
                own = images.shape[0]
                features = model(images.flatten(0, 1).to(device))
                loss = (triplet_loss(features, own, config.negatives, config.margin,
                                     total_groups=n) if own else features.sum() * 0.0)
            optimizer.zero_grad()
            # DDP averages the processes' gradients: scaled by their number, the average is
            # the gradient of the sum of the shares, which is the loss of the whole step
            (loss if procs.world == 1 else loss * procs.world).backward()
            optimizer.step()
            total += procs.sum(float(loss.detach()))
            batches += 1
            bar.update(task, advance=n, rate=f"loss {total / batches:.4f}")
    return total / max(batches, 1)


def _stack_or_none(items: list) -> torch.Tensor | None:
    return torch.stack(items) if items else None


def _no_images(dataset: TripletImages, config: TrainConfig, group: int) -> torch.Tensor:
    """A batch of zero groups with the shape of the others."""
    if config.resize is not None:
        return torch.empty((0, 2 + config.negatives, 3, *config.resize))
    return dataset[group].unsqueeze(0)[:0]


def _save(path: Path, model, optimizer, scheduler, rng, state, config: TrainConfig,
          procs: Processes | None = None) -> None:
    """Process 0 writes the checkpoint (with the torch RNG state of every process)."""
    procs = procs or Processes()
    extra = {}
    if procs.world > 1:
        extra["rng_torch_ranks"] = procs.gather(torch.get_rng_state())
    if procs.main:
        stored = {**state, "neg_cache": {int(q): torch.from_numpy(np.asarray(negs))
                                         for q, negs in state["neg_cache"].items()}}
        save_checkpoint(model, path, optimizer_state_dict=optimizer.state_dict(),
                        scheduler_state_dict=scheduler.state_dict() if scheduler else None,
                        rng_numpy=rng.bit_generator.state, rng_torch=torch.get_rng_state(),
                        state=stored, train_config=asdict(config), world_size=procs.world,
                        **extra)


LAST_KEYS = ("model_state_dict", "optimizer_state_dict", "rng_numpy", "rng_torch", "state")


def _dataset_identity(split: Split, val_split: Split) -> dict:
    """What a resumed run checks: the image lists of the training and validation splits."""
    return {s.name + "_" + role: hashlib.sha256("\n".join(s.role(role).names).encode()).hexdigest()
            for s in (split, val_split) for role in ("database", "queries")}


def _read_last(path: Path, split: Split, val_split: Split) -> dict:
    """``last.pth`` read safely and checked: its keys, and that the dataset is the one it was
    trained on; one clear line otherwise."""
    data = load_safely(path, "run state")
    missing = [k for k in LAST_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise VprkitError(f"{path} is not a vprkit run state (no {', '.join(missing)}); "
                          "it cannot be resumed")
    stored = data["state"].get("dataset") if isinstance(data["state"], dict) else None
    if stored is not None and stored != _dataset_identity(split, val_split):
        changed = [k for k, v in _dataset_identity(split, val_split).items() if stored.get(k) != v]
        raise VprkitError(f"the images of {split.root} changed since {path.parent} was started "
                          f"({', '.join(changed)} differ); start a new run with another --out")
    return data


def _restore(data: dict, model, optimizer, scheduler, rng, procs: Processes, seed: int) -> dict:
    try:
        model.load_state_dict(data["model_state_dict"])
        optimizer.load_state_dict(data["optimizer_state_dict"])
        if scheduler is not None and data.get("scheduler_state_dict"):
            scheduler.load_state_dict(data["scheduler_state_dict"])
        rng.bit_generator.state = data["rng_numpy"]
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VprkitError(f"the run state last.pth does not fit this run's config ({detail}); "
                          "it cannot be resumed") from None
    data["state"]["neg_cache"] = {int(q): np.asarray(negs)
                                  for q, negs in data["state"].get("neg_cache", {}).items()}
    per_process = data.get("rng_torch_ranks")
    if per_process is not None and len(per_process) == procs.world:
        torch.set_rng_state(per_process[procs.rank])
    elif procs.main:
        torch.set_rng_state(data["rng_torch"])
    else:  # more processes than the run had: a seed of their own
        torch.manual_seed(_process_seed(seed, procs.rank, data["state"]["epoch"],
                                        data["state"]["refresh"]))
    return data["state"]


def run_summary(run_dir: str | Path) -> dict:
    """A run folder at a glance: its paths and the best validation recalls (``--json``)."""
    run_dir = Path(run_dir)
    best = None
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("best") and "val_recalls" in row:
            best = row
    return {"run_dir": str(run_dir), "best_checkpoint": str(run_dir / "best.pth"),
            "last_checkpoint": str(run_dir / "last.pth"),
            "best_epoch": best["epoch"] if best else None,
            "best_val_recalls": best["val_recalls"] if best else None}


def plot_run(run_dir: Path) -> Path | None:
    """curves.png: training loss per cache refresh and validation recalls per epoch."""
    from ..plotting import integer_ticks

    plt = pyplot()
    if plt is None:
        return None
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a killed process (resume drops it): not plotted
            continue
    losses = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_recalls" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if losses:
        refreshes = max(r["refresh"] for r in losses)
        x = [(r["epoch"] - 1) + r["refresh"] / refreshes for r in losses]
        ax1.plot(x, [r["loss"] for r in losses], marker="o")
    ax1.set(xlabel="epoch", ylabel="triplet loss", title="training loss per cache refresh")
    integer_ticks(ax1.xaxis)  # ticks at epoch ends (the points between them are cache refreshes)
    for n in (vals[0]["val_recalls"] if vals else {}):
        ax2.plot([r["epoch"] for r in vals], [r["val_recalls"][n] for r in vals], marker="o",
                 label=f"R@{n}")
    ax2.set(xlabel="epoch (0 = untrained)", ylabel="recall (%)", title="validation Recall@N")
    integer_ticks(ax2.xaxis)
    if vals:
        ax2.legend()
    fig.tight_layout()
    out = run_dir / "curves.png"
    return save_figure(fig, out)
