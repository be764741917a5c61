"""The check of a stored model config (a descriptor file's ``model`` header, a checkpoint's
``model_config``) before a network is built from it, and of the sizes of any ``ModelConfig``.

``validate_model_config(data, file, key, kind)`` is the one way vprkit turns a recorded dict
into a ``ModelConfig``: the types and ranges of ``vprkit.store.checks.model_record``, then a
registered backbone and aggregation (or zoo model), then sizes that a layer may have (NetVLAD's
``clusters x channels`` and a fully connected head's weights are bounded), so that a crafted
record gives one line naming the file and the key, never a huge allocation.
"""

from __future__ import annotations

import torch

from vprkit.choices import L2_PLACEMENTS
from vprkit.models.aggregations import AGGREGATIONS, get_aggregation
from vprkit.models.backbones import REGISTRY as BACKBONE_REGISTRY
from vprkit.models.network import ModelConfig
from vprkit.store.checks import (
    MAX_CLUSTERS,
    MAX_DIM,
    MAX_LAYER_WEIGHTS,
    Where,
    get,
    integer,
    model_record,
    text,
)


def validate_model_config(data: object, file: str, key: str = "model_config",
                          kind: str = "stored", zoo: bool = True) -> ModelConfig:
    """The ``ModelConfig`` that the recorded dict ``data`` describes, checked.

    Args:
        data: the record (``backbone``, ``aggregation``, ``clusters``, ``weights``,
            ``checkpoint``, ``l2``, ``fc_output_dim`` or a zoo ``model``; other keys such as
            ``output_dim`` and ``fingerprint`` are checked for their types and ignored).
        file: the file it was read from, as the error line names it (``checkpoint best.pth``).
        key: the record's key in that file (``model_config``, ``model``).
        kind: what holds it, for the error line (``stored``, ``header attribute``).
        zoo: a zoo model (``model``) is accepted (False: a backbone and aggregation are needed).

    Raises:
        VprkitError: one line ``{file}: {kind} '{key}.clusters' is 'abc'; expected ...``.
    """
    at = Where(file, kind, key)
    record = model_record(data, at)
    if record.get("type") == "ensemble":
        at.at("type").fail("ensemble", "a single network (an ensemble has no network to build)")
    weights = text(at.at("weights"), record.get("weights", "imagenet"))
    checkpoint = text(at.at("checkpoint"), record.get("checkpoint"), optional=True)
    if record.get("model") is not None:
        if not zoo:
            at.at("model").fail(record["model"], "absent (a backbone and an aggregation)")
        from vprkit.models.zoo import zoo_models
        if record["model"] not in zoo_models():
            at.at("model").fail(record["model"], "a model of the zoo (vprkit models lists them)")
        return ModelConfig(model=record["model"], weights=str(weights), checkpoint=checkpoint)
    backbone = get(record, "backbone")
    if backbone not in BACKBONE_REGISTRY:
        at.at("backbone").fail(backbone, f"one of {', '.join(BACKBONE_REGISTRY)}")
    aggregation = get(record, "aggregation")
    if aggregation not in AGGREGATIONS:
        at.at("aggregation").fail(aggregation, f"one of {', '.join(AGGREGATIONS)}")
    l2 = record.get("l2")
    if l2 not in (None, L2_PLACEMENTS[0]) and not get_aggregation(str(aggregation)).uses_l2:
        at.at("l2").fail(l2, f"before_pool or null for {aggregation}")
    config = ModelConfig(backbone=str(backbone), aggregation=str(aggregation),
                         clusters=int(record.get("clusters", 64)), weights=str(weights),
                         checkpoint=checkpoint, l2=l2,
                         fc_output_dim=record.get("fc_output_dim"))
    check_sizes(config, at)
    return config


def check_sizes(config: ModelConfig, at: Where | None = None) -> None:
    """One clear line where the network of ``config`` would have layers larger than vprkit
    builds: clusters beyond ``MAX_CLUSTERS``, a descriptor beyond ``MAX_DIM`` dimensions, a
    fully connected head beyond ``MAX_LAYER_WEIGHTS`` weights. ``at``: where the config was
    read (None: given in code or on the command line)."""
    if config.model:
        return  # a zoo model: its sizes are the release's
    at = at or Where("the model configuration", "field", "", note=None)
    integer(at.at("clusters"), config.clusters, 1, MAX_CLUSTERS)
    if config.backbone not in BACKBONE_REGISTRY or config.aggregation not in AGGREGATIONS:
        return  # (the builders name an unknown backbone or aggregation)
    cls = get_aggregation(config.aggregation)
    channels = BACKBONE_REGISTRY[config.backbone].channels
    with torch.device("meta"):  # no memory: only its output dimension is wanted
        dim = cls.build(channels, clusters=config.clusters, l2=config.l2 or L2_PLACEMENTS[0]
                        ).output_dim(channels)
    if dim > MAX_DIM:
        at.at("clusters").fail(config.clusters, f"at most {MAX_DIM // channels} clusters of "
                               f"{config.backbone}'s {channels} channels (descriptors of at most "
                               f"{MAX_DIM} dimensions)")
    if config.fc_output_dim is not None:
        most = max(1, min(MAX_DIM, MAX_LAYER_WEIGHTS // dim))
        integer(at.at("fc_output_dim"), config.fc_output_dim, 1, most)


def stored_config(data: object, path: object) -> dict | None:
    """A checkpoint's ``model_config`` entry: None, or a dict (else one line naming it)."""
    if data is not None and not isinstance(data, dict):
        Where(f"checkpoint {path}", "stored", "model_config").fail(
            data, "a dict of the model's fields")
    return data
