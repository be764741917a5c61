"""Pipeline step 1: run a network over a dataset split and write its descriptor file.

``extract(root, output, model_config, options)`` writes one HDF5 file (see ``vprkit.store``)
with every requested scale, plus the statistics that let any pyramid of those scales be formed
later without the network. The file is written as ``output.partial`` and renamed when complete;
an interrupted run resumes from the last committed batch, and a complete file is extended with
new scales only when it was made by the same model, preprocessing and images.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from vprkit.choices import DEFAULT_RESIZE
from vprkit.data.datasets import ROLES, Split, load_split
from vprkit.data.image_check import changed_image, rows_with_descriptors, same_images
from vprkit.data.images import MEAN, STD, view_size
from vprkit.descriptors.views import HARD_RESIZE, parse_views
from vprkit.devices import cpu_has_bf16, resolve_device
from vprkit.devices import half_dtype as _half_dtype
from vprkit.errors import ParameterError, VprkitError
from vprkit.extract.clusters import netvlad_clusters
from vprkit.extract.inference import check_items as _check_items
from vprkit.extract.inference import fold_batch_norm as _fold_batch_norm
from vprkit.extract.inference import image_loader as _loader
from vprkit.extract.inference import infer_batch as _infer
from vprkit.extract.options import DTYPES as DTYPES
from vprkit.extract.options import ExtractOptions as ExtractOptions
from vprkit.extract.shards import parse_shard, shard_path, take_shard
from vprkit.models import DescriptorNet, ModelConfig, VPRModel, build_model
from vprkit.models.aggregations import stat_names
from vprkit.progress import ProgressCallback, progress_callback, progress_task
from vprkit.store import DescriptorFile, DescriptorWriter, Header, Output, parse_scales, spec_name, writing

logger = logging.getLogger(__name__)



def image_size_for(checkpoint: str | Path | None, resize: tuple[int, int] | None,
                   native_size: bool) -> tuple[tuple[int, int] | None, str | None]:
    """The ``resize`` to extract at (None: native size) and a note for the user.

    Explicit options win (``resize`` or ``native_size``); without them a vprkit checkpoint's
    recorded training size is used, else the benchmark's 480 x 640. A size other than the one
    the checkpoint was trained at is allowed, with a note."""
    from vprkit.models.checkpoints import NOT_RECORDED, trained_image_size

    if resize is not None and native_size:
        raise ParameterError("resize", "give resize or native_size, not both", "native_size")
    recorded = trained_image_size(checkpoint) if checkpoint else NOT_RECORDED
    if resize is None and not native_size:
        if isinstance(recorded, str):  # NOT_RECORDED
            return DEFAULT_RESIZE, None
        return recorded, (f"extracting at {_size_text(recorded)}, the size {checkpoint} was "
                          "trained at (--resize H W or --native-size to choose another)")
    asked = None if native_size else resize
    if recorded != NOT_RECORDED and recorded != asked:
        return asked, (f"note: {checkpoint} was trained at {_size_text(recorded)}; extracting "
                       f"at {_size_text(asked)} as asked")
    return asked, None


def _size_text(size) -> str:
    return "the images' native size" if size is None else f"{size[0]}x{size[1]} (H x W)"


def _preprocessing(options: ExtractOptions, device: torch.device) -> dict:
    return {
        "resize": list(options.resize) if options.resize else None,
        "normalize": {"mean": list(MEAN), "std": list(STD)},
        "interpolation": "bilinear-antialias",
        "precision": str(_half_dtype(device)).removeprefix("torch.") if options.half else "float32",
    }


def _model_header(model: DescriptorNet, netvlad_init: dict | None) -> dict:
    return {**model.describe(), "netvlad_init": netvlad_init}


def _difference(stored: Header, current: Header) -> str | None:
    for key in ("model", "preprocessing", "dtype"):
        mine, asked = getattr(stored, key), getattr(current, key)
        if mine != asked:
            if key == "model":
                changed = [k for k in asked if mine.get(k) != asked[k]]
                return f"model differs in {', '.join(changed)}"
            return f"{key} differs ({mine} stored, {asked} asked)"
    return None


def extract(
    root: str | Path,
    output: str | Path,
    model_config: ModelConfig,
    options: ExtractOptions | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Extract descriptors of a split at every scale of ``options.scales``; returns the file.

    Runs the network once over the database and query images of ``options.split`` and writes
    one HDF5 descriptor file (``vprkit.store``): for every scale ``s`` the descriptors
    ``scales/<s>/database`` ``(N_db, D)`` and ``scales/<s>/queries`` ``(N_q, D)`` (``D`` =
    ``model.output_dim``, e.g. 256 for ResNet-18 conv4 + GeM, ``clusters x 256`` for NetVLAD),
    stored as ``options.dtype``, plus the per-image statistics (GeM: ``(N,)`` location counts;
    NetVLAD: ``(N, clusters)`` residual norms) from which any pyramid of the stored scales is
    formed later without the network. An untrained NetVLAD layer is initialised by k-means on
    local features of ``options.cluster_split``'s database images, stored in the file.

    The file is written as ``output.partial`` and renamed to ``output`` when complete; running
    again after an interruption resumes from the last committed batch, and an existing complete
    ``output`` made by the same model, preprocessing and images (same bytes, checked by SHA-256)
    is extended with the missing scales only.

    With ``options.shard = (i, n)`` only slice i of n is extracted, into
    ``vprkit.extract.shards.shard_path(output, i, n)`` (join the n files with
    ``vprkit.extract.shards.merge``).

    Args:
        root: dataset root in the benchmark layout (``root/images/<split>/{database,queries}``).
        output: descriptor file to write (``.h5``); its folder must exist.
        model_config: the network (backbone, aggregation, clusters, weights or checkpoint).
        options: how to run it (split, scales, resize, batch size, device, storage dtype, ...);
            ``ExtractOptions()`` when None.
        progress: called as the work goes (``vprkit.progress``); None: silent. The summary
            line is logged (``logging``, ``vprkit`` logger).

    Returns:
        The path of the complete descriptor file: ``output``, or the shard's path with
        ``options.shard``. When ``output`` already holds every requested scale it is returned
        untouched.

    Raises:
        VprkitError: bad options, an unreadable dataset or image, an output made differently
            (another model, preprocessing or images; pass ``options.overwrite``), an output
            locked by another process, or a full disk (committed rows are kept: rerun to resume).
    """
    progress = progress_callback(progress)
    options = options or ExtractOptions()
    root, output = Path(root), Path(output)
    if options.shard is not None:
        output = shard_path(output, *parse_shard("{}/{}".format(*options.shard)))
    scales = parse_scales(",".join(str(s) for s in options.scales))
    views = parse_views(",".join(options.views))
    device = _check_options(options, model_config, output, views)

    full_split = split = load_split(root, options.split, skip_unparsable=options.skip_unparsable,
                                    queries_optional=True)
    if not len(split.queries):
        logger.warning(f"note: {split.folder} has no query images: the file serves vprkit locate "
                       "(evaluate needs queries)")
    shard_info = None
    if options.shard is not None:
        split, shard_info = take_shard(full_split, *options.shard)
    torch.manual_seed(options.seed)
    model = build_model(model_config).eval()
    _check_input_rule(model, options, scales)

    with writing(output, resumable=True, overwrite=options.overwrite) as out:
        model = model.to(device)
        netvlad_init = netvlad_clusters(model, root, full_split, output, options, device,
                                        _preprocessing(options, device)) \
            if isinstance(model, VPRModel) else None
        model = model.to(memory_format=torch.channels_last)
        header = Header(
            model=_model_header(model, netvlad_init),
            aggregation=model.pyramid_params(),
            dataset={"root": str(root.resolve()), "split": split.name,
                     "skipped_unparsable": len(split.database.skipped) + len(split.queries.skipped),
                     **({"shard": shard_info} if shard_info else {})},
            preprocessing=_preprocessing(options, device),
            dtype=options.dtype,
        )
        model = _fold_batch_norm(model)  # after the fingerprint: the weights it hashes are kept
        plan, writer = _plan(out, header, split, scales, views, progress)
        if plan == "done":
            logger.info(f"{output} already holds scales {spec_name(scales)} and views "
                        f"{', '.join(views)}: nothing to do")
            return output
        if writer is None:
            writer = out.create(header, names={r: split.role(r).names for r in ROLES},
                                utm={r: split.role(r).utm for r in ROLES})
            if netvlad_init is not None and isinstance(model, VPRModel):
                writer.write_aggregation_arrays({k: v.detach().cpu().numpy()
                                                 for k, v in model.aggregation.state_dict().items()})
        _run(model, split, writer, scales, views, options, device, progress)
    path = out.written
    assert path is not None  # the block ended without error
    if logger.isEnabledFor(logging.INFO):
        with DescriptorFile(path) as f:
            logger.info(f"wrote {path}: {f.num('database')} database + {f.num('queries')} "
                        f"queries, {f.dim} dims, scales {', '.join(map(str, f.scales))}")
    return path


