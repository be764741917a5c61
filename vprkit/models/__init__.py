"""Backbones, aggregations, the network, and checkpoint loading."""

from .aggregations import AGGREGATIONS, GeM, NetVLAD, pyramid
from .backbones import BACKBONES, build_backbone
from .checkpoints import infer_architecture, load_model_from_checkpoint, save_checkpoint
from .network import ModelConfig, VPRModel, fingerprint

__all__ = [
    "AGGREGATIONS",
    "BACKBONES",
    "GeM",
    "ModelConfig",
    "NetVLAD",
    "VPRModel",
    "build_backbone",
    "build_model",
    "fingerprint",
    "infer_architecture",
    "load_model_from_checkpoint",
    "pyramid",
    "save_checkpoint",
]


def build_model(config: ModelConfig) -> VPRModel:
    """A network from its config; from the checkpoint when ``config.checkpoint`` is set."""
    if config.checkpoint:
        return load_model_from_checkpoint(config.checkpoint, config.backbone, config.aggregation)
    return VPRModel(config)
