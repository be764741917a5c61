"""One validation of everything a descriptor file records, run when ``DescriptorFile`` opens it.

Every header attribute (``model``, ``aggregation``, ``dataset``, ``preprocessing``, ``dtype``),
every scale's attributes (``image_size*``, ``rows_done_*``) and an ensemble's ``/combine``
record are checked for their types, ranges and sizes (the limits are in ``vprkit.store.checks``:
image sides 1..16384, NetVLAD clusters 1..4096, dimensions up to 2^20...), so that every command
meets valid values or one line naming the file and the attribute. Fields that a file need not
hold are checked where present; what rebuilding its network needs (a registered backbone and
aggregation) is checked by ``vprkit.models.validate_model_config`` where it is rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import h5py

from vprkit.choices import L2_PLACEMENTS, ROLES
from vprkit.descriptors.pyramid import NO_RULE, RULES
from vprkit.errors import VprkitError, shown
from vprkit.store.checks import (
    DAMAGED,
    MAX_CLUSTERS,
    MAX_DEPTH,
    MAX_DIM,
    MAX_INPUTS,
    MAX_ROWS,
    MAX_SHARDS,
    MISSING,
    PRECISIONS,
    Where,
    boolean,
    ensemble_record,
    get,
    image_size,
    integer,
    is_int,
    items,
    mapping,
    model_record,
    name_problem,
    number,
    one_of,
    plain_name,
    sha256_hex,
    text,
)
from vprkit.store.format import FORMAT, FORMAT_VERSION, MAX_ATTR_CHARS, PCA_ARRAYS, Header, _json_dict

DTYPES = ("float32", "float16")
AGGREGATION_TYPES = (*RULES, NO_RULE, "ensemble")


def check_format(fmt: object, version: object, complete: object, file: str) -> tuple[int, bool]:
    """The root attributes ``format``, ``format_version`` and ``complete`` checked: (version,
    complete); one line where the file is no vprkit descriptor file of this version."""
    if not (isinstance(fmt, str) and fmt == FORMAT):
        raise VprkitError(f"{file} is not a vprkit descriptor file (no format={FORMAT!r})")
    if not is_int(version):
        Where(file, "header attribute", "format_version").fail(version, f"the integer {FORMAT_VERSION}")
    if version != FORMAT_VERSION:
        raise VprkitError(
            f"{file} has descriptor format version {version} (header attribute "
            f"'format_version'); this vprkit reads version {FORMAT_VERSION}"
        )
    return FORMAT_VERSION, boolean(
        Where(file, "header attribute", "complete"), False if complete is MISSING else complete
    )


def check_names(names: list[str], role: str, file: str) -> None:
    """Refuse a stored image name that would name a file outside the role's folder (see
    ``checks.name_problem``): names are resolved inside the recorded folder only."""
    for i, name in enumerate(names):
        problem = name_problem(name)
        if problem:
            raise VprkitError(
                f"{file}: {role} name {i} {shown(repr(name), 80)} {problem}: names "
                f"are relative to the {role} folder, inside it ({DAMAGED})"
            )


def read_header(attrs: Mapping, file: str) -> Header:
    """The file's ``Header``, each of its five attributes read and checked (``check_header``)."""
    values = {}
    for key in Header.JSON_FIELDS:
        at = Where(file, "header attribute", key)
        raw = get(attrs, key)
        try:
            values[key] = _json_dict(raw)
        except (ValueError, TypeError, UnicodeError, RecursionError):
            at.fail(raw, "a JSON object")
    dtype = one_of(Where(file, "header attribute", "dtype"), get(attrs, "dtype"), DTYPES)
    header = Header(**values, dtype=str(dtype))
    check_header(header, file)
    return header


