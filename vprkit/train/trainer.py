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
every refresh, so a stopped run resumed with ``resume(run_dir)`` loses at most one refresh
and continues exactly (same RNG states) where it stopped. The cache of a refresh is one batched
inference pass (``vprkit.train.caches``); the steps compute as ``steps.Precision`` says
(``--amp``, ``--channels-last``).

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

import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vprkit.data.datasets import Split, load_split
from vprkit.devices import half_dtype, resolve_device
from vprkit.errors import VprkitError
from vprkit.extract.clusters import init_netvlad
from vprkit.extract.inference import sample_local_features
from vprkit.files import output_lock, refuse_link, write_text
from vprkit.models import NetVLAD, VPRModel, build_classic
from vprkit.progress import ProgressCallback, progress_callback
from vprkit.train.augment import build_augmentation
from vprkit.train.caches import cache_features
from vprkit.train.checkpoint_io import LAST_KEYS as LAST_KEYS
from vprkit.train.checkpoint_io import _dataset_identity, _process_seed, _read_last, _restore, _save
from vprkit.train.checkpoint_io import run_summary as run_summary
from vprkit.train.config import OPTIMIZERS as OPTIMIZERS
from vprkit.train.config import SCHEDULERS as SCHEDULERS
from vprkit.train.config import TrainConfig
from vprkit.train.distributed import Processes
from vprkit.train.mining import TripletSource, mine
from vprkit.train.plots import plot_run
from vprkit.train.runlog import Log, RunLog, _drop_partial_line, _Silent
from vprkit.train.steps import Precision, _train_groups, build_optimizer, build_scheduler
from vprkit.train.steps import TripletImages as TripletImages
from vprkit.train.steps import triplet_loss as triplet_loss
from vprkit.train.validate_run import check_config_fits, stale_files
from vprkit.train.validation import _inference_options, validate


def _init_model(config: TrainConfig, source: TripletSource, device, log: Log,
                kmeans: bool = True) -> VPRModel:
    torch.manual_seed(config.seed)
    model = build_classic(config.model).to(device)
    netvlad = isinstance(getattr(model.aggregation, "inner", model.aggregation), NetVLAD)
    if kmeans and netvlad and not config.model.checkpoint:
        paths = source.split.database.paths()
        options = _inference_options(config)
        log.say(f"NetVLAD: k-means on local features of {min(options.cluster_images, len(paths))} "
                f"{config.train_split} database images")
        model.eval()
        feats = sample_local_features(model, paths, options, device)
        init_netvlad(getattr(model.aggregation, "inner", model.aggregation), feats, config.seed,
                     torch.device(device))  # faiss on a CPU, torch_kmeans on a GPU
    return model


def _adapted(config: TrainConfig, source: TripletSource, log: Log) -> TrainConfig:
    """Sampling sizes clipped to what the dataset has, with a note for each."""
    n_q, n_db = len(source.queries), len(source.split.database)
    changes: dict[str, Any] = {}
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
    return replace(config, **changes)


