"""The closed sets of names that the command line offers (``click.Choice``), without importing
torch: ``vprkit --help`` stays fast. ``tests/test_cli.py`` checks that each equals the registry
it mirrors (the backbones and aggregations of ``vprkit.models``, the splits of
``vprkit.datasets``, the presets of ``vprkit.train.augment``)."""

from __future__ import annotations

SPLITS = ("train", "val", "test")
BACKBONES = ("resnet18conv4", "resnet18conv5", "resnet50conv4", "resnet50conv5", "vgg16",
             "efficientnet_lite0")
AGGREGATIONS = ("gem", "netvlad")
AUGMENT_PRESETS = tuple(f"{kind}:M{i}" for kind in ("night", "occlusion") for i in range(1, 7))
DEFAULT_RESIZE = (480, 640)  # the benchmark's image size (H, W)
