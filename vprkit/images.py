"""Image decoding and preprocessing for inference: ImageNet normalisation, resize, scales.

Preprocessing follows the benchmark's test loop: ``ToTensor``, ImageNet ``Normalize``, then a
bilinear (antialiased) resize to ``resize`` = (H, W); scale ``l`` is that image resized to
(H // l, W // l). With ``resize=None`` each image keeps its native size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def load_image(path: Path) -> torch.Tensor:
    """RGB image as a float tensor (3, H, W) in [0, 1]; grey, palette and RGBA are converted."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        tensor = data.view(im.height, im.width, 3).permute(2, 0, 1)
    return tensor.float().div_(255.0)


def normalize(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(STD, dtype=image.dtype).view(3, 1, 1)
    return (image - mean) / std


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize of (3, H, W) or (N, 3, H, W) (torchvision's default)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batched = image if image.dim() == 4 else image.unsqueeze(0)
    out = F.interpolate(batched, size=tuple(size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out if image.dim() == 4 else out.squeeze(0)


def scale_size(height: int, width: int, scale: int) -> tuple[int, int]:
    return max(1, height // scale), max(1, width // scale)


def preprocess(image: torch.Tensor, size: tuple[int, int] | None,
               scales: Sequence[int]) -> list[torch.Tensor]:
    """Normalised image at each scale."""
    image = normalize(image)
    if size is not None:
        image = resize(image, size)
    h, w = image.shape[-2:]
    return [image if s == 1 else resize(image, scale_size(h, w, s)) for s in scales]


class ImageScalesDataset(Dataset):
    """Items are (index, [image at each scale], error message or None).

    A corrupt image does not raise inside a DataLoader worker (which would print a worker
    traceback); it returns its error so that the caller can report it in one line.
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int] | None,
                 scales: Sequence[int]):
        self.paths = list(paths)
        self.size = size
        self.scales = tuple(scales)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            image = load_image(path)
        except Exception as err:
            return index, None, f"cannot read image {path}: {type(err).__name__}: {err}"
        return index, preprocess(image, self.size, self.scales), None


def collate_items(batch):
    """Keep the list: images of different native sizes cannot be stacked blindly."""
    return batch
