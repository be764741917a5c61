"""Loading checkpoints of the Deep Visual Geo-localization Benchmark and of vprkit.

Accepted: a bare state dict, or a dict with ``model_state_dict`` (benchmark) or
``state_dict``; keys with or without the ``module.`` prefix (DataParallel). vprkit's own
checkpoints also carry ``model_config``, so no other option is needed to rebuild the network.
Files are read with ``serialization.load_safely`` (``weights_only=True``): a checkpoint cannot
run code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vprkit.errors import VprkitError
from vprkit.models.aggregations import REGISTRY as AGGREGATIONS
from vprkit.models.aggregations import get_aggregation, recognise_aggregation
from vprkit.models.backbones import recognise_backbone
from vprkit.models.config import ModelConfig
from vprkit.models.network import VPRModel
from vprkit.models.serialization import load_safely, save_atomically
from vprkit.models.validation import stored_config, validate_model_config
from vprkit.store.checks import Where, image_size


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The model state dict (prefix stripped) and the stored model config, if any."""
    path = Path(path)
    data = load_safely(path, "checkpoint")
    config = None
    if isinstance(data, dict) and "model_state_dict" in data:
        config = data.get("model_config")
        state = data["model_state_dict"]
    elif isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        state = data["state_dict"]
    else:
        state = data
    config = stored_config(config, path)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()
    ):
        raise VprkitError(f"checkpoint {path} does not hold a model state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in state):
        raise VprkitError(f"checkpoint {path} has no 'backbone.*' keys: not a benchmark or vprkit model")
    return state, config


def infer_architecture(
    state: dict[str, torch.Tensor], aggregation: str | None = None, l2: str | None = None
) -> dict:
    """Backbone, aggregation and cluster count (plus ``l2`` and ``fc_output_dim`` where not the
    defaults) from the keys and shapes of a state dict, by the registries' key signatures.

    Parameter-free aggregations (mac, spoc, rmac) have no keys, nor has the placement of their
    L2 norm: ``aggregation`` and ``l2`` choose among the layouts that fit (``l2`` defaults to the
    benchmark's ``before_pool`` where that fits)."""
    backbones = recognise_backbone(state)
    if len(backbones) != 1:
        raise VprkitError(
            "cannot tell the backbone from the checkpoint keys"
            + (f" (it fits {', '.join(backbones)})" if backbones else "")
        )
    layer = {k[len("aggregation.") :]: v for k, v in state.items() if k.startswith("aggregation.")}
    found = recognise_aggregation(layer)
    if not found:
        raise VprkitError(
            "cannot tell the aggregation from the checkpoint keys (expected "
            "'aggregation.centroids' for NetVLAD, 'aggregation.1.p' for GeM or none for "
            f"{', '.join(n for n in AGGREGATIONS if get_aggregation(n).recognise({}))})"
        )
    names = sorted({f["aggregation"] for f in found})
    if aggregation is not None:
        if aggregation not in names:
            raise VprkitError(
                f"checkpoint holds a {' or '.join(names)} aggregation, but "
                f"--aggregation {aggregation} was given"
            )
        found = [f for f in found if f["aggregation"] == aggregation]
    elif len(names) > 1:
        raise VprkitError(
            f"the checkpoint's aggregation has no weights: it may be {', '.join(names)}; give --aggregation"
        )
    if "l2" in found[0]:
        placements = [f["l2"] for f in found]
        wanted = l2 or "before_pool"
        if wanted not in placements:
            how = " or ".join(f"--l2 {p}" for p in placements)
            raise VprkitError(
                f"the checkpoint's {found[0]['aggregation']} has its L2 norm "
                f"{' or '.join(placements)}, not {wanted}: give {how}"
            )
        found = [f for f in found if f["l2"] == wanted]
    arch = {
        "backbone": backbones[0],
        "aggregation": found[0]["aggregation"],
        "clusters": int(found[0].get("clusters", 64)),
    }
    if found[0].get("l2", "before_pool") != "before_pool":
        arch["l2"] = found[0]["l2"]
    if found[0].get("fc_output_dim") is not None:
        arch["fc_output_dim"] = found[0]["fc_output_dim"]
    return arch


def load_model_from_checkpoint(
    path: str | Path,
    backbone: str | None = None,
    aggregation: str | None = None,
    l2: str | None = None,
    fc_output_dim: int | None = None,
) -> VPRModel:
    """Rebuild a network from a checkpoint, in eval mode (ready for inference; call ``.train()``
    to fine-tune). Explicit options must agree with what the checkpoint holds; ``aggregation``
    and ``l2`` choose where its keys cannot tell (see ``infer_architecture``)."""
    state, stored = read_checkpoint(path)
    if stored:  # checked before any layer is built
        arch = validate_model_config(stored, f"checkpoint {path}", zoo=False).to_dict()
    else:
        arch = infer_architecture(state, aggregation, l2)
    held = {
        "backbone": arch["backbone"],
        "aggregation": arch["aggregation"],
        "l2": arch.get("l2") or "before_pool",
        "fc_output_dim": arch.get("fc_output_dim"),
    }
    for key, given in (
        ("backbone", backbone),
        ("aggregation", aggregation),
        ("l2", l2),
        ("fc_output_dim", fc_output_dim),
    ):
        if given is not None and given != held[key]:
            option = key.replace("_", "-")
            raise VprkitError(
                f"checkpoint {path} holds a {held[key]} {key}, but --{option} {given} was given"
            )
    config = ModelConfig(
        backbone=arch["backbone"],
        aggregation=arch["aggregation"],
        clusters=int(arch.get("clusters", 64)),
        weights="none",
        checkpoint=str(Path(path).resolve()),
        l2=arch.get("l2"),
        fc_output_dim=arch.get("fc_output_dim"),
        aggregation_options=arch.get("aggregation_options", {}),
        backbone_options=arch.get("backbone_options", {}),
    )
    model = VPRModel(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of other shapes
        detail = str(err).strip().splitlines()[-1].strip()
        raise VprkitError(
            f"checkpoint {path} does not fit a {arch['backbone']} + {arch['aggregation']} model: {detail}"
        ) from None
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise VprkitError(
            f"checkpoint {path} does not fit a {arch['backbone']} + {arch['aggregation']} model: {detail}"
        )
    return model.eval()


def save_checkpoint(model: VPRModel, path: str | Path, **extra) -> Path:
    """Save a vprkit checkpoint: state dict plus the model config (written atomically)."""
    config = model.config.to_dict()
    config["checkpoint"] = None
    payload = {"model_state_dict": model.state_dict(), "model_config": config, **extra}
    return save_atomically(payload, path)


NOT_RECORDED = "not recorded"


def trained_image_size(path: str | Path) -> tuple[int, int] | None | str:
    """The image size (H, W) a vprkit checkpoint was trained at, None where it was trained at
    the images' native size, or ``NOT_RECORDED`` (a benchmark checkpoint, a bare state dict);
    one line naming the checkpoint where the recorded size is not [H, W] of 1..``MAX_SIDE``."""
    data = load_safely(Path(path), "checkpoint")
    config = data.get("train_config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or "resize" not in config:
        return NOT_RECORDED
    return image_size(Where(f"checkpoint {path}", "stored", "train_config.resize"), config["resize"])
