"""Run state: ``last.pth`` and ``best.pth`` written and read back (an exact resume: model,
optimizer, scheduler, RNG states of every process, progress), and a run folder's summary."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from vprkit.data.datasets import Split
from vprkit.errors import VprkitError
from vprkit.models import save_checkpoint
from vprkit.models.serialization import load_safely
from vprkit.train.config import TrainConfig
from vprkit.train.distributed import Processes
from vprkit.train.validate_run import LAST_KEYS as LAST_KEYS
from vprkit.train.validate_run import check_fits, check_run_state


def _process_seed(seed: int, rank: int, *more: int) -> int:
    """Seed of the torch RNG of process ``rank`` > 0 (augmentation draws)."""
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1)[0])


def _save(
    path: Path,
    model,
    optimizer,
    scheduler,
    rng,
    state,
    config: TrainConfig,
    procs: Processes | None = None,
    scaler=None,
) -> None:
    """Process 0 writes the checkpoint (with the torch RNG state of every process, and the
    gradient scaler's state of float16 ``--amp`` on CUDA)."""
    procs = procs or Processes()
    extra = {} if scaler is None else {"scaler_state_dict": scaler.state_dict()}
    if procs.world > 1:
        extra["rng_torch_ranks"] = procs.gather(torch.get_rng_state())
    if procs.main:
        stored = {
            **state,
            "neg_cache": {
                int(q): torch.from_numpy(np.asarray(negs)) for q, negs in state["neg_cache"].items()
            },
        }
        save_checkpoint(
            model,
            path,
            optimizer_state_dict=optimizer.state_dict(),
            scheduler_state_dict=scheduler.state_dict() if scheduler else None,
            rng_numpy=rng.bit_generator.state,
            rng_torch=torch.get_rng_state(),
            state=stored,
            train_config=config.to_dict(),
            world_size=procs.world,
            **extra,
        )


def _dataset_identity(split: Split, val_split: Split) -> dict:
    """What a resumed run checks: the image lists of the training and validation splits."""
    return {
        s.name + "_" + role: hashlib.sha256("\n".join(s.role(role).names).encode()).hexdigest()
        for s in (split, val_split)
        for role in ("database", "queries")
    }


def _read_last(path: Path, split: Split, val_split: Split, config: TrainConfig) -> dict:
    """``last.pth`` read safely and checked: that the dataset is the one it was trained on, and
    every value (``validate_run.check_run_state``); one clear line otherwise."""
    data = load_safely(path, "run state")
    state = data.get("state") if isinstance(data, dict) else None
    stored = state.get("dataset") if isinstance(state, dict) else None
    identity = _dataset_identity(split, val_split)
    if isinstance(stored, dict) and stored != identity:
        changed = [k for k, v in identity.items() if stored.get(k) != v]
        raise VprkitError(
            f"the images of {split.root} changed since {path.parent} was started "
            f"({', '.join(changed)} differ); start a new run in another folder"
        )
    return check_run_state(data, path, config, split)


def _restore(
    data: dict,
    model,
    optimizer,
    scheduler,
    rng,
    procs: Processes,
    seed: int,
    scaler=None,
    path: Path = Path("last.pth"),
) -> dict:
    """The run state ``data`` (read by ``_read_last``) into the model, optimiser, scheduler,
    gradient scaler and RNGs of this process; returns the progress (``state``)."""
    check_fits(data, path, optimizer, scheduler, scaler)
    try:
        model.load_state_dict(data["model_state_dict"])
        optimizer.load_state_dict(data["optimizer_state_dict"])
        if scheduler is not None and data.get("scheduler_state_dict"):
            scheduler.load_state_dict(data["scheduler_state_dict"])
        if scaler is not None and data.get("scaler_state_dict"):
            scaler.load_state_dict(data["scaler_state_dict"])
        rng.bit_generator.state = data["rng_numpy"]
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VprkitError(
            f"the run state {path} does not fit this run's config ({detail}); it cannot be resumed"
        ) from None
    data["state"]["neg_cache"] = {
        int(q): np.asarray(negs) for q, negs in data["state"].get("neg_cache", {}).items()
    }
    per_process = data.get("rng_torch_ranks")
    if per_process is not None and len(per_process) == procs.world:
        torch.set_rng_state(per_process[procs.rank])
    elif procs.main:
        torch.set_rng_state(data["rng_torch"])
    else:  # more processes than the run had: a seed of their own
        torch.manual_seed(_process_seed(seed, procs.rank, data["state"]["epoch"], data["state"]["refresh"]))
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
    return {
        "run_dir": str(run_dir),
        "best_checkpoint": str(run_dir / "best.pth"),
        "last_checkpoint": str(run_dir / "last.pth"),
        "best_epoch": best["epoch"] if best else None,
        "best_val_recalls": best["val_recalls"] if best else None,
    }
