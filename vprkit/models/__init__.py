"""Backbones, aggregations, the zoo, the network, and checkpoint loading.

Every kind of component is registered by name in one ``vprkit.models.registry.Registry`` of its
package (``backbones``, ``aggregations``, ``zoo``), one module per name (per family for the
zoo), and declares its options in an ``Options`` dataclass (``vprkit.models.options``) that
``ModelConfig`` checks and records. Every network built, classic or of the zoo, is a
``DescriptorNet`` (``vprkit.models.protocol``).
"""

from vprkit.errors import VprkitError
from vprkit.models.aggregations import AGGREGATIONS, GeM, NetVLAD, build_aggregation, get_aggregation, pyramid
from vprkit.models.backbones import BACKBONES, build_backbone, get_backbone
from vprkit.models.checkpoints import infer_architecture, load_model_from_checkpoint, save_checkpoint
from vprkit.models.config import ModelConfig, check_sizes
from vprkit.models.network import VPRModel
from vprkit.models.protocol import DescriptorNet, InputRule, fingerprint
from vprkit.models.registry import Registry
from vprkit.models.validation import validate_model_config

__all__ = [
    "AGGREGATIONS",
    "BACKBONES",
    "DescriptorNet",
    "GeM",
    "InputRule",
    "ModelConfig",
    "NetVLAD",
    "Registry",
    "VPRModel",
    "build_aggregation",
    "build_backbone",
    "build_classic",
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


def build_model(config: ModelConfig) -> DescriptorNet:
    """A network from its config; from the checkpoint when ``config.checkpoint`` is set; a zoo
    model (``vprkit.models.zoo``, found in its registry) when ``config.model`` is."""
    if config.model:
        from vprkit.models.zoo import ZooNetwork

        return ZooNetwork(config)
    return build_classic(config)


def build_classic(config: ModelConfig) -> VPRModel:
    """A backbone + aggregation network from its config; from the checkpoint when
    ``config.checkpoint`` is set (what training builds)."""
    if config.model:
        raise VprkitError(f"{config.model} is a model of the zoo, not a backbone and an aggregation")
    if config.checkpoint:
        return load_model_from_checkpoint(
            config.checkpoint, config.backbone, config.aggregation, config.l2, config.fc_output_dim
        )
    return VPRModel(config)