def _check_options(options: ExtractOptions, model_config: ModelConfig, output: Path,
                   views: tuple[str, ...]) -> torch.device:
    """One clear line for an option that cannot work, before any work; the device to run on."""
    if options.dtype not in DTYPES:
        raise ParameterError("dtype", f"unknown storage dtype {options.dtype!r}; use float32 or "
                                      "float16")
    if options.batch_size < 1:
        raise ParameterError("batch_size", f"batch_size must be at least 1, got "
                                           f"{options.batch_size}")
    for name in ("workers", "seed"):
        if getattr(options, name) < 0:
            raise ParameterError(name, f"{name} must not be negative, got "
                                       f"{getattr(options, name)}")
    if options.cluster_images < 1 or options.cluster_features_per_image < 1:
        raise VprkitError("NetVLAD's k-means needs at least 1 image and 1 feature per image")
    if model_config.clusters < 1:
        raise ParameterError("clusters", f"clusters must be at least 1, got "
                                         f"{model_config.clusters}")
    device = resolve_device(options.device)
    if options.half and device.type == "cpu" and cpu_has_bf16() is False:
        warnings.warn("--half on this CPU means bfloat16 without native support (no AVX512-BF16 "
                      "or AMX): expect it to be slower than float32", stacklevel=3)
    if options.resize is not None and min(options.resize) < 1:
        raise ParameterError("resize", f"bad resize {options.resize}: height and width must be "
                                       "positive")
    if options.resize is None and len(views) > 1:
        raise ParameterError("views", f"query views {', '.join(views[1:])} are made relative to "
                                      "resize (H, W); give a resize (native size has none)",
                             "resize")
    if output.is_dir():
        raise VprkitError(f"output {output} is a folder; give a file name such as gem.h5")
    if not output.parent.exists():
        raise VprkitError(f"output folder {output.parent} does not exist")
    return device


