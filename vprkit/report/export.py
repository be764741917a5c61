"""Exports to hloc (cvg/Hierarchical-Localization), the 6-DoF localisation that follows retrieval.

- ``export_pairs``: a retrieval pairs file, one ``name1 name2`` per line (query first), as hloc's
  ``pairs_from_retrieval`` writes and ``parse_retrieval`` / ``match_features`` read; the ranking is
  vprkit's exact search.
- ``export_hloc``: hloc's global-feature file: an HDF5 group per image, named by the image name
  (a ``/`` in it makes nested groups), holding the dataset ``global_descriptor`` of shape (D,),
  float32; hloc's ``pairs_from_retrieval`` ranks it by dot product.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vprkit.choices import ROLES
from vprkit.errors import ParameterError, VprkitError, shown
from vprkit.files import atomic_output, guarded_write, output_lock, partial_path, require_space
from vprkit.search.exact import blocked_search
from vprkit.store import DescriptorFile, parse_scale_spec, spec_name
from vprkit.store.checks import refuse_shard
from vprkit.store.hloc import HLOC_KEY, GlobalFeatureWriter

NORM_TOLERANCE = 1e-3  # |norm - 1| beyond which hloc's dot product no longer ranks as L2 does


def resolve_scale(store: DescriptorFile, scale: str | None) -> tuple[int, ...]:
    """The scale spec ``scale`` (``"1"``, ``"1+2+3"``) checked against ``store``; None: its first."""
    return store.check_spec(parse_scale_spec(scale) if scale else (store.scales[0],))


def _open(path: str | Path, output: Path) -> DescriptorFile:
    store = DescriptorFile(path)
    try:
        refuse_shard(store)
        if output.exists() and os.path.samefile(store.path, output):
            raise VprkitError(f"{output} is the descriptor file itself; choose another output")
    except BaseException:
        store.close()
        raise
    return store


def _check_rows(value: int | None, what: str) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
    ):
        raise VprkitError(f"{what} must be an integer of at least 1, got {value!r}")


def _pair_names(names: list[str], prefix: str, role: str) -> list[str]:
    """``prefix + name`` for each name; one error for the first that a pairs line cannot hold."""
    out = [prefix + n for n in names]
    for name in out:
        if name.split() != [name]:
            raise VprkitError(
                f"{role} image name '{shown(name, 200)}' is empty or contains white space, which "
                "a pairs file (one 'name1 name2' per line) cannot hold; rename the image"
            )
    return out


def export_pairs(
    path: str | Path,
    output: str | Path,
    top_k: int = 20,
    scale: str | None = None,
    database_pairs: bool = False,
    block_rows: int | None = None,
    db_prefix: str = "",
    query_prefix: str = "",
) -> Path:
    """Write hloc's retrieval pairs file: each query's ``top_k`` database images, nearest first.

    The ranking is vprkit's exact search: squared L2 on the stored descriptors (the scale or
    pyramid asked for). For L2-normalised descriptors (NetVLAD; GeM with ``--l2 after_pool``; not
    GeM's default ``before_pool``, of norm about 1.1) this orders like the dot product of hloc's
    ``pairs_from_retrieval``; hloc also drops pairs of negative dot product (``min_score=0``),
    vprkit always writes ``top_k`` per image.

    Args:
        path: a complete descriptor file (not a lone shard).
        output: the text file to write (atomically: whole or not at all).
        top_k: pairs per image, 1 to the database images available.
        scale: ``"1"`` or a pyramid ``"1+2+3"``; None: the file's first scale.
        database_pairs: database-to-database pairs (for SfM): each database image and its
            ``top_k`` nearest other database images (itself excluded).
        block_rows: rows searched at a time, queries and database (None: about 256 MiB of rows).
        db_prefix, query_prefix: text put before the database and query names (``""``: the
            names as stored, relative to their image folders); use the same as ``export_hloc``.

    Returns:
        ``output``, one ``name1 name2`` line per pair (query first), grouped by query.

    Raises:
        VprkitError: a missing, damaged or shard file, an unknown scale, a bad ``top_k`` or
            ``block_rows``, or a name with white space (the first is named).
    """
    output = Path(output)
    _check_rows(top_k, "top_k")
    _check_rows(block_rows, "block_rows")
    source = "database" if database_pairs else "queries"
    with _open(path, output) as store:
        scales = resolve_scale(store, scale)
        n_db, n_src = store.num("database"), store.num(source)
        available = n_db - 1 if database_pairs else n_db
        if top_k > available:
            other = "other database" if database_pairs else "database"
            hint = f"; choose --top-k up to {available}" if available else ""
            raise VprkitError(
                f"top_k {top_k} is more than the {available} {other} images of {store.path}{hint}"
            )
        if n_src == 0:
            raise VprkitError(f"{store.path} has no {source} images to pair")
        db_names = _pair_names(store.names("database"), db_prefix, "database")
        src_names = db_names if database_pairs else _pair_names(store.names("queries"), query_prefix, "query")
        block = block_rows or store.default_block_rows()
        k = top_k + 1 if database_pairs else top_k
        with atomic_output(output, "w", encoding="utf-8") as handle:
            for start, rows in store.iter_blocks(source, scales, block):
                _, ids = blocked_search(rows, store.iter_blocks("database", scales, block), k)
                for row, found in enumerate(ids, start=start):
                    found = found[(found >= 0) & (found != row)] if database_pairs else found
                    handle.writelines(f"{src_names[row]} {db_names[j]}\n" for j in found[:top_k])
    return output


def _hloc_names(
    store: DescriptorFile, roles: Sequence[str], prefixes: dict[str, str]
) -> dict[str, list[str]]:
    """The group name of every image of ``roles``; one error for a name hloc cannot key."""
    names: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for role in roles:
        names[role] = [prefixes[role] + n for n in store.names(role)]
        for name in names[role]:
            parts = name.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise VprkitError(
                    f"{role} image name '{shown(name, 200)}' is no HDF5 group name "
                    "that reads back the same (an empty, '.' or '..' part)"
                )
            if name in seen:
                both = (
                    "both a database and a query image"
                    if seen[name] != role
                    else "twice among the database images"
                    if role == "database"
                    else "twice among the queries"
                )
                raise VprkitError(
                    f"image name '{shown(name, 200)}' is {both}; hloc keys descriptors by name: "
                    "give distinct prefixes, e.g. --db-prefix db/ --query-prefix query/"
                )
            seen[name] = role
    return names


def _write_groups(
    writer: GlobalFeatureWriter,
    store: DescriptorFile,
    names: dict[str, list[str]],
    scales: tuple[int, ...],
    block: int,
    normalize: bool,
) -> tuple[float, str]:
    """Write every image's group; the stored norm farthest from 1 and its image's name."""
    worst = (1.0, "")
    for role, role_names in names.items():
        for start, rows in store.iter_blocks(role, scales, block):
            norms = np.linalg.norm(rows, axis=1)
            i = int(np.abs(norms - 1).argmax()) if len(norms) else 0
            if len(norms) and abs(norms[i] - 1) > abs(worst[0] - 1):
                worst = (float(norms[i]), role_names[start + i])
            if normalize:
                rows = (rows / np.maximum(norms, 1e-12)[:, None]).astype(np.float32)
            for name, row in zip(role_names[start : start + len(rows)], rows, strict=True):
                writer.add(name, row)
    return worst


def export_hloc(
    path: str | Path,
    output: str | Path,
    scale: str | None = None,
    roles: Sequence[str] = ROLES,
    overwrite: bool = False,
    db_prefix: str = "",
    query_prefix: str = "",
    block_rows: int | None = None,
    normalize: bool = False,
) -> Path:
    """Write hloc's global-feature file (as ``hloc.extract_features`` writes for NetVLAD & co).

    For every image of ``roles``, a group named ``prefix + name`` (names keep their ``/``, which
    h5py makes nested groups; hloc's ``list_h5_names`` finds them again) holding the dataset
    ``global_descriptor``: the image's (D,) float32 descriptor at ``scale``, as stored (hloc
    stores float16 with its ``as_half``; float32 loses nothing). hloc's ``pairs_from_retrieval``
    selects database and queries by name prefix (``db_prefix=``, ``query_prefix=``) and ranks by
    dot product: a warning says when the descriptors are not L2-normalised (GeM's default
    ``--l2 before_pool`` gives norms of about 1.1), unless ``normalize`` divides each by its norm.

    Args:
        path: a complete descriptor file (not a lone shard).
        output: the ``.h5`` to write; written as ``<output>.partial`` and renamed when done.
        scale: ``"1"`` or a pyramid ``"1+2+3"``; None: the file's first scale.
        roles: which images: ``"database"``, ``"queries"`` or both (the default).
        overwrite: replace an existing ``output`` (else refused).
        db_prefix, query_prefix: text put before the database and query names (default ``""``:
            the names as stored); hloc needs distinct names, e.g. ``db/`` and ``query/``.
        block_rows: rows read at a time (None: about 256 MiB of rows).
        normalize: write each descriptor divided by its L2 norm (hloc's dot product is then the
            cosine similarity; vprkit's own ranking, ``export_pairs``, is L2 on the stored rows).

    Returns:
        ``output``.

    Raises:
        VprkitError: a missing, damaged or shard file, an unknown scale or role, an existing
            output without ``overwrite``, a name in both roles (or twice), a failed write.
    """
    output = Path(output)
    roles = tuple(roles)
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles or len(set(roles)) != len(roles):
        raise VprkitError(f"bad roles {roles!r}: give database, queries or both, once each")
    _check_rows(block_rows, "block_rows")
    with _open(path, output) as store, output_lock(output):
        scales = resolve_scale(store, scale)
        if output.exists() and not overwrite:
            raise ParameterError("overwrite", f"{output} exists; pass overwrite to replace it")
        names = _hloc_names(store, roles, {"database": db_prefix, "queries": query_prefix})
        block = block_rows or store.default_block_rows()
        partial = partial_path(output)
        partial.unlink(missing_ok=True)  # left by a killed run: we hold the lock
        require_space(partial, sum(map(len, names.values())) * (4 * store.dim + 4096))
        with guarded_write(partial, output):
            with GlobalFeatureWriter(partial, output) as writer:
                norm, name = _write_groups(writer, store, names, scales, block, normalize)
            partial.replace(output)
    if abs(norm - 1) > NORM_TOLERANCE and not normalize:
        warnings.warn(
            f"{path} at scale {spec_name(scales)} is not L2-normalised ('{shown(name, 200)}'"
            f" has norm {norm:.4g}); hloc ranks by dot product, which then orders unlike "
            "vprkit's L2 search (--l2-normalise writes unit rows)",
            stacklevel=2,
        )
    return output


__all__ = ["HLOC_KEY", "export_hloc", "export_pairs", "resolve_scale"]
