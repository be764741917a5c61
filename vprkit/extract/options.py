"""The options of running a network over images: one type, one place for every default.

``InferenceOptions`` holds what inference reads (``vprkit.extract.inference``: extraction,
training's caches and validation, locate); ``ExtractOptions`` extends it with what a descriptor
file needs besides (split, scales, views, storage type, NetVLAD's k-means split, sharding), so
that every default is written once. This module imports neither torch nor numpy: the command
line reads its defaults from here (``vprkit extract --help``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vprkit.choices import DEFAULT_RESIZE
from vprkit.descriptors.views import HARD_RESIZE

DTYPES = ("float32", "float16")  # storage types of the descriptors


@dataclass
class InferenceOptions:
    """How to run a network over images.

    Attributes:
        resize: ``(H, W)`` every image is resized to; None keeps each image's own size (images
            of different sizes are batched by size).
        batch_size: images per inference batch.
        workers: image-decoding processes (0: decode in this process).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        half: reduced-precision inference (float16 on CUDA, bfloat16 on a CPU).
        seed: seed of random weights (``weights="none"``) and of NetVLAD's k-means sampling
            (``sample_local_features``).
        cluster_images: at most this many images sampled for NetVLAD's k-means.
        cluster_features_per_image: local features sampled per image for the k-means.
    """

    resize: tuple[int, int] | None = DEFAULT_RESIZE  # (H, W); None: native image size
    batch_size: int = 16
    workers: int = 2
    device: str = "auto"
    half: bool = False
    seed: int = 0
    cluster_images: int = 500
    cluster_features_per_image: int = 100


@dataclass
class ExtractOptions(InferenceOptions):
    """How to run the network over a split; everything that changes the descriptors is stored
    in the file. Every field of ``InferenceOptions``, and:

    Attributes:
        split: split of the dataset to extract (``images/<split>``).
        scales: scales to extract; scale ``s`` is the (resized) image at ``H/s x W/s``.
        views: query views to store at every scale (``vprkit.descriptors.views``: ``hard_resize``,
            ``single_query``, ``central_crop``, ``five_crops``); ``hard_resize`` is always
            stored, and the database is always ``hard_resize``.
        dtype: storage type of the descriptors, ``"float32"`` or ``"float16"``.
        cluster_split: split whose database images initialise NetVLAD's clusters (None: ``split``).
        skip_unparsable: skip (and count) file names without coordinates instead of failing.
        overwrite: replace an existing or unfinished output instead of resuming or extending it.
        shard: ``(index, count)`` with index from 0: extract that contiguous slice of the rows
            only, into ``vprkit.extract.shards.shard_path(output, index, count)``.

    Construct it with keywords (``ExtractOptions(scales=(1, 2), resize=None)``): the fields of
    ``InferenceOptions`` come first in positional order.
    """

    split: str = "test"
    scales: tuple[int, ...] = (1,)
    views: tuple[str, ...] = (HARD_RESIZE,)
    dtype: str = "float32"
    cluster_split: str | None = None  # images for NetVLAD's k-means; default: the split's
    skip_unparsable: bool = False
    overwrite: bool = False
    shard: tuple[int, int] | None = None  # (index from 0, count): extract that slice only


__all__ = ["DTYPES", "ExtractOptions", "InferenceOptions"]
