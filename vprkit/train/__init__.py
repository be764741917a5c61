"""Triplet training: mining, the paper's augmentation presets, optimisers and schedulers."""

from .augment import PRESETS, build_augmentation, build_preset
from .mining import MINING, TripletSource, mine
from .trainer import OPTIMIZERS, SCHEDULERS, TrainConfig, train, triplet_loss

__all__ = ["MINING", "OPTIMIZERS", "PRESETS", "SCHEDULERS", "TrainConfig", "TripletSource",
           "build_augmentation", "build_preset", "mine", "train", "triplet_loss"]
