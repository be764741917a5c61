"""Triplet training: mining, the paper's augmentation presets, optimisers and schedulers.

Modules: ``config`` (``TrainConfig``), ``trainer`` (the loop: ``train``, ``resume``), ``steps``
(triplet images, loss, optimiser, scheduler, precision and memory format, optimisation steps),
``caches`` (the descriptors of a cache refresh, one inference pass), ``validation`` (validation
descriptors, Recall@N), ``checkpoint_io`` (run state written and restored, ``run_summary``),
``validate_run`` (checks of a run folder: every value of ``last.pth`` on resume, the files that a
new run may replace),
``runlog`` (``train.log``, ``metrics.jsonl``), ``plots`` (``plot_run``), ``recipes`` (named
presets of ``TrainConfig`` fields), ``mining``, ``neighbours`` (mining's nearest neighbours:
faiss or torch shortlists, exactly the reference ranking), ``augment``, ``distributed``. Inference is
``vprkit.extract.inference``'s, shared with extraction; training does not import ``vprkit.extract.split``.
"""

from vprkit.train.augment import PRESETS, build_augmentation, build_preset
from vprkit.train.checkpoint_io import run_summary
from vprkit.train.config import OPTIMIZERS, SCHEDULERS, TrainConfig
from vprkit.train.mining import MINING, TripletSource, mine
from vprkit.train.recipes import RECIPES, config_from_recipe
from vprkit.train.steps import triplet_loss
from vprkit.train.trainer import resume, train

__all__ = [
    "MINING",
    "OPTIMIZERS",
    "PRESETS",
    "RECIPES",
    "SCHEDULERS",
    "TrainConfig",
    "TripletSource",
    "build_augmentation",
    "build_preset",
    "config_from_recipe",
    "mine",
    "resume",
    "run_summary",
    "train",
    "triplet_loss",
]
