"""The closed sets of names that the command line offers (``click.Choice``), without importing
torch: ``vprkit --help`` stays fast. Each is found where it is defined, without importing that
module: the backbones from the ``NAMES`` tuple that each module of ``vprkit/models/backbones``
declares (read from its source with ``ast``), the aggregations from the module names of
``vprkit/models/aggregations``, the training recipes from the ``RECIPES`` of
``vprkit/train/recipes.py``; nothing is to be added here for a new one. ``tests/test_cli.py`` and
``tests/test_registry.py`` check that each equals the registry it mirrors (and the L2 placements
of ``vprkit.models``, the splits of ``vprkit.data.datasets``, the presets of
``vprkit.train.augment``)."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

_HERE = Path(__file__).parent

ROLES = ("database", "queries")  # the two roles of a split's images
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # the image files a dataset folder holds


def _modules(folder: Path) -> list[str]:
    """The extension modules of a registry package, sorted (not ``base`` nor ``_private``)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(folder)])
                  if not m.name.startswith("_") and m.name != "base")


def _source(folder: Path, module: str) -> Path:
    """The source file of ``module`` in ``folder`` (a package's ``__init__.py``)."""
    package = folder / module / "__init__.py"
    return package if package.is_file() else folder / f"{module}.py"


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
# One module (or more) per backbone family in vprkit/models/backbones, each declaring the tuple
# NAMES of the backbones it registers, in registration order (the registry's order).
BACKBONES: tuple[str, ...] = tuple(
    name for module in _modules(_HERE / "models" / "backbones")
    for name in literal_of(_source(_HERE / "models" / "backbones", module), "NAMES"))
# One module per aggregation in vprkit/models/aggregations: the names are its module names.
AGGREGATIONS = tuple(_modules(_HERE / "models" / "aggregations"))
# The named training recipes (vprkit train --recipe), in their order.
RECIPES: tuple[str, ...] = tuple(literal_of(_HERE / "train" / "recipes.py", "RECIPES"))
L2_PLACEMENTS = ("before_pool", "after_pool", "none")  # the benchmark's --l2
AUGMENT_PRESETS = tuple(f"{kind}:M{i}" for kind in ("night", "occlusion") for i in range(1, 7))
DEFAULT_RESIZE = (480, 640)  # the benchmark's image size (H, W)
# query view -> rows stored per query, and test method -> the view it reads (vprkit.descriptors.views)
VIEWS = {"hard_resize": 1, "single_query": 1, "central_crop": 1, "five_crops": 5}
TEST_METHODS = {"hard_resize": "hard_resize", "single_query": "single_query",
                "central_crop": "central_crop", "five_crops": "five_crops",
                "nearest_crop": "five_crops", "maj_voting": "five_crops"}
DEFAULT_MAJORITY_WEIGHT = 0.01  # the benchmark's --majority_weight
# evaluate's statistics (vprkit.evaluate.statistics): bootstrap resamples and seed, R@1 thresholds (m)
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_THRESHOLDS = (5.0, 10.0, 25.0, 50.0, 100.0)