def train(config: TrainConfig | None, run_dir: str | Path, resume: bool = False,
          progress: ProgressCallback | None = None) -> Path:
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
            ``resume``. The files of a vprkit run stopped before its first checkpoint are
            replaced; a file there that vprkit did not write is refused, never replaced.
        resume: continue the run of ``run_dir`` from its ``last.pth`` (model, optimizer,
            scheduler, RNG states and progress), losing at most one cache refresh; the same as
            ``resume(run_dir)``.
        progress: called as the work goes (``vprkit.progress``), in process 0; None: silent.
            The log lines of ``train.log`` are logged too (``logging``, ``vprkit`` logger).

    Returns:
        The path of ``run_dir/best.pth``: the model with the best validation R@5 and its config
        (``extract_split(..., ModelConfig(checkpoint=str(path)))`` needs nothing else).

    Raises:
        VprkitError: a bad configuration, a dataset or image that cannot be read, a run folder
            that already holds a run or files vprkit did not write (or, with ``resume``, holds
            none or a damaged one: every value of its config.json and last.pth is checked
            before anything in it changes), or a run folder that another ``train`` is using.
    """
    progress = progress_callback(progress)
    procs = Processes.from_env()
    run_dir = Path(run_dir)
    try:
        with ExitStack() as stack:
            procs.on_main(lambda: stack.enter_context(_run_lock(run_dir, resume)))
            return _train(config, run_dir, resume, progress if procs.main else None, procs)
    finally:
        procs.close()


def resume(run_dir: str | Path, progress: ProgressCallback | None = None) -> Path:
    """Continue the stopped run of ``run_dir`` where its ``last.pth`` left it; returns the path
    of ``best.pth``.

    The same as ``train(None, run_dir, resume=True, progress=progress)``: the configuration is
    the run folder's ``config.json``; model, optimizer, scheduler, RNG states and progress come
    from ``last.pth`` (at most one cache refresh is lost, and the run continues exactly). Under
    torchrun every process calls it; any number of processes can resume a run.

    Raises:
        VprkitError: ``run_dir`` holds no run or a damaged one, its dataset's images changed, or
            another ``train`` is using it.
    """
    return train(None, run_dir, resume=True, progress=progress_callback(progress))


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
    """The run's config: resume, the run folder's, checked; a new run, ``config`` checked and
    the files of a vprkit run stopped before its first checkpoint removed."""
    config_path = run_dir / "config.json"
    if resume:
        if not (run_dir / "last.pth").is_file():
            raise VprkitError(f"{run_dir} has no last.pth to resume from")
        return TrainConfig.load(config_path)
    if (run_dir / "last.pth").exists():
        raise VprkitError(f"{run_dir} already holds a run; use --resume {run_dir} or "
                          "another -o/--output")
    if config is None:
        raise VprkitError("a new run needs its TrainConfig (or resume=True)")
    config.check()
    for stale in stale_files(run_dir):  # a vprkit run stopped before its first checkpoint;
        stale.unlink(missing_ok=True)   # refused where a file is not provably vprkit's
    run_dir.mkdir(parents=True, exist_ok=True)
    return config


def _train(config: TrainConfig | None, run_dir: Path, resume: bool,
           progress: ProgressCallback | None,
           procs: Processes) -> Path:
    config = procs.on_main(lambda: _prepare_run_dir(config, run_dir, resume))
    assert config is not None  # _prepare_run_dir returns one or raises
    root = Path(config.root)
    device = procs.each(lambda: procs.pin(resolve_device(config.device)))
    log = RunLog(run_dir) if procs.main else _Silent()

    def load():
        split = load_split(root, config.train_split)
        val_split = load_split(root, config.val_split)  # read once; fails now, not after an epoch
        return split, val_split, TripletSource.from_split(split)

    split, val_split, source = procs.each(load)
    # resume: every check before anything in the run folder changes
    data = procs.on_main(lambda: _read_run(config, run_dir, source, val_split)) if resume else {}
    if not resume:
        def adapt() -> TrainConfig:
            assert config is not None
            if source.dropped:
                log.say(f"{source.dropped} {config.train_split} queries have no database image "
                        "within 10 m and are not used")
            adapted = _adapted(config, source, log)
            write_text(run_dir / "config.json", adapted.to_json())
            return adapted

        config = procs.on_main(adapt)
    refreshes = math.ceil(config.queries_per_epoch / config.cache_refresh)

    # resume: weights from last.pth; several processes: the same init everywhere, and DDP
    # starts from process 0's weights anyway
    model = procs.each(lambda: _init_model(config, source, device, log, kmeans=not resume))
    precision = Precision.of(config, device)
    precision.prepare(model)
    shared = ""
    if procs.world > 1:
        model, shared = _for_processes(model, config, device, procs)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, refreshes)
    rng = np.random.default_rng(config.seed)
    state: dict[str, Any] = {"epoch": 0, "refresh": 0, "best_r5": -1.0, "not_improved": 0,
                             "neg_cache": {},
                             "dataset": _dataset_identity(split, val_split)}
    notes = [_describe(precision), shared]
    if resume:
        state = procs.each(lambda: _restore(data, model, optimizer, scheduler, rng, procs,
                                            config.seed, precision.scaler, run_dir / "last.pth"))
        notes.append(_resumed(run_dir, data, state, procs))
    for note in filter(None, notes):
        log.say(note)
    net = procs.wrap(model, device)  # the model itself for one process
    if not resume and config.epochs:
        recalls = validate(model, val_split, config, device, procs)
        log.say(f"untrained model: validation {_fmt(recalls)}")
        log.metric(epoch=0, val_recalls=recalls, time=time.time())

    augment = build_augmentation(config.augment)
    features = cache_features(model, source, config, device, procs)

    def save(name: str) -> None:
        _save(run_dir / name, model, optimizer, scheduler, rng, state, config, procs,
              scaler=precision.scaler)

    while state["epoch"] < config.epochs:
        epoch = state["epoch"]
        while state["refresh"] < refreshes:
            r = state["refresh"]
            n_q = min(config.cache_refresh, config.queries_per_epoch - r * config.cache_refresh)
            query_ids = rng.choice(source.queries, size=n_q, replace=False)
            groups = mine(source, query_ids, features, config.mining, config.negatives,
                          config.neg_samples, rng, state["neg_cache"], device=device)
            _check_same(groups, procs)
            loss = _train_groups(net, optimizer, source, groups, config, augment, device,
                                 progress, f"epoch {epoch + 1}/{config.epochs} refresh "
                                           f"{r + 1}/{refreshes}", procs=procs,
                                 precision=precision)
            _step_scheduler(scheduler, loss)
            lr = optimizer.param_groups[0]["lr"]
            log.metric(epoch=epoch + 1, refresh=r + 1, loss=loss, lr=lr, time=time.time())
            log.say(f"epoch {epoch + 1} refresh {r + 1}/{refreshes}: loss {loss:.4f}, lr {lr:.3g}")
            state["refresh"] = r + 1
            save("last.pth")
        recalls = validate(model, val_split, config, device, procs)
        r5 = recalls.get(5, next(iter(recalls.values())))
        improved = r5 > state["best_r5"]
        state.update(epoch=epoch + 1, refresh=0)
        if improved:
            state.update(best_r5=r5, not_improved=0)
            save("best.pth")
        else:
            state["not_improved"] += 1
        save("last.pth")
        log.metric(epoch=epoch + 1, val_recalls=recalls, best=improved, time=time.time())
        log.say(f"epoch {epoch + 1}: validation {_fmt(recalls)}" + (" (best)" if improved else ""))
        if state["not_improved"] >= config.patience:
            log.say(f"no better validation R@5 for {config.patience} epochs: stopping early")
            break
    procs.on_main(lambda: plot_run(run_dir))
    return run_dir / "best.pth"


def _read_run(config: TrainConfig, run_dir: Path, source: TripletSource, val_split: Split) -> dict:
    """Resume: the stored config's sizes against the dataset, and ``last.pth`` read and checked."""
    check_config_fits(config, run_dir / "config.json", source)
    return _read_last(run_dir / "last.pth", source.split, val_split, config)


