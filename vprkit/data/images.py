"""Image decoding and preprocessing for inference: ImageNet normalisation, resize, scales.

Preprocessing follows the benchmark's test loop: ``ToTensor``, ImageNet ``Normalize``, then a
bilinear (antialiased) resize to ``resize`` = (H, W); scale ``l`` is that image resized to
(H // l, W // l). With ``resize=None`` each image keeps its native size.

``load_image`` gives RGB in [0, 1] for every image that Pillow opens (by content, whatever the
file's extension). 8-bit images (grey, palette, RGB, RGBA, CMYK, ...) go through Pillow's
``convert("RGB")`` and are divided by 255; 16-bit RGB PNGs are read by Pillow as 8-bit RGB. The
wide grey modes, where ``convert("RGB")`` would clip most values to white or black, are scaled:

- ``I;16`` (16-bit grey, e.g. a 16-bit PNG or TIFF): divided by 65535;
- ``I`` (32-bit integers): divided by 65535 when every value lies in 0..65535, else by the
  maximum value (negative values become 0);
- ``F`` (32-bit floats, e.g. a float TIFF): used as they are when every value lies in [0, 1],
  else divided by the maximum value (negative values become 0); NaN or infinite pixels are an
  error.

Grey is replicated to the three channels.

Images are decoded upright: an EXIF orientation (a phone photo stored sideways with orientation
6 or 8, or upside down with 3) is applied with Pillow's ``ImageOps.exif_transpose`` before the
conversion, for every mode. An image without an orientation, or with 1, is decoded exactly as
stored; so is one whose EXIF block cannot be read.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from vprkit import inputs
from vprkit.errors import ParameterError, VprkitError, shown

WIDE_GREY_MODES = ("I", "F")  # and every "I;16..." mode

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _wide_grey(im: Image.Image) -> torch.Tensor:
    """A 16-bit, 32-bit integer or float grey image as float RGB (3, H, W) in [0, 1]."""
    values = np.asarray(im).astype(np.float32, copy=True)
    if values.ndim != 2:
        raise ValueError(f"unexpected pixel array of shape {values.shape} for mode {im.mode}")
    if im.mode.startswith("I;16"):
        values /= 65535.0
    elif values.size:
        if not np.isfinite(values).all():
            raise ValueError(f"mode {im.mode} image has NaN or infinite pixel values")
        low, high = float(values.min()), float(values.max())
        top = 65535.0 if im.mode == "I" else 1.0
        if low < 0 or high > top:
            np.maximum(values, 0.0, out=values)
            if high > 0:
                values /= high
        elif im.mode == "I":
            values /= 65535.0
    grey = torch.from_numpy(values)
    return grey.unsqueeze(0).expand(3, -1, -1).contiguous()


_ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 as stored, 2..8 flipped and/or turned
_TRANSPOSE_IN_PLACE = "in_place" in inspect.signature(ImageOps.exif_transpose).parameters  # >= 9.4


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) still to apply to a loaded image: 1 where it has none, where
    the value is not 1..8, or where its EXIF block cannot be read (the image is then used as
    stored), and for a TIFF, which Pillow's reader turns itself as it loads it (every version
    from 9.1; the 9.x versions keep the tag, which must then not be applied a second time)."""
    if im.format == "TIFF":
        return 1
    try:
        with warnings.catch_warnings():  # Pillow's "Corrupt EXIF data" for a broken block
            warnings.simplefilter("ignore")
            value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block: the image as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(im: Image.Image) -> Image.Image:
    """A loaded image turned as its EXIF orientation says (``ImageOps.exif_transpose``), in
    place on Pillow >= 9.4; ``im`` itself, untouched, where it has no orientation to apply."""
    if _exif_orientation(im) == 1:
        return im
    try:
        if _TRANSPOSE_IN_PLACE:
            ImageOps.exif_transpose(im, in_place=True)
            return im
        turned = ImageOps.exif_transpose(im)  # Pillow 9.1-9.3: a turned copy
        return turned if turned is not None else im
    except Exception:  # rewriting the EXIF block failed: the pixels are as stored or turned
        return im


def load_image(path: str | Path | IO[bytes]) -> torch.Tensor:
    """RGB image as a float tensor (3, H, W) in [0, 1], upright as its EXIF orientation says;
    grey, palette and RGBA are converted, 16-bit and float grey are scaled (see the module's
    docstring)."""
    with Image.open(path) as opened:
        opened.load()  # a decoding error is raised here, not hidden by the orientation step
        im = _upright(opened)
        if im.mode in WIDE_GREY_MODES or im.mode.startswith("I;16"):
            return _wide_grey(im)
        im = im.convert("RGB")
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        tensor = data.view(im.height, im.width, 3).permute(2, 0, 1)
    return tensor.float().div_(255.0)


