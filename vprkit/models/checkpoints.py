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

from ..errors import VprkitError
from .network import ModelConfig, VPRModel
from .serialization import load_safely, save_atomically


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
    if config is not None and not isinstance(config, dict):
        raise VprkitError(f"checkpoint {path} has a damaged model_config")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                              for k, v in state.items()):
        raise VprkitError(f"checkpoint {path} does not hold a model state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in state):
        raise VprkitError(
            f"checkpoint {path} has no 'backbone.*' keys: not a benchmark or vprkit model"
        )
    return state, config


def infer_architecture(state: dict[str, torch.Tensor]) -> dict:
    """Backbone, aggregation and cluster count from the keys and shapes of a state dict."""
    if "aggregation.centroids" in state:
        aggregation, clusters = "netvlad", int(state["aggregation.centroids"].shape[0])
    elif "aggregation.1.p" in state:
        aggregation, clusters = "gem", 64
    else:
        raise VprkitError(
            "cannot tell the aggregation from the checkpoint keys (expected "
            "'aggregation.centroids' for NetVLAD or 'aggregation.1.p' for GeM)"
        )
    if "backbone.4.0.conv1.weight" in state:
        depth = "resnet50" if "backbone.4.0.conv3.weight" in state else "resnet18"
        stage = "conv5" if any(k.startswith("backbone.7.") for k in state) else "conv4"
        backbone = depth + stage
    elif "backbone.1.block._depthwise_conv.weight" in state:
        backbone = "efficientnet_lite0"
    elif "backbone.0.weight" in state and state["backbone.0.weight"].shape[:2] == (64, 3):
        backbone = "vgg16"
    else:
        raise VprkitError("cannot tell the backbone from the checkpoint keys")
    return {"backbone": backbone, "aggregation": aggregation, "clusters": clusters}


def load_model_from_checkpoint(
    path: str | Path, backbone: str | None = None, aggregation: str | None = None
) -> VPRModel:
    """Rebuild a network from a checkpoint, in eval mode (ready for inference; call ``.train()``
    to fine-tune). Explicit options must agree with what the checkpoint holds."""
    state, stored = read_checkpoint(path)
    arch = dict(stored) if stored else infer_architecture(state)
    if not isinstance(arch.get("backbone"), str) or not isinstance(arch.get("aggregation"), str):
        raise VprkitError(f"checkpoint {path} has a damaged model_config (no backbone/aggregation)")
    for key, given in (("backbone", backbone), ("aggregation", aggregation)):
        if given is not None and given != arch[key]:
            raise VprkitError(
                f"checkpoint {path} holds a {arch[key]} {key}, but --{key} {given} was given"
            )
    config = ModelConfig(
        backbone=arch["backbone"],
        aggregation=arch["aggregation"],
        clusters=int(arch.get("clusters", 64)),
        weights="none",
        checkpoint=str(Path(path).resolve()),
    )
    model = VPRModel(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of other shapes
        detail = str(err).strip().splitlines()[-1].strip()
        raise VprkitError(f"checkpoint {path} does not fit a {arch['backbone']} + "
                          f"{arch['aggregation']} model: {detail}") from None
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise VprkitError(f"checkpoint {path} does not fit a {arch['backbone']} + "
                          f"{arch['aggregation']} model: {detail}")
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
    the images' native size, or ``NOT_RECORDED`` (a benchmark checkpoint, a bare state dict)."""
    data = load_safely(Path(path), "checkpoint")
    config = data.get("train_config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or "resize" not in config:
        return NOT_RECORDED
    size = config["resize"]
    if size is None:
        return None
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    return NOT_RECORDED