def _check_input_rule(model: DescriptorNet, options: ExtractOptions, scales: tuple[int, ...]) -> None:
    """The network's input rule (``DescriptorNet.input_rule``: side multiple, normalisation)
    at every scale."""
    rule, name = model.input_rule, model.label
    if (tuple(rule.mean), tuple(rule.std)) != (MEAN, STD):
        raise VprkitError(f"model {name} normalises with mean {rule.mean}, std {rule.std}; "
                          "vprkit extracts with ImageNet's only")
    if rule.multiple_of > 1:
        if options.resize is None:
            raise VprkitError(f"model {name} needs image sides that are multiples of "
                              f"{rule.multiple_of}: give --resize H W (it is evaluated at "
                              f"{rule.resize}), not --native-size")
        for s in scales:
            size = view_size(options.resize, HARD_RESIZE, s)
            if size is not None and any(side % rule.multiple_of for side in size):
                raise VprkitError(f"model {name} needs image sides that are multiples of "
                                  f"{rule.multiple_of}; scale {s} of --resize "
                                  f"{options.resize[0]} {options.resize[1]} is {size[0]}x{size[1]}")


def _plan(out: Output, header: Header, split: Split, scales: tuple[int, ...],
          views: tuple[str, ...],
          progress: ProgressCallback | None) -> tuple[str, DescriptorWriter | None]:
    """What this run does: ``("resume", writer)`` of the unfinished file, ``("extend", writer)``
    of the complete one with the missing scales or views, ``("done", None)`` where it holds them
    all, or ``("new", None)``; refuses files made by another model, preprocessing or images."""
    writer = out.resume()
    if writer is not None:
        problem = (_difference(writer.header(), header) or same_images(writer, split)
                   or changed_image(writer, split, rows_with_descriptors(writer), progress))
        if problem:
            writer.close()
            raise ParameterError("overwrite", f"{out.partial} is an unfinished extraction of "
                                 f"something else ({problem}); pass overwrite to start again")
        return "resume", writer
    existing = out.complete_file()
    if existing is None:
        return "new", None
    with existing:
        have = {s: existing.views((s,)) for s in existing.scales}
        holds_all = all(s in have and set(views) <= set(have[s]) for s in scales)
        problem = _difference(existing.header, header) or same_images(existing, split)
        if not problem and not holds_all:
            problem = changed_image(existing, split, {r: len(split.role(r)) for r in ROLES},
                                    progress)
    if problem:
        raise ParameterError("overwrite", f"{out.path} was made differently ({problem}); choose "
                                          "another output or pass overwrite")
    if holds_all:
        return "done", None
    return "extend", out.extend()


