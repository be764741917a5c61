"""Sharded extraction: n processes (GPUs, machines) each extract a slice; ``merge`` joins them.

``vprkit extract ROOT -o db.h5 --shard i/n`` (``i`` counts from 0, like torch.distributed ranks)
writes ``db.shard<i>of<n>.h5`` holding a contiguous slice of the database rows and of the query
rows: rows ``[N*i//n, N*(i+1)//n)`` of each. A shard is an ordinary descriptor file whose
``dataset`` attribute carries ``shard = {index, count, rows, totals, names_sha256}``; the hash of
the split's full image lists lets ``merge`` prove that the shards cover exactly the same images.

An extraction is cut into at most ``MAX_SHARDS`` (10000) shards: ``--shard i/n``, the Slurm
array size and torchrun's WORLD_SIZE are refused beyond it (a merge checks every shard).

``merge(shards, output)`` checks that the shards come from the same extraction (same model
fingerprint, preprocessing, storage type, dataset, scales, image lists) and that all n are there,
then streams them block by block into one file, written as ``output.partial`` and renamed when
complete, as extract does. The merged file equals an unsharded extraction row for row.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from vprkit.data.datasets import ROLES, ImageList, Split
from vprkit.descriptors.views import HARD_RESIZE, VIEWS
from vprkit.errors import ParameterError, VprkitError, shown
from vprkit.progress import ProgressCallback, progress_callback, progress_task
from vprkit.store import DescriptorFile, Header, writing
from vprkit.store.checks import refuse_shard as refuse_shard  # (re-exported: defined here before)
from vprkit.store.writer import rows_bytes

SHARD_SUFFIX = re.compile(r"\.shard(\d+)of(\d+)$")
MAX_SHARDS = 10000  # an extraction is cut into at most this many shards (a merge checks each)
logger = logging.getLogger(__name__)


def check_shard_count(count: int, where: str) -> None:
    """One clear line where ``count`` shards are more than ``MAX_SHARDS`` (``where`` says
    where the count came from)."""
    if isinstance(count, int) and count > MAX_SHARDS:
        raise VprkitError(f"{where}: too many shards (an extraction is cut into at most {MAX_SHARDS} shards)")


def parse_shard(text: str) -> tuple[int, int]:
    """``"0/4"`` -> (0, 4): shard index (from 0) and shard count (at most ``MAX_SHARDS``)."""
    match = re.fullmatch(r"[ \t]*([0-9]{1,12})[ \t]*/[ \t]*([0-9]+)[ \t]*", str(text))
    if not match:
        raise VprkitError(
            f"bad shard {shown(repr(text), 40)}: expected INDEX/COUNT such as 0/4 (index from 0)"
        )
    if len(match[2]) > 12 or int(match[2]) > MAX_SHARDS:
        raise VprkitError(f"bad shard {shown(repr(text), 40)}: at most {MAX_SHARDS} shards")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise VprkitError(
            f"bad shard {text!r}: the index counts from 0 to COUNT-1 "
            f"(0/{max(count, 1)} .. {max(count, 1) - 1}/{max(count, 1)})"
        )
    return index, count


def shard_path(output: str | Path, index: int, count: int) -> Path:
    """``db.h5`` -> ``db.shard1of4.h5``: where shard ``index`` of ``count`` is written."""
    output = Path(output)
    return output.with_name(f"{output.stem}.shard{index}of{count}{output.suffix}")


def shard_rows(total: int, index: int, count: int) -> tuple[int, int]:
    """Rows [start, stop) of ``total`` that shard ``index`` of ``count`` holds."""
    return total * index // count, total * (index + 1) // count


def names_sha256(names: dict[str, list[str]]) -> str:
    """Hash of the image lists of a split (``{role: names}``), in order."""
    text = "\n".join(f"{role}:{name}" for role in ROLES for name in names[role])
    return hashlib.sha256(text.encode()).hexdigest()


def take_shard(split: Split, index: int, count: int) -> tuple[Split, dict]:
    """The slice of ``split`` that shard ``index`` of ``count`` extracts, and its description."""
    info = {
        "index": index,
        "count": count,
        "names_sha256": names_sha256({r: split.role(r).names for r in ROLES}),
    }
    parts = {}
    for role in ROLES:
        images = split.role(role)
        start, stop = shard_rows(len(images), index, count)
        parts[role] = ImageList(
            folder=images.folder,
            names=images.names[start:stop],
            utm=images.utm[start:stop],
            skipped=images.skipped,
        )
        info[f"{role}_rows"] = [start, stop]
        info[f"{role}_total"] = len(images)
    return replace(split, database=parts["database"], queries=parts["queries"]), info


def _check_same(files: list[DescriptorFile]) -> None:
    """One line where the shard files are not of one extraction (each header was checked when
    its file was opened: ``vprkit.store.validate``; merge also needs each shard's hash)."""
    for f in files:
        if "names_sha256" not in f.dataset["shard"]:
            raise VprkitError(
                f"{f.path}: header attribute 'dataset.shard.names_sha256' is "
                "missing: merge cannot prove that the shards cover one image list "
                "(the file is damaged or was not written by vprkit)"
            )
    first = files[0]
    base = {k: v for k, v in first.dataset.items() if k != "shard"}
    for f in files[1:]:
        for what, mine, theirs in (
            ("model", f.model, first.model),
            ("preprocessing", f.preprocessing, first.preprocessing),
            ("storage dtype", f.dtype, first.dtype),
            ("scales", f.scales, first.scales),
            ("query views", [f.views((sc,)) for sc in f.scales], [first.views((sc,)) for sc in first.scales]),
            ("dataset", {k: v for k, v in f.dataset.items() if k != "shard"}, base),
        ):
            if mine != theirs:
                hint = ""
                if what == "model" and f.model.get("netvlad_init"):
                    hint = (
                        " (NetVLAD clusters made by k-means in each process can differ: "
                        "extract the shards from one --checkpoint)"
                    )
                raise VprkitError(
                    f"{f.path} and {first.path} are not shards of one extraction: their {what} differs{hint}"
                )
        if f.dataset["shard"]["names_sha256"] != first.dataset["shard"]["names_sha256"]:
            raise VprkitError(f"{f.path} and {first.path} are shards of different image lists")


def merge(
    shards: list[str | Path],
    output: str | Path,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Join the shard files of one extraction into ``output``; returns its path.

    Args:
        shards: the shard files, all n of one extraction, in any order.
        output: the descriptor file to write.
        overwrite: replace an existing ``output``.
        progress: called as the work goes (``vprkit.progress``); None: silent. The summary
            line is logged (``logging``, ``vprkit`` logger).

    Returns:
        The path of the merged file (``output``).
    """
    progress = progress_callback(progress)
    output = Path(output)
    paths = [Path(p) for p in shards]
    if not paths:
        raise ParameterError("shards", "no shard files given in shards")
    if output.exists() and not overwrite:
        raise ParameterError("overwrite", f"{output} exists; pass overwrite to replace it")
    files: list[DescriptorFile] = []
    try:
        for path in paths:
            f = DescriptorFile(path)
            files.append(f)
            if "shard" not in f.dataset:
                raise VprkitError(f"{path} is not a shard (it was extracted without --shard)")
        files.sort(key=lambda f: f.dataset["shard"]["index"])
        count = files[0].dataset["shard"]["count"]
        check_shard_count(count, f"{files[0].path} is a shard of {count}")
        indices = [f.dataset["shard"]["index"] for f in files]
        for f in files:
            if f.dataset["shard"]["count"] != count:
                raise VprkitError(
                    f"{f.path} is shard {f.dataset['shard']['index']} of "
                    f"{f.dataset['shard']['count']}, {files[0].path} of {count}"
                )
        duplicate = sorted({i for i in indices if indices.count(i) > 1})
        if duplicate:
            same = [str(f.path) for f in files if f.dataset["shard"]["index"] == duplicate[0]]
            raise VprkitError(f"shard {duplicate[0]} given twice: {', '.join(same)}")
        missing = sorted(set(range(count)) - set(indices))
        if missing:
            raise VprkitError(
                f"shard(s) {', '.join(map(str, missing))} of {count} missing "
                f"(given: {', '.join(str(p) for p in paths)})"
            )
        _check_same(files)
        return _write_merged(files, output, progress)
    finally:
        for f in files:
            f.close()


def _write_merged(files: list[DescriptorFile], output: Path, progress: ProgressCallback | None) -> Path:
    first = files[0]
    dataset = {k: v for k, v in first.dataset.items() if k != "shard"}
    dataset["merged_shards"] = len(files)
    header = Header(
        model=first.model,
        aggregation=first.aggregation,
        dataset=dataset,
        preprocessing=first.preprocessing,
        dtype=first.dtype,
    )
    names = {r: [n for f in files for n in f.names(r)] for r in ROLES}
    if names_sha256(names) != first.dataset["shard"]["names_sha256"]:
        raise VprkitError(
            f"the {len(files)} shards do not hold the images of the split they were "
            "cut from (a shard file was altered or renamed)"
        )
    utm = {r: np.concatenate([f.utm(r) for f in files]) for r in ROLES}
    kept = {r: [f.hashes(r) for f in files] for r in ROLES}
    hashes: dict[str, np.ndarray] | None = None
    if all(h is not None for r in ROLES for h in kept[r]):
        hashes = {r: np.concatenate([h for h in kept[r] if h is not None]) for r in ROLES}
    parts = {
        s: [(r, HARD_RESIZE) for r in ROLES] + [("queries", v) for v in first.views((s,))[1:]]
        for s in first.scales
    }
    total = sum(f.num(r) for f in files for s in first.scales for r, _ in parts[s])
    block = first.default_block_rows(64 << 20)
    aggregation = first.aggregation_arrays()
    # everything written after the names, checked and reserved with them before the first byte
    more = sum(
        rows_bytes(len(names[role]) * VIEWS[view], first.dim, first.dtype, first.stat_specs(s))
        for s in first.scales
        for role, view in parts[s]
    )
    more += sum(np.asarray(a).nbytes for a in aggregation.values())
    with writing(output) as out:
        writer = out.create(header, names, utm, hashes, more_bytes=more)
        if aggregation:
            writer.write_aggregation_arrays(aggregation)
        with progress_task(progress, f"merge {len(files)} shards", total) as task:
            for s in first.scales:
                stats = first.stat_specs(s)
                writer.add_scale(s, first.dim, stats, first.image_size(s))
                for view in first.views((s,))[1:]:
                    writer.add_view(s, view, first.dim, stats, first.image_size(s, view))
                for role, view in parts[s]:
                    row = 0  # images written so far
                    for f in files:
                        n = f.num(role)
                        for start in range(0, n, block):
                            stop = min(n, start + block)
                            c = VIEWS[view]  # rows per image
                            desc, values = f.read_raw(role, s, start * c, stop * c, view)
                            writer.write(role, s, row + start, desc, {k: values[k] for k in stats}, view)
                            task.advance(stop - start)
                        row += n
                    writer.commit_rows(role, [s], row, view)
    path = out.written
    assert path is not None  # the block ended without error
    logger.info(
        f"wrote {path}: {len(files)} shards, {len(names['database'])} database + "
        f"{len(names['queries'])} queries"
    )
    return path
