"""The descriptor file's constants, names of scales and pyramids, and its ``Header``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import h5py
import numpy as np

from vprkit.descriptors.views import HARD_RESIZE, VIEWS
from vprkit.errors import VprkitError

FORMAT = "vprkit.descriptors"
FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20
HEADER_ATTRS = ("model", "aggregation", "dataset", "preprocessing", "dtype", "vprkit_version", "created")
MAX_ATTR_CHARS = 1 << 20  # a header attribute longer than this is damage, not a header
HASH_BYTES = 32  # SHA-256 of each image file
STRINGS = h5py.string_dtype("utf-8")
PCA_ARRAYS = ("mean", "components", "explained_variance")
PCA_ATTRS = {"whiten": bool, "fitted_on": str, "rows": int, "method": str}


_SCALE_LIST = re.compile(r"\s*[1-9]\d{0,3}(\s*,\s*[1-9]\d{0,3})*\s*")
_SCALE_SPEC = re.compile(r"\s*[1-9]\d{0,3}(\s*\+\s*[1-9]\d{0,3})*\s*")


def parse_scales(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3): the scales to extract (distinct integers 1..9999)."""
    if not _SCALE_LIST.fullmatch(str(text)):
        raise VprkitError(
            f"bad scale list {str(text)!r}: expected distinct integers >= 1 separated by commas, like 1,2,3"
        )
    scales = tuple(int(s) for s in str(text).split(","))
    if len(set(scales)) != len(scales):
        raise VprkitError(f"bad scale list {str(text)!r}: a scale is repeated")
    return scales


def parse_scale_spec(text: str) -> tuple[int, ...]:
    """``"1+2+3"`` -> (1, 2, 3): one scale or a pyramid of several."""
    if not _SCALE_SPEC.fullmatch(str(text)):
        raise VprkitError(
            f"bad scale list {str(text)!r}: expected one scale such as 2 or a "
            "pyramid of distinct scales such as 1+2+3"
        )
    return parse_scales(str(text).replace("+", ","))


def spec_name(scales: Sequence[int]) -> str:
    """(1, 2, 3) -> ``"1+2+3"``: how a scale or pyramid is named."""
    return "+".join(str(s) for s in scales)


def _json_dict(text) -> dict:
    if isinstance(text, str):
        text.encode("utf-8")  # damaged bytes come back as surrogates: UnicodeEncodeError
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _json_attr(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def _text_attr(value) -> str | None:
    """A root attribute as text (None where it is absent)."""
    if value is None:
        return None
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def chunk_rows(dim: int, itemsize: int, rows: int) -> int:
    """Rows per HDF5 chunk of a (rows, dim) dataset: about ``CHUNK_BYTES`` a chunk."""
    return max(1, min(rows, CHUNK_BYTES // max(1, dim * itemsize)))


def descriptor_key(scale: int, role: str, view: str = HARD_RESIZE) -> str:
    """Where the descriptors of ``role`` (at ``view``, for queries) are stored at ``scale``."""
    if view == HARD_RESIZE:
        return f"scales/{scale}/{role}"
    if role != "queries" or view not in VIEWS:
        raise ValueError(f"no view {view!r} of {role}")
    return f"scales/{scale}/views/{view}"


def stats_key(scale: int, role: str, view: str, name: str) -> str:
    """Where statistic ``name`` of those descriptors is stored."""
    if view == HARD_RESIZE:
        return f"scales/{scale}/stats/{role}/{name}"
    return f"scales/{scale}/stats/views/{view}/{name}"


def rows_done_attr(role: str, view: str = HARD_RESIZE) -> str:
    """The scale group's attribute counting the images of ``role`` (at ``view``) committed."""
    return f"rows_done_{role}" if view == HARD_RESIZE else f"rows_done_view_{view}"


def image_size_attr(view: str = HARD_RESIZE) -> str:
    """The scale group's attribute with the image size of ``view`` at that scale."""
    return "image_size" if view == HARD_RESIZE else f"image_size_{view}"


def image_hashes(h5: h5py.File, role: str) -> np.ndarray | None:
    """The (N, 32) SHA-256 rows of ``role``, or None where the file has none."""
    ds = h5.get(f"{role}/sha256")
    return None if ds is None else ds[()]


@dataclass(frozen=True)
class Header:
    """What a descriptor file's rows were made with: its five header attributes.

    Attributes:
        model: the model (backbone, aggregation, clusters, weights, ``output_dim``,
            ``fingerprint``, ...); for an ensemble, ``type = "ensemble"`` and its inputs.
        aggregation: the pyramid rule and its parameters (e.g. GeM's ``p``).
        dataset: dataset root and split (and ``shard`` for a shard file).
        preprocessing: resize (or None), normalisation, interpolation, precision.
        dtype: storage type of the descriptors, ``"float32"`` or ``"float16"``.
    """

    model: dict
    aggregation: dict
    dataset: dict
    preprocessing: dict
    dtype: str

    JSON_FIELDS = ("model", "aggregation", "dataset", "preprocessing")

    def to_attrs(self) -> dict[str, str]:
        """The HDF5 root attributes: the four dicts as sorted JSON, ``dtype`` as it is."""
        attrs = {key: _json_attr(getattr(self, key)) for key in self.JSON_FIELDS}
        attrs["dtype"] = str(self.dtype)
        return attrs

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> Header:
        """The header stored in ``attrs``.

        Raises:
            KeyError, ValueError, UnicodeError: an attribute is missing, too long, not a JSON
                object or not valid UTF-8 (``DescriptorFile`` reports these as damage).
        """
        for key in ("model", "aggregation", "dataset", "preprocessing", "dtype"):
            value = attrs.get(key)
            if isinstance(value, (str, bytes)) and len(value) > MAX_ATTR_CHARS:
                raise ValueError(f"attribute {key} holds {len(value)} characters, more than {MAX_ATTR_CHARS}")
        return cls(**{key: _json_dict(attrs[key]) for key in cls.JSON_FIELDS}, dtype=str(attrs["dtype"]))

    @classmethod
    def of(cls, header: Header | Mapping) -> Header:
        """``header`` as a Header (a mapping with the five keys is converted)."""
        if isinstance(header, Header):
            return header
        return cls(**{f.name: header[f.name] for f in fields(cls)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
