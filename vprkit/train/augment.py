"""The paper's training-query augmentations (section IV-A), as named presets.

Applied to a training query as a float tensor in [0, 1] (after resizing, before the single
ImageNet normalisation), with every random factor drawn anew for each image.

- ``night:M1..M3``: ``ColorJitter`` with the paper's ranges (brightness, contrast, saturation,
  hue). A number b means factors in [max(0, 1 - b), 1 + b] (torchvision); a pair is a range.
- ``night:M4``, ``night:M5``: ``adjust_brightness`` with factor 0.25 and 0.5 (darkening).
- ``night:M6``: functional adjustments with factors drawn per image: brightness, contrast and
  saturation from U(0, 1), hue from U(0, 0.5), applied in that order.
- ``occlusion:M1..M6``: ``RandomPerspective(distortion_scale=dRP, p=pRP, fill=fRP)`` then
  ``RandomErasing(p=pRE, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)``. The paper's fill is
  in 0-255 pixel units; on [0, 1] images it is fRP / 255, clipped to 1 (300 -> white).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from vprkit.errors import VprkitError

NIGHT: dict[str, dict[str, Any]] = {
    "M1": {"tool": "ColorJitter", "brightness": 1.0, "contrast": 1.0, "saturation": 2.0, "hue": 0.0},
    "M2": {
        "tool": "ColorJitter",
        "brightness": (0.2, 3.0),
        "contrast": (0.2, 3.0),
        "saturation": (0.2, 3.0),
        "hue": (0.0, 0.5),
    },
    "M3": {
        "tool": "ColorJitter",
        "brightness": (0.0, 1.0),
        "contrast": (0.0, 1.0),
        "saturation": (0.0, 1.0),
        "hue": (0.0, 0.5),
    },
    "M4": {"tool": "adjust_brightness", "brightness": 0.25},
    "M5": {"tool": "adjust_brightness", "brightness": 0.5},
    "M6": {
        "tool": "functional adjust, factors drawn per image",
        "brightness": (0.0, 1.0),
        "contrast": (0.0, 1.0),
        "saturation": (0.0, 1.0),
        "hue": (0.0, 0.5),
    },
}
OCCLUSION: dict[str, dict[str, Any]] = {
    "M1": {"pRP": 0.33, "dRP": 0.4, "fRP": 0, "pRE": 0.33},
    "M2": {"pRP": 0.33, "dRP": 0.4, "fRP": 150, "pRE": 0.33},
    "M3": {"pRP": 0.33, "dRP": 0.4, "fRP": 300, "pRE": 0.33},
    "M4": {"pRP": 0.5, "dRP": 0.2, "fRP": 0, "pRE": 0.2},
    "M5": {"pRP": 0.5, "dRP": 0.2, "fRP": 150, "pRE": 0.2},
    "M6": {"pRP": 0.5, "dRP": 0.2, "fRP": 300, "pRE": 0.2},
}
ERASING = {"scale": (0.02, 0.33), "ratio": (0.3, 3.3), "value": 0}
PRESETS: dict[str, dict[str, Any]] = {f"night:{k}": v for k, v in NIGHT.items()} | {
    f"occlusion:{k}": {**v, "erasing": ERASING} for k, v in OCCLUSION.items()
}


class _RandomAdjust(torch.nn.Module):
    """Functional adjustments with factors drawn per call from the given ranges (night:M6)."""

    def __init__(self, brightness, contrast, saturation, hue):
        super().__init__()
        self.ranges = (brightness, contrast, saturation, hue)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        (b0, b1), (c0, c1), (s0, s1), (h0, h1) = self.ranges
        draw = torch.rand(4).tolist()
        img = TF.adjust_brightness(img, b0 + (b1 - b0) * draw[0])
        img = TF.adjust_contrast(img, c0 + (c1 - c0) * draw[1])
        img = TF.adjust_saturation(img, s0 + (s1 - s0) * draw[2])
        return TF.adjust_hue(img, h0 + (h1 - h0) * draw[3])


class _Brightness(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return TF.adjust_brightness(img, self.factor)


def build_preset(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform of one preset (``night:M2``, ``occlusion:M5``, ...)."""
    if name not in PRESETS:
        raise VprkitError(f"unknown augmentation {name!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[name]
    if name.startswith("night:"):
        if p["tool"] == "ColorJitter":
            return T.ColorJitter(p["brightness"], p["contrast"], p["saturation"], p["hue"])
        if p["tool"] == "adjust_brightness":
            return _Brightness(p["brightness"])
        return _RandomAdjust(p["brightness"], p["contrast"], p["saturation"], p["hue"])
    fill = min(p["fRP"] / 255.0, 1.0)
    return T.Compose(
        [
            T.RandomPerspective(distortion_scale=p["dRP"], p=p["pRP"], fill=[fill, fill, fill]),
            T.RandomErasing(
                p=p["pRE"], scale=ERASING["scale"], ratio=ERASING["ratio"], value=ERASING["value"]
            ),
        ]
    )


def build_augmentation(names: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Several presets applied in the order given, or None."""
    if not names:
        return None
    return T.Compose([build_preset(n) for n in names])


def describe_presets() -> list[tuple[str, str]]:
    """(name, parameters) of every preset, for ``vprkit train --list-augments``."""
    return [(name, ", ".join(f"{k}={v}" for k, v in params.items())) for name, params in PRESETS.items()]