def _parts(writer: DescriptorWriter, split: Split, scales: tuple[int, ...],
           views: tuple[str, ...], dim: int, stats_spec: dict,
           resize: tuple[int, int] | None) -> list[tuple[str, str, list[int]]]:
    """Prepare the file's datasets; the (role, view, unfinished scales) passes still to run.
    Unfinished scales and views that this run does not ask for are dropped."""
    def unfinished(s: int, role: str, view: str = HARD_RESIZE) -> bool:
        return writer.rows_done(role, [s], view) < len(split.role(role))

    for s in writer.scales:
        if s not in scales and any(unfinished(s, r) for r in ROLES):
            logger.info(f"dropping unfinished scale {s} of {writer.path} (not in the scales "
                        "asked for)")
            writer.drop_scale(s)
            continue
        for view in writer.views(s)[1:]:
            if view not in views and unfinished(s, "queries", view):
                logger.info(f"dropping unfinished view {view} at scale {s} of {writer.path} "
                            "(not in the views asked for)")
                writer.drop_view(s, view)
    for s in scales:
        if s not in writer.scales:
            writer.add_scale(s, dim, stats_spec, view_size(resize, HARD_RESIZE, s))
        for view in views[1:]:
            if view not in writer.views(s):
                writer.add_view(s, view, dim, stats_spec, view_size(resize, view, s))
    passes = [(role, HARD_RESIZE) for role in ROLES] + [("queries", v) for v in views[1:]]
    return [(role, view, [s for s in scales if unfinished(s, role, view)])
            for role, view in passes if any(unfinished(s, role, view) for s in scales)]


def _run(model: DescriptorNet, split: Split, writer: DescriptorWriter, scales: tuple[int, ...],
         views: tuple[str, ...], options: ExtractOptions, device: torch.device,
         progress: ProgressCallback | None) -> None:
    """Run the network over every unfinished (role, view, scales) pass, committing each batch."""
    parts = _parts(writer, split, scales, views, model.output_dim, _stats_spec(model),
                   options.resize)
    if not parts:
        return
    starts = {(r, v): writer.rows_done(r, pend, v) for r, v, pend in parts}
    total = sum(len(split.role(r)) - starts[(r, v)] for r, v, _ in parts)
    started = time.perf_counter()
    stored_hashes = writer.hashes("queries")
    with progress_task(progress, f"extract scales {spec_name(scales)}", total) as task:
        done = 0
        for role, view, pending in parts:
            row = starts[(role, view)]
            paths = split.role(role).paths()[row:]
            view_label = "" if view == HARD_RESIZE else f", queries as {view}"
            task.describe(f"extract scales {spec_name(pending)}{view_label}")
            for items in _loader(paths, options, pending, device, view):
                _check_items(items)
                if view == HARD_RESIZE:
                    writer.write_hashes(role, row, [it[3] for it in items])
                else:
                    _same_bytes_as_stored(stored_hashes, split, row, items)
                outputs = _infer(model, items, pending, device, options.half)
                for s, (desc, stats) in zip(pending, outputs, strict=True):
                    writer.write(role, s, row, desc.astype(options.dtype), stats, view)
                row += len(items)
                writer.commit_rows(role, pending, row, view)
                done += len(items)
                rate = done / max(time.perf_counter() - started, 1e-9)
                task.advance(len(items), f"{rate:.1f} img/s")


def _same_bytes_as_stored(hashes, split: Split, row: int, items: list) -> None:
    """A query view reads each query again: its bytes must be those of the hard_resize pass."""
    if hashes is None:
        return
    for offset, item in enumerate(items):
        kept = hashes[row + offset].tobytes()
        if any(kept) and item[3] != kept:
            raise VprkitError(f"query image {split.queries.names[row + offset]} changed during "
                              "the extraction (other bytes than in the hard_resize pass); "
                              "rerun to extract it again")


def _stats_spec(model: DescriptorNet) -> dict:
    spec = model.stats_spec()  # what its pyramid rule needs (vprkit.descriptors.pyramid)
    return {name: spec[name] for name in stat_names(model.pyramid_params())}
