"""Named training recipes: presets of ``TrainConfig`` fields (``vprkit train --recipe NAME``).

A recipe sets the fields it names; every other field keeps ``TrainConfig``'s default, and
options given explicitly (on the command line, or as ``config_from_recipe`` keywords) override
the recipe. The run's ``config.json`` records the recipe's name (``TrainConfig.recipe``) next to
the values it ran with.

``RECIPES`` is a literal: ``vprkit.choices`` reads its names from this file's source, so that the
command line's choices need no torch. A new recipe is one entry here.

The paper is *Image Retrieval Visual Geolocalization* (the extensions that vprkit implements):
its Table III gives the best learning rate and weight decay of AdamW and ASGD from a grid search
(one-epoch models, Table II), and its figures 4 and 5 show them best combined with the Plateau
(AdamW) and Cosine annealing (ASGD) schedulers.
"""

from __future__ import annotations

from typing import Any

from vprkit.errors import VprkitError
from vprkit.train.config import TrainConfig

# name -> {"about": one line citing its source, "fields": TrainConfig fields it sets}
RECIPES: dict[str, dict[str, Any]] = {
    "benchmark": {
        "about": "the Deep Visual Geo-localization Benchmark's defaults (TrainConfig's own)",
        "fields": {"optimizer": "adam", "lr": 1e-5, "weight_decay": 0.0, "scheduler": "none"},
    },
    "paper-adamw": {
        "about": "AdamW with the paper's best lr and weight decay (Table III)",
        "fields": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-3, "scheduler": "none"},
    },
    "paper-asgd": {
        "about": "ASGD with the paper's best lr and weight decay (Table III)",
        "fields": {"optimizer": "asgd", "lr": 0.1, "weight_decay": 1e-3, "scheduler": "none"},
    },
    "paper-adamw-plateau": {
        "about": "paper-adamw with the Plateau scheduler, the paper's best AdamW run (Fig. 4)",
        "fields": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-3, "scheduler": "plateau"},
    },
    "paper-asgd-cosine": {
        "about": "paper-asgd with the Cosine annealing scheduler, the paper's best ASGD run (Fig. 5)",
        "fields": {"optimizer": "asgd", "lr": 0.1, "weight_decay": 1e-3, "scheduler": "cosine"},
    },
}


def recipe_fields(name: str) -> dict[str, Any]:
    """The ``TrainConfig`` fields that recipe ``name`` sets (a copy).

    Raises:
        VprkitError: ``name`` is not a recipe (one line listing them).
    """
    if name not in RECIPES:
        raise VprkitError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name]["fields"])


def config_from_recipe(name: str | None, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` from recipe ``name`` (None: no recipe), ``overrides`` winning over it.

    Args:
        name: a recipe of ``RECIPES``, recorded as ``TrainConfig.recipe``; None gives
            ``TrainConfig(**overrides)``.
        **overrides: ``TrainConfig`` fields (``root`` at least); each replaces the recipe's value.

    Returns:
        The configuration: ``TrainConfig`` defaults, then the recipe's fields, then
        ``overrides``.

    Raises:
        VprkitError: an unknown recipe.
        TypeError: an override that is not a ``TrainConfig`` field, or ``recipe`` itself.
    """
    if "recipe" in overrides:
        raise TypeError("give the recipe as the first argument, not as recipe=")
    if name is None:
        return TrainConfig(**overrides)
    return TrainConfig(**{**recipe_fields(name), **overrides, "recipe": name})


def describe_recipes() -> list[tuple[str, str, str]]:
    """(name, the fields it sets as ``key=value`` text, its one-line source) of each recipe."""
    return [
        (
            name,
            ", ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in recipe["fields"].items()
            ),
            recipe["about"],
        )
        for name, recipe in RECIPES.items()
    ]


__all__ = ["RECIPES", "config_from_recipe", "describe_recipes", "recipe_fields"]
