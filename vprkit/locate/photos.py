"""Pipeline step: geolocalise new photos against a descriptor database.

``locate(photos, "gem.h5")`` rebuilds the network that made the database file (its backbone,
aggregation, weights or checkpoint, NetVLAD clusters, preprocessing; refused where the rebuilt
weights do not hash to the recorded fingerprint), runs the photos through it in batches at the
file's scale or pyramid, searches the database (exact, or an approximate ``index`` as evaluate),
and returns for each photo its top-K database matches and an estimated position: that of the best
match (UTM east/north with zone and letter, latitude/longitude where known, see ``vprkit.geo.positions``).

Confidence is the distance margin ``d(c) - d(1)``: ``d(1)`` is the squared L2 distance of the best
match and ``c`` the first candidate (in order of distance, among the ``CONFIDENCE_CANDIDATES``
nearest) lying more than ``threshold`` metres from the best match, i.e. the best alternative
*place*. A margin near 0 means another place fits as well (ambiguous); None means all candidates
lie at the best match's place. Photos whose names carry coordinates (benchmark names) also get
their error in metres, so that a located query split can be scored.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vprkit.choices import IMAGE_EXTENSIONS
from vprkit.data.datasets import parse_utm
from vprkit.descriptors.pyramid import pyramid
from vprkit.devices import half_dtype, resolve_device
from vprkit.errors import ParameterError, VprkitError, photo_text, shown
from vprkit.extract.inference import (
    InferenceOptions,
    fold_batch_norm,
    image_loader,
    infer_batch,
)
from vprkit.geo.positions import Position, position_of
from vprkit.inputs import check_regular, file_problem
from vprkit.models import DescriptorNet, VPRModel, build_model, fingerprint, validate_model_config
from vprkit.progress import ProgressCallback, progress_callback, progress_task
from vprkit.search.exact import blocked_search
from vprkit.store import DescriptorFile, parse_scale_spec, spec_name
from vprkit.store.checks import refuse_shard

CONFIDENCE_CANDIDATES = 100  # candidates searched for the confidence margin


@dataclass
class LocatedPhoto:
    """Where one photo was taken, by its best database match.

    Attributes:
        photo: the photo's path, as given or found in a given folder.
        position: the estimated position (the best match's).
        confidence: ``d(first candidate more than threshold from the best) - d(best)``, or
            None when every candidate lies at the best match's place.
        matches: the top-K database images: ``rank``, ``name``, ``distance`` (squared L2) and
            their ``position``.
        true_position: the photo's own UTM position where its name carries one, else None.
        error_m: metres between the estimated and the true position (None without a truth).
    """

    photo: str
    position: Position
    confidence: float | None
    matches: list[dict]
    true_position: tuple[float, float] | None = None
    error_m: float | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["position"] = self.position.to_dict()
        out["photo"] = photo_text(self.photo)  # valid UTF-8 (``locate_output``)
        return out


@dataclass
class LocateResult:
    """What ``locate`` returns: one ``LocatedPhoto`` per readable photo, and the failures."""

    database: str
    scale: str
    top_k: int
    threshold: float
    located: list[LocatedPhoto]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (photo, reason)
    seconds: float = 0.0
    first_answer_seconds: float | None = None
    search: str = "exact"

    def to_dict(self) -> dict:
        return {
            "database": self.database,
            "scale": self.scale,
            "top_k": self.top_k,
            "threshold": self.threshold,
            "photos": len(self.located) + len(self.failed),
            "located": len(self.located),
            "search": self.search,
            "failed": [{"photo": photo_text(p), "error": photo_text(e)} for p, e in self.failed],
            "seconds": self.seconds,
            "first_answer_seconds": self.first_answer_seconds,
            "locations": [loc.to_dict() for loc in self.located],
        }


def find_photos(inputs: Sequence[str | Path]) -> list[Path]:
    """The photos named, and those under the folders named (recursively, sorted by path).

    Each must be a regular file or a link to one (``vprkit.inputs``): a FIFO, a device, a socket
    or a broken link, named or found in a folder with a photo extension, is refused with one
    line naming it, as extract refuses it, and never opened. (Folders with a photo extension are
    searched, not read.) Files that are not images are no error here: ``locate`` lists them."""
    photos: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()
            )
            if not found:
                raise VprkitError(f"no photos ({', '.join(IMAGE_EXTENSIONS)}) under {shown(item)}")
            problems = [(p, why) for p in found if (why := file_problem(p)) is not None]
            if problems:
                more = f" (and {len(problems) - 1} more such entries)" if len(problems) > 1 else ""
                raise VprkitError(
                    f"cannot read photo {shown(problems[0][0])}: {problems[0][1]}; fix or remove it{more}"
                )
            photos += found
        elif item.exists() or item.is_symlink():
            photos.append(check_regular(item, "photo"))
        else:
            raise VprkitError(f"{shown(item)} does not exist")
    if not photos:
        raise VprkitError("no photos given")
    return photos


def rebuild_network(store: DescriptorFile, seed: int = 0) -> DescriptorNet:
    """The network recorded in a descriptor file (a classic one, or a zoo model found by name
    in its registry), in eval mode on the CPU; one clear line where it cannot be rebuilt
    exactly (an ensemble, a missing checkpoint or weights file, a different weight
    fingerprint)."""
    m = store.model
    if m.get("type") == "ensemble":
        raise VprkitError(
            f"{store.path} is an ensemble: locate needs a file made by vprkit "
            "extract (locate against one of its inputs)"
        )
    for key in ("checkpoint", "weights"):
        value = m.get(key)
        if key == "weights" and (m.get("checkpoint") or value in ("imagenet", "none")):
            continue
        if value and not Path(value).is_file():
            raise VprkitError(
                f"the {key} {value} that made {store.path} is missing; locate needs "
                "the same file to rebuild the network"
            )
    config = validate_model_config(m, str(store.path), "model", "header attribute")
    torch.manual_seed(seed)
    model = build_model(config).eval()
    arrays = store.aggregation_arrays()
    if arrays and isinstance(model, VPRModel):  # NetVLAD clusters made by k-means at extraction
        model.aggregation.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    if fingerprint(model) != m.get("fingerprint"):
        why = {
            "none": "its random weights were made with another seed (pass --seed)",
            "imagenet": "the pretrained weights differ from those it was made with",
        }
        hint = (
            "the checkpoint file changed since"
            if m.get("checkpoint")
            else why.get(str(m.get("weights")), "the weights file changed since")
        )
        raise VprkitError(
            f"the network rebuilt from {store.path}'s record differs from the one that made it ({hint})"
        )
    return model


def locate(
    photos: Sequence[str | Path],
    database: str | Path,
    scale: str | None = None,
    top_k: int = 5,
    threshold: float = 25.0,
    batch_size: int = 16,
    workers: int = 0,
    device: str = "auto",
    index: str | None = None,
    nprobe: int = 16,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> LocateResult:
    """Locate each photo by its nearest database images; see the module's docstring.

    Args:
        photos: photo files or folders of photos.
        database: a complete descriptor file made by ``vprkit extract`` (or merge).
        scale: ``"1"`` or a pyramid ``"1+2+3"`` of the file's scales (None: its first).
        top_k: database matches reported per photo.
        threshold: metres beyond which a candidate counts as another place (confidence), and
            within which a located photo with a known position is right.
        batch_size: photos per inference batch.
        workers: image-decoding processes.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        index: faiss factory string for approximate search (None: exact), as ``evaluate``.
        nprobe: inverted lists visited per photo by IVF indexes (at least 1).
        seed: the seed random weights (``weights="none"``) were made with at extraction.
        progress: called as the photos are located (``vprkit.progress``); None: silent.

    Returns:
        A ``LocateResult``: a ``LocatedPhoto`` per readable photo, in the order found, the
        unreadable photos with their reasons, and the time taken (and to the first answer).

    Raises:
        VprkitError: a missing or unusable database, a network that cannot be rebuilt, no
            photos, a photo that is not a regular file (``find_photos``), bad options. Photos
            that cannot be read as images (or hold more than ``vprkit.inputs.IMAGE_FILE_LIMIT``
            bytes) are not errors: they are listed, with the reason, in ``LocateResult.failed``.
    """
    progress = progress_callback(progress)
    started = time.perf_counter()
    for name, value in (("top_k", top_k), ("batch_size", batch_size), ("nprobe", nprobe)):
        if value < 1:
            raise ParameterError(name, f"{name} must be at least 1, got {value}")
    if workers < 0:
        raise ParameterError("workers", f"workers must not be negative, got {workers}")
    if not threshold > 0:
        raise ParameterError("threshold", f"threshold must be a positive number of metres, got {threshold}")
    with DescriptorFile(database) as store:
        refuse_shard(store)
        scales = parse_scale_spec(scale) if scale else (store.scales[0],)
        store.check_spec(scales)
        n_db = store.num("database")
        if top_k > n_db:
            raise ParameterError("top_k", f"top_k {top_k} is more than the {n_db} database images")
        dev = resolve_device(device)
        model = _prepared(rebuild_network(store, seed), dev)
        paths = find_photos(photos)
        half = store.preprocessing.get("precision", "float32") != "float32"
        if half and store.preprocessing.get("precision") != str(half_dtype(dev)).split(".")[-1]:
            warnings.warn(
                f"{store.path} was made with {store.preprocessing['precision']} "
                f"inference; this device uses {half_dtype(dev)}",
                stacklevel=2,
            )
        resize = store.preprocessing.get("resize")
        options = InferenceOptions(
            resize=tuple(resize) if resize else None,
            batch_size=batch_size,
            workers=workers,
            device=str(dev),
            half=half,
        )
        search, searcher = _searcher(store, scales, index, nprobe, dev)
        k = min(n_db, max(top_k, CONFIDENCE_CANDIDATES))
        names, utm = store.names("database"), store.utm("database")
        result = LocateResult(
            database=str(database),
            scale=spec_name(scales),
            top_k=top_k,
            threshold=threshold,
            located=[],
            search=search,
        )
        with progress_task(progress, "locate", len(paths)) as task:
            for items in image_loader(paths, options, scales, dev):
                good = [it for it in items if not it[2]]
                result.failed += [(str(paths[it[0]]), str(it[2])) for it in items if it[2]]
                if good:
                    rows = _descriptors(model, good, scales, dev, half, store)
                    distances, ids = searcher(rows, k)
                    for it, d, i in zip(good, distances, ids, strict=True):
                        result.located.append(_located(str(paths[it[0]]), d, i, names, utm, top_k, threshold))
                    if result.first_answer_seconds is None:
                        result.first_answer_seconds = time.perf_counter() - started
                task.advance(len(items))
    result.seconds = time.perf_counter() - started
    return result


def _prepared(model: DescriptorNet, device: torch.device) -> DescriptorNet:
    model = model.to(device).to(memory_format=torch.channels_last)
    return fold_batch_norm(model)


def _searcher(store: DescriptorFile, scales, index: str | None, nprobe: int, device: torch.device):
    """The search over the database rows, on ``device`` (exact: faiss on a CPU, torch on a GPU;
    ``index``: on the GPU with a faiss GPU build): (label, function(rows, k) -> (distances, ids))."""
    if index:
        from vprkit.search.index import build_or_load, on_device, set_nprobe

        ann, _ = build_or_load(store, scales, index, store.default_block_rows())
        set_nprobe(ann, nprobe)
        ann, where = on_device(ann, device, nprobe)
        on_gpu = "" if where == "CPU" else f", {where}"
        return f"approximate ({index}, nprobe {nprobe}{on_gpu})", ann.search
    block = store.default_block_rows()
    database: Any = None
    if store.num("database") * store.dim * 4 <= 1 << 30:  # up to 1 GiB: read once, keep
        database = store.read_rows("database", scales, 0, store.num("database"))
        if device.type != "cpu":  # kept on the device, as float32 (the search's type)
            database = torch.from_numpy(database).to(device).float()

    def exact(rows: np.ndarray, k: int):
        blocks = [(0, database)] if database is not None else store.iter_blocks("database", scales, block)
        return blocked_search(rows, blocks, k, device)

    return "exact", exact


def _descriptors(
    model: DescriptorNet, items: list, scales, device, half: bool, store: DescriptorFile
) -> np.ndarray:
    """The photos' rows at the file's scale or pyramid, stored as the file stores its queries
    (its storage dtype, then the pyramid rule)."""
    outputs = infer_batch(model, items, scales, device, half)
    descs = [d.astype(store.dtype) for d, _ in outputs]
    return pyramid(store.aggregation, descs, [s for _, s in outputs])


def _located(
    photo: str,
    distances: np.ndarray,
    ids: np.ndarray,
    names: list[str],
    utm: np.ndarray,
    top_k: int,
    threshold: float,
) -> LocatedPhoto:
    keep = ids >= 0
    distances, ids = distances[keep], ids[keep]
    best = int(ids[0])
    apart = np.linalg.norm(utm[ids] - utm[best], axis=1)
    other = np.flatnonzero(apart > threshold)
    confidence = float(distances[other[0]] - distances[0]) if len(other) else None
    matches = [
        {
            "rank": r + 1,
            "name": names[int(i)],
            "distance": float(d),
            "position": position_of(names[int(i)], *utm[int(i)]).to_dict(),
        }
        for r, (d, i) in enumerate(zip(distances[:top_k], ids[:top_k], strict=True))
    ]
    position = position_of(names[best], *utm[best])
    truth, error = None, None
    try:
        truth = parse_utm(Path(photo).name)
    except VprkitError:
        pass
    if truth is not None:
        error = float(np.hypot(truth[0] - position.east, truth[1] - position.north))
    return LocatedPhoto(
        photo=photo,
        position=position,
        confidence=confidence,
        matches=matches,
        true_position=truth,
        error_m=error,
    )