def check_header(header: Header, file: str) -> None:
    """Check the header's fields (a shard's rows against the file's images: ``check_counts``)."""

    def at(key: str) -> Where:
        return Where(file, "header attribute", key)

    model_record(header.model, at("model"))
    _aggregation(header.aggregation, at("aggregation"))
    _dataset(header.dataset, at("dataset"), None)
    _preprocessing(header.preprocessing, at("preprocessing"), 0)
    one_of(at("dtype"), header.dtype, DTYPES)


def check_counts(header: Header, file: str, counts: Mapping[str, int]) -> None:
    """Check that a shard's recorded rows are the file's images (``counts`` per role)."""
    if "shard" in header.dataset:
        _shard(header.dataset["shard"], Where(file, "header attribute", "dataset.shard"), counts)


def _aggregation(agg: dict, at: Where) -> None:
    kind = one_of(at.at("type"), get(agg, "type"), AGGREGATION_TYPES)
    if kind in ("gem", "power_mean"):
        number(at.at("p"), get(agg, "p"), 0, 1000, low_open=True)
        if "eps" in agg:
            number(at.at("eps"), agg["eps"], 0, 1)
    if kind == "netvlad":
        integer(at.at("clusters"), get(agg, "clusters"), 1, MAX_CLUSTERS)
        if "dim" in agg:
            integer(at.at("dim"), agg["dim"], 1, MAX_DIM)
    if "l2" in agg:
        one_of(at.at("l2"), agg["l2"], L2_PLACEMENTS, optional=True)
    if "aggregation" in agg:
        text(at.at("aggregation"), agg["aggregation"])


def _dataset(data: dict, at: Where, counts: Mapping[str, int] | None) -> None:
    if "root" in data:
        text(at.at("root"), data["root"])
    if "split" in data:
        plain_name(at.at("split"), data["split"])
    if "skipped_unparsable" in data:
        integer(at.at("skipped_unparsable"), data["skipped_unparsable"], 0, MAX_ROWS)
    if "merged_shards" in data:
        integer(at.at("merged_shards"), data["merged_shards"], 1, MAX_SHARDS)
    if "shard" in data:
        _shard(data["shard"], at.at("shard"), counts)


def _shard(value: object, at: Where, counts: Mapping[str, int] | None) -> None:
    shard = mapping(at, value)
    assert shard is not None
    count = integer(at.at("count"), get(shard, "count"), 1, MAX_SHARDS)
    integer(at.at("index"), get(shard, "index"), 0, count - 1)
    if "names_sha256" in shard:  # (merge needs it: vprkit.extract.shards)
        sha256_hex(at.at("names_sha256"), shard["names_sha256"])
    for role in ROLES:
        total = MAX_ROWS
        if f"{role}_total" in shard:
            total = integer(at.at(f"{role}_total"), shard[f"{role}_total"], 0, MAX_ROWS)
        if f"{role}_rows" not in shard:
            continue
        rows = shard[f"{role}_rows"]
        held = None if counts is None else counts[role]
        ok = (
            isinstance(rows, list)
            and len(rows) == 2
            and all(is_int(r) for r in rows)
            and 0 <= rows[0] <= rows[1] <= total
            and (held is None or rows[1] - rows[0] == held)
        )
        if not ok:
            what = "" if held is None else f", {held} apart (the file's {role} images)"
            at.at(f"{role}_rows").fail(rows, f"[start, stop] with 0 <= start <= stop <= {total}{what}")


def _preprocessing(data: dict, at: Where, depth: int) -> None:
    if "resize" in data:
        image_size(at.at("resize"), data["resize"])
    if data.get("normalize") is not None:
        normalize = mapping(at.at("normalize"), data["normalize"])
        assert normalize is not None
        for key in ("mean", "std"):
            if key in normalize:
                values = items(at.at("normalize").at(key), normalize[key], 1, 4)
                for i, v in enumerate(values):
                    number(at.at("normalize").at(key).at(i), v, -1e6, 1e6)
    if "interpolation" in data:
        text(at.at("interpolation"), data["interpolation"])
    if "precision" in data:
        one_of(at.at("precision"), data["precision"], PRECISIONS)
    if "inputs" in data:  # an ensemble: its inputs' preprocessing
        if depth >= MAX_DEPTH:
            at.at("inputs").fail("...", f"ensembles nested at most {MAX_DEPTH} deep")
        for i, inp in enumerate(items(at.at("inputs"), data["inputs"], 1, MAX_INPUTS)):
            inner = mapping(at.at("inputs").at(i), inp)
            assert inner is not None
            _preprocessing(inner, at.at("inputs").at(i), depth + 1)