def _resumed(run_dir: Path, data: dict, state: dict, procs: Processes) -> str:
    """Once every check passed: the log lines cut by a kill dropped; the line saying where the
    run goes on."""
    if procs.main:
        for name in ("train.log", "metrics.jsonl"):
            refuse_link(run_dir / name)
        for name in ("train.log", "metrics.jsonl"):
            _drop_partial_line(run_dir / name)
    saved = data.get("world_size", 1)
    return (f"resuming {run_dir} at epoch {state['epoch'] + 1}, refresh {state['refresh'] + 1}"
            + (f" ({saved} process(es) before, {procs.world} now)" if saved != procs.world else ""))


def _for_processes(model: VPRModel, config: TrainConfig, device,
                   procs: Processes) -> tuple[VPRModel, str]:
    """Several processes: BatchNorm over the whole step, a torch seed of each process's own for
    augmentation; and the log line saying how the step is shared."""
    synchronized = procs.synchronize_batchnorm(model, device)
    assert isinstance(synchronized, VPRModel)  # converted in place
    model = synchronized
    if procs.rank > 0:
        torch.manual_seed(_process_seed(config.seed, procs.rank))  # own augmentation draws
    per = config.batch_size / procs.world
    backend = "nccl" if device.type == "cuda" else "gloo"
    return model, (f"{procs.world} processes ({backend} on {device.type}): {config.batch_size} "
                   f"triplet groups per step in all, {per:g} per process"
                   + (" (some processes idle in every step: use a --batch-size of at least the "
                      "number of processes)" if per < 1 else ""))


def _describe(precision: Precision) -> str:
    """The log line of how the steps compute."""
    if not precision.amp:
        kind = "float32"
    else:
        kind = f"{str(half_dtype(precision.device)).removeprefix('torch.')} autocast" + (
            " with a gradient scaler" if precision.scaler is not None else "")
    layout = "channels-last" if precision.channels_last else "NCHW"
    return f"training in {kind} on {precision.device.type}, {layout} memory format"


def _step_scheduler(scheduler, loss: float) -> None:
    """Plateau steps on the refresh's loss, the others once per refresh."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(loss)
    elif scheduler is not None:
        scheduler.step()


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
