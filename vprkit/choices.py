"""The closed sets of names that the command line offers (``click.Choice``), without importing
torch: ``vprkit --help`` stays fast. Each is found where it is defined, without importing that
module: the backbones and the aggregations are the module names of ``vprkit/models/backbones``
and ``vprkit/models/aggregations`` (one module per name, ``component_names``; their
``vprkit.models.registry.Registry`` lists them the same way), the training recipes from the
``RECIPES`` of ``vprkit/train/recipes.py``; nothing is to be added here for a new one.
``tests/test_cli.py`` and ``tests/test_registry.py`` check that each equals the registry it
mirrors (and the L2 placements of ``vprkit.models``, the splits of ``vprkit.data.datasets``, the
presets of ``vprkit.train.augment``). The default backbone and aggregation are here, the one
place every default names them from."""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

_HERE = Path(__file__).parent

ROLES = ("database", "queries")  # the two roles of a split's images
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # the image files a dataset folder holds


def component_names(folder: Path) -> tuple[str, ...]:
    """The component modules of a registry package (not ``base`` nor ``_private``), in natural
    order (``resnet18conv4`` before ``resnet101conv4``), read from the folder, unimported."""

    def natural(name: str) -> list:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

    return tuple(
        sorted(
            (
                m.name
                for m in pkgutil.iter_modules([str(folder)])
                if not m.name.startswith("_") and m.name != "base"
            ),
            key=natural,
        )
    )


def literal_of(path: Path, name: str):
    """The value of the top-level literal assignment ``name = ...`` in the Python file ``path``,
    read from its source (``ast.literal_eval``), without importing it."""
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                return ast.literal_eval(value)
            except ValueError:
                raise ValueError(f"{path}: {name} is not a literal") from None
    raise ValueError(f"{path} has no top-level {name} = ...")


SPLITS = ("train", "val", "test")
# One module per backbone in vprkit/models/backbones, one per aggregation in
# vprkit/models/aggregations: the names are their module names.
BACKBONES: tuple[str, ...] = component_names(_HERE / "models" / "backbones")
AGGREGATIONS: tuple[str, ...] = component_names(_HERE / "models" / "aggregations")
DEFAULT_BACKBONE = "resnet18conv4"  # ResNet-18 up to layer3: 256 channels, stride 16
DEFAULT_AGGREGATION = "gem"
# The named training recipes (vprkit train --recipe), in their order.
RECIPES: tuple[str, ...] = tuple(literal_of(_HERE / "train" / "recipes.py", "RECIPES"))
L2_PLACEMENTS = ("before_pool", "after_pool", "none")  # the benchmark's --l2
AUGMENT_PRESETS = tuple(f"{kind}:M{i}" for kind in ("night", "occlusion") for i in range(1, 7))
DEFAULT_RESIZE = (480, 640)  # the benchmark's image size (H, W)
# query view -> rows stored per query, and test method -> the view it reads (vprkit.descriptors.views)
VIEWS = {"hard_resize": 1, "single_query": 1, "central_crop": 1, "five_crops": 5}
TEST_METHODS = {
    "hard_resize": "hard_resize",
    "single_query": "single_query",
    "central_crop": "central_crop",
    "five_crops": "five_crops",
    "nearest_crop": "five_crops",
    "maj_voting": "five_crops",
}
DEFAULT_MAJORITY_WEIGHT = 0.01  # the benchmark's --majority_weight
# evaluate's statistics (vprkit.evaluate.statistics): bootstrap resamples and seed, R@1 thresholds (m)
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_THRESHOLDS = (5.0, 10.0, 25.0, 50.0, 100.0)
