"""The check of a stored model config (a descriptor file's ``model`` header, a checkpoint's
``model_config``) before a network is built from it.

``validate_model_config(data, file, key, kind)`` is ``ModelConfig.from_dict`` with the place the
record was read: the types and ranges of ``vprkit.store.checks.model_record``, then a registered
backbone and aggregation (or zoo model) and their declared options, then sizes that a layer may
have (``check_sizes``: NetVLAD's ``clusters x channels`` and a fully connected head's weights are
bounded), so that a crafted record gives one line naming the file and the key, never a huge
allocation.
"""

from __future__ import annotations

from vprkit.models.config import ModelConfig, check_sizes
from vprkit.store.checks import Where

__all__ = ["check_sizes", "stored_config", "validate_model_config"]


def validate_model_config(
    data: object, file: str, key: str = "model_config", kind: str = "stored", zoo: bool = True
) -> ModelConfig:
    """The ``ModelConfig`` that the recorded dict ``data`` describes, checked
    (``ModelConfig.from_dict`` with the place it was read).

    Args:
        data: the record (``backbone``, ``aggregation``, ``clusters``, ``weights``,
            ``checkpoint``, ``l2``, ``fc_output_dim``, component options, or a zoo ``model``;
            other keys such as ``output_dim`` and ``fingerprint`` are checked for their types
            and ignored).
        file: the file it was read from, as the error line names it (``checkpoint best.pth``).
        key: the record's key in that file (``model_config``, ``model``).
        kind: what holds it, for the error line (``stored``, ``header attribute``).
        zoo: a zoo model (``model``) is accepted (False: a backbone and aggregation are needed).

    Raises:
        VprkitError: one line ``{file}: {kind} '{key}.clusters' is 'abc'; expected ...``.
    """
    return ModelConfig.from_dict(data, where=Where(file, kind, key), zoo=zoo)


def stored_config(data: object, path: object) -> dict | None:
    """A checkpoint's ``model_config`` entry: None, or a dict (else one line naming it)."""
    if data is not None and not isinstance(data, dict):
        Where(f"checkpoint {path}", "stored", "model_config").fail(data, "a dict of the model's fields")
    return data