def role_counts(h5: h5py.File) -> dict[str, int]:
    """Images per role, from the names' shapes (KeyError... where the layout is damaged)."""
    return {role: int(h5[f"{role}/names"].shape[0]) for role in ROLES}


def check_scales(h5: h5py.File, file: str, counts: Mapping[str, int]) -> None:
    """Check every scale's ``image_size*`` (JSON null or [H, W]) and ``rows_done_*`` (images
    committed: 0..the role's images) attributes."""
    for key, group in h5["scales"].items():
        if not isinstance(group, h5py.Group):
            continue  # (the layout check reports it)
        for name, value in group.attrs.items():
            at = Where(file, "attribute", f"scales/{key}/{name}")
            if name == "image_size" or name.startswith("image_size_"):
                size = MISSING
                if isinstance(value, str):
                    try:
                        size = json.loads(value)
                    except ValueError:
                        pass
                image_size(at, value if size is MISSING else size)
            elif name.startswith("rows_done_"):
                role = "database" if name == "rows_done_database" else "queries"
                integer(at, value, 0, counts[role])


def check_combine(h5: h5py.File, file: str) -> None:
    """Check an ensemble's ``/combine`` record: its spec (inputs, their dimensions, weights)
    and the shapes and attributes of each input's PCA (read from metadata, not loaded)."""
    group = h5.get("combine")
    if group is None:
        return
    at = Where(file, "attribute", "combine/spec")
    raw = get(group.attrs, "spec")
    if isinstance(raw, (str, bytes)) and len(raw) > MAX_ATTR_CHARS:
        at.fail(f"{len(raw)} characters", f"at most {MAX_ATTR_CHARS} characters")
    try:
        spec = _json_dict(raw)
    except (ValueError, TypeError, UnicodeError, RecursionError):
        at.fail(raw, "a JSON object")
    ensemble_record(spec, at, 0, scales=False)
    for i, inp in enumerate(spec["inputs"]):
        pca = group.get(f"pca/{i}")
        if pca is not None:
            _pca(pca, file, f"combine/pca/{i}", int(inp["dim"]))


def _pca(group: h5py.Group, file: str, prefix: str, dim: int) -> None:
    def at(name: str, kind: str = "dataset") -> Where:
        return Where(file, kind, f"{prefix}/{name}")

    shapes: dict[str, tuple[int, ...] | None] = {}
    for name in PCA_ARRAYS:
        ds = group.get(name)
        if not isinstance(ds, h5py.Dataset):
            at(name).fail(MISSING if ds is None else "a group", "a float array")
        shapes[name] = ds.shape if ds.dtype.kind == "f" else None
    components = shapes["components"]
    if components is None or len(components) != 2 or not 1 <= components[0] <= dim or components[1] != dim:
        at("components").fail(components, f"a float array of shape (d, {dim}), 1 <= d <= {dim}")
    for name, wanted in (("mean", (dim,)), ("explained_variance", (components[0],))):
        if shapes[name] != wanted:
            at(name).fail(shapes[name], f"a float array of shape {wanted}")
    boolean(at("whiten", "attribute"), get(group.attrs, "whiten"))
    text(at("fitted_on", "attribute"), get(group.attrs, "fitted_on"))
    text(at("method", "attribute"), get(group.attrs, "method"))
    integer(at("rows", "attribute"), get(group.attrs, "rows"), 0, MAX_ROWS)
