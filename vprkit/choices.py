"""The closed sets of names that the command line offers (``click.Choice``), without importing
torch: ``vprkit --help`` stays fast. ``tests/test_cli.py`` checks that each equals the registry it
mirrors: the backbones (a new backbone adds its name to ``BACKBONES``), aggregations (found by
module name, nothing to add) and L2 placements of ``vprkit.models``, the splits of
``vprkit.datasets``, the presets of ``vprkit.train.augment``."""

from __future__ import annotations

import pkgutil
from pathlib import Path

SPLITS = ("train", "val", "test")
BACKBONES = ("alexnet", "efficientnet_lite0", "resnet18conv4", "resnet18conv5", "resnet50conv4",
             "resnet50conv5", "resnet101conv4", "resnet101conv5", "vgg16")
# One module per aggregation in vprkit/models/aggregations: the names are its module names, found
# without importing them (nothing to add here for a new aggregation).
AGGREGATIONS = tuple(sorted(m.name for m in pkgutil.iter_modules(
    [str(Path(__file__).parent / "models" / "aggregations")])
    if not m.name.startswith("_") and m.name != "base"))
L2_PLACEMENTS = ("before_pool", "after_pool", "none")  # the benchmark's --l2
AUGMENT_PRESETS = tuple(f"{kind}:M{i}" for kind in ("night", "occlusion") for i in range(1, 7))
DEFAULT_RESIZE = (480, 640)  # the benchmark's image size (H, W)
# query view -> rows stored per query, and test method -> the view it reads (vprkit.views)
VIEWS = {"hard_resize": 1, "single_query": 1, "central_crop": 1, "five_crops": 5}
TEST_METHODS = {"hard_resize": "hard_resize", "single_query": "single_query",
                "central_crop": "central_crop", "five_crops": "five_crops",
                "nearest_crop": "five_crops", "maj_voting": "five_crops"}
DEFAULT_MAJORITY_WEIGHT = 0.01  # the benchmark's --majority_weight