def read_image(path: Path) -> tuple[torch.Tensor, bytes]:
    """``load_image`` of the file and the SHA-256 of its bytes (read once for both), which the
    descriptor file keeps so that a resumed or extended extraction can check its images.

    Only a regular file (or a link to one) of at most ``vprkit.inputs.IMAGE_FILE_LIMIT`` bytes
    is read: a FIFO, a device or a larger file raises ``VprkitError`` naming it."""
    data = inputs.read_bytes(path, "image", inputs.IMAGE_FILE_LIMIT)
    return load_image(io.BytesIO(data)), hashlib.sha256(data).digest()


def file_sha256(path: Path) -> bytes:
    """SHA-256 of a regular file's bytes, read in blocks (``VprkitError`` for a FIFO, a device,
    a folder: ``vprkit.inputs.open_input``)."""
    digest = hashlib.sha256()
    with inputs.open_input(path, "image") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.digest()


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a (3, H, W) image in [0, 1]."""
    mean = torch.tensor(MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(STD, dtype=image.dtype).view(3, 1, 1)
    return (image - mean) / std


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize of (3, H, W) or (N, 3, H, W) (torchvision's default)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batched = image if image.dim() == 4 else image.unsqueeze(0)
    out = F.interpolate(batched, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out if image.dim() == 4 else out.squeeze(0)


def scale_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """(H // scale, W // scale), at least 1 x 1: the image size of scale ``scale``."""
    return max(1, height // scale), max(1, width // scale)


def view_size(resize: tuple[int, int] | None, view: str, scale: int) -> tuple[int, int] | None:
    """(h, w) of ``view``'s images at ``scale`` for an extraction at ``resize`` (None: they
    vary, at native size or for ``single_query``)."""
    if resize is None or view == "single_query":
        return None
    if view == "five_crops":
        return scale_size(min(resize), min(resize), scale)
    return scale_size(*resize, scale)  # hard_resize, central_crop


def preprocess(
    image: torch.Tensor, size: tuple[int, int] | None, scales: Sequence[int], view: str = "hard_resize"
) -> list[torch.Tensor]:
    """Normalised image at each scale, as ``view`` sees it (``vprkit.descriptors.views``): a (3, h, w)
    tensor per scale, or (5, 3, h, w) for ``five_crops``."""
    image = normalize(image)
    if view != "hard_resize":
        if size is None:
            raise ParameterError("resize", f"view {view} needs a resize (H, W)")
        image = view_image(image, view, size)
    elif size is not None:
        image = resize(image, size)
    h, w = image.shape[-2:]
    return [image if s == 1 else resize(image, scale_size(h, w, s)) for s in scales]


def view_image(image: torch.Tensor, view: str, size: tuple[int, int]) -> torch.Tensor:
    """A normalised (3, H, W) query image as the benchmark's ``_test_query_transform`` makes
    ``view`` of it for ``resize = size``: ``single_query`` (shorter side to min(size), aspect
    kept), ``central_crop`` (nearest-neighbour scaling by the factor that covers ``size``, then
    the central ``size`` crop) or ``five_crops`` ((5, 3, m, m) with m = min(size))."""
    import torchvision.transforms.functional as TF

    shorter = min(size)
    if view == "single_query":
        return TF.resize(image, shorter, antialias=True)
    if view == "central_crop":
        factor = max(size[0] / image.shape[-2], size[1] / image.shape[-1])
        scaled = F.interpolate(image.unsqueeze(0), scale_factor=factor).squeeze(0)
        return TF.center_crop(scaled, list(size))
    if view == "five_crops":
        resized = TF.resize(image, shorter, antialias=True)
        return torch.stack(TF.five_crop(resized, [shorter, shorter]))
    raise ValueError(f"unknown view {view!r}")


class ImageScalesDataset(Dataset):
    """Items are (index, [image at each scale], error message or None, SHA-256 of the file);
    ``view`` (``vprkit.descriptors.views``) makes each image as that query view sees it.

    A corrupt image does not raise inside a DataLoader worker (which would print a worker
    traceback); it returns its error so that the caller can report it in one line.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        size: tuple[int, int] | None,
        scales: Sequence[int],
        view: str = "hard_resize",
    ):
        self.paths = list(paths)
        self.size = size
        self.scales = tuple(scales)
        self.view = view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            image, digest = read_image(path)
        except VprkitError as err:  # not a regular file, or too large: its line says so
            return index, None, str(err), None
        except Exception as err:
            why = f"{type(err).__name__}: {shown(err)}"
            return index, None, f"cannot read image {shown(path)}: {why}", None
        return index, preprocess(image, self.size, self.scales, self.view), None, digest


def collate_items(batch):
    """Keep the list: images of different native sizes cannot be stacked blindly."""
    return batch
