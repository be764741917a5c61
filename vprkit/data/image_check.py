"""Checks that a descriptor file still describes a split's images: the same names in the same
order and the same bytes (by the SHA-256 the file keeps), before an extraction resumes or
extends it."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vprkit.data.datasets import ROLES, Split
from vprkit.data.images import file_sha256
from vprkit.errors import VprkitError
from vprkit.progress import ProgressCallback, progress_task


def same_images(writer_or_file, split: Split) -> str | None:
    """None if the stored image lists equal the split's, else a description of the difference."""
    for role in ROLES:
        stored = writer_or_file.names(role)
        current = split.role(role).names
        if stored != current:
            if len(stored) != len(current):
                return f"{role}: {len(stored)} images stored, {len(current)} in the dataset"
            first = next(i for i, (a, b) in enumerate(zip(stored, current, strict=True)) if a != b)
            return f"{role} row {first}: {stored[first]!r} stored, {current[first]!r} in the dataset"
    return None


def changed_image(
    stored, split: Split, rows: dict[str, int], progress: ProgressCallback | None = None
) -> str | None:
    """None if the first ``rows[role]`` images of each role still have the bytes whose SHA-256
    ``stored`` (a descriptor file or writer) kept, else the first image that changed. Files made
    before vprkit kept hashes cannot be checked (a warning says so)."""
    checks = []
    for role in ROLES:
        hashes = stored.hashes(role)
        if hashes is None:
            warnings.warn(
                f"{stored.path} was made before vprkit kept image hashes: its images "
                "cannot be checked against the dataset's",
                stacklevel=3,
            )
            return None
        checks += [(role, i, hashes[i].tobytes()) for i in range(rows[role])]
    if not checks:
        return None
    paths = {role: split.role(role).paths() for role in ROLES}
    with (
        progress_task(progress, "check images", len(checks)) as task,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        for start in range(0, len(checks), 1024):  # in blocks: stop soon after a difference
            block = checks[start : start + 1024]
            digests = pool.map(_sha256_or_none, [paths[role][i] for role, i, _ in block])
            for (role, i, kept), digest in zip(block, digests, strict=True):
                name = split.role(role).names[i]
                if digest is None:
                    return f"{role} image {name} cannot be read"
                if digest != kept and any(kept):
                    return f"{role} image {name} has other bytes than when it was extracted"
            task.advance(len(block))
    return None


def _sha256_or_none(path: Path) -> bytes | None:
    try:
        return file_sha256(path)
    except (OSError, VprkitError):  # gone, unreadable, or no longer a regular file
        return None


def rows_with_descriptors(writer) -> dict[str, int]:
    """Per role, the images that some scale (or query view) of an unfinished file holds."""
    done = {role: max((writer.rows_done(role, [s]) for s in writer.scales), default=0) for role in ROLES}
    for s in writer.scales:
        for view in writer.views(s)[1:]:
            done["queries"] = max(done["queries"], writer.rows_done("queries", [s], view))
    return done
