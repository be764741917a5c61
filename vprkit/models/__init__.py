"""Backbones, aggregations, the network, and checkpoint loading."""

from vprkit.models.aggregations import AGGREGATIONS, GeM, NetVLAD, build_aggregation, get_aggregation, pyramid
from vprkit.models.backbones import BACKBONES, build_backbone, get_backbone
from vprkit.models.checkpoints import infer_architecture, load_model_from_checkpoint, save_checkpoint
from vprkit.models.network import ModelConfig, VPRModel, fingerprint
from vprkit.models.validation import check_sizes, validate_model_config

__all__ = [
    "AGGREGATIONS",
    "BACKBONES",
    "GeM",
    "ModelConfig",
    "NetVLAD",
    "VPRModel",
    "build_aggregation",
    "build_backbone",
    "build_model",
    "check_sizes",
    "fingerprint",
    "get_aggregation",
    "get_backbone",
    "infer_architecture",
    "load_model_from_checkpoint",
    "pyramid",
    "save_checkpoint",
    "validate_model_config",
]


def build_model(config: ModelConfig) -> VPRModel:
    """A network from its config; from the checkpoint when ``config.checkpoint`` is set; a zoo
    model (``vprkit.models.zoo``) when ``config.model`` is."""
    if config.model:
        from vprkit.models.zoo import ZooNetwork
        return ZooNetwork(config)  # type: ignore[return-value]
    if config.checkpoint:
        return load_model_from_checkpoint(config.checkpoint, config.backbone, config.aggregation,
                                          config.l2, config.fc_output_dim)
    return VPRModel(config)
