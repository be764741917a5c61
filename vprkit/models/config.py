"""``ModelConfig``: what defines a network, with each component's own options, read from
anything a release recorded (``from_dict``), written back unchanged (``to_dict``), and changed
by ``COMPONENT.OPTION=VALUE`` settings (``with_overrides``); ``check_sizes`` bounds the layers
it would build.

The benchmark's three aggregation options keep their flat fields, as every recorded config
holds them: ``clusters`` (NetVLAD's), ``l2`` (the shallow poolings') and ``fc_output_dim``
(every aggregation's head); given in ``aggregation_options`` they move to those fields. Any
other option of the aggregation (GeM's ``p``, a new layer's own) lives in
``aggregation_options``, the backbone's in ``backbone_options``, each checked against the
``Options`` dataclass its component declares, and recorded only where not at its default, so
configs (and descriptor file headers) made before an option existed are unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vprkit.choices import DEFAULT_AGGREGATION, DEFAULT_BACKBONE, L2_PLACEMENTS
from vprkit.errors import VprkitError, shown
from vprkit.models.aggregations import REGISTRY as AGGREGATIONS
from vprkit.models.aggregations import aggregation_options
from vprkit.models.backbones import REGISTRY as BACKBONES
from vprkit.models.options import changed_options, make_options, parse_option
from vprkit.store.checks import (
    MAX_CLUSTERS,
    MAX_DIM,
    MAX_LAYER_WEIGHTS,
    Where,
    get,
    integer,
    mapping,
    model_record,
    text,
)

FLAT_OPTIONS = ("clusters", "l2", "fc_output_dim")  # aggregation options with their own field
_OPTION_FIELDS = ("aggregation_options", "backbone_options")


@dataclass
class ModelConfig:
    """Everything that defines a network's architecture and where its weights came from.

    The descriptor dimension D is the backbone's channels C for GeM and ``clusters x C`` for
    NetVLAD (ResNet-18 conv4: C = 256, so GeM 256-D and NetVLAD with 64 clusters 16384-D).

    Attributes:
        backbone: a registered backbone (``vprkit.models.backbones``: ``"resnet18conv4"``, 256
            channels at stride 16, the default; ``"resnet50conv4"`` (1024), ``"vgg16"`` (512),
            ``"efficientnet_lite0"`` (112; extra ``vprkit[efficientnet]``) ...).
        aggregation: a registered aggregation (``vprkit.models.aggregations``: ``"gem"``,
            ``"netvlad"``, ``"mac"``, ``"spoc"``, ``"rmac"``).
        clusters: NetVLAD clusters K (recorded, unused, by the others).
        weights: ``"imagenet"`` (torchvision's pretrained weights), ``"none"`` (random, seeded)
            or the path of a torchvision state dict of the backbone.
        checkpoint: a benchmark or vprkit checkpoint; when set, its weights (and the
            architecture it holds) are used instead of ``weights``. With ``model``, the
            upstream release's own weight file.
        l2: the benchmark's ``--l2`` for gem, mac, spoc and rmac: ``"before_pool"`` (per location,
            the default; None means it too), ``"after_pool"`` or ``"none"``.
        fc_output_dim: the benchmark's ``--fc_output_dim``: a Linear layer to this dimension, then
            L2, after the aggregation (None: no such layer).
        model: a model of the zoo (``vprkit.models.zoo``, ``vprkit models``: CosPlace,
            EigenPlaces, MixVPR, ...), built whole; the backbone and aggregation fields are then
            not used.
        aggregation_options: the aggregation's other options by name (e.g. ``{"p": 3.5}`` for
            GeM), as its ``Options`` declares them; kept only where not at their defaults.
        backbone_options: the backbone's options by name (``BackboneSpec.options``).
    """

    backbone: str = DEFAULT_BACKBONE
    aggregation: str = DEFAULT_AGGREGATION
    clusters: int = 64
    weights: str = "imagenet"  # imagenet | none | path to a backbone state dict
    checkpoint: str | None = None  # a benchmark or vprkit checkpoint (overrides weights)
    l2: str | None = None  # before_pool (None) | after_pool | none
    fc_output_dim: int | None = None
    model: str | None = None  # a zoo model (vprkit models); backbone and aggregation unused
    aggregation_options: dict[str, Any] = field(default_factory=dict)
    backbone_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        options = dict(self.aggregation_options)
        for key in FLAT_OPTIONS:
            if key in options:
                setattr(self, key, options.pop(key))
        self.aggregation_options = options
        self.backbone_options = dict(self.backbone_options)
        if self.model:
            return
        if self.aggregation in AGGREGATIONS:  # (the builders name an unknown one)
            settings = changed_options(self.aggregation_settings())
            self.aggregation_options = {k: v for k, v in settings.items() if k not in FLAT_OPTIONS}
        if self.backbone in BACKBONES:
            self.backbone_options = changed_options(self.backbone_settings())

    def aggregation_settings(self) -> Any:
        """The aggregation's ``Options`` instance: its options, flat fields included."""
        return aggregation_options(
            self.aggregation, self.aggregation_options, self.clusters, self.l2, self.fc_output_dim
        )

    def backbone_settings(self) -> Any:
        """The backbone's ``Options`` instance."""
        spec = BACKBONES.get(self.backbone)
        return make_options(spec.options, self.backbone_options, f"backbone {self.backbone}")

    def to_dict(self) -> dict:
        """The fields; ``l2`` and ``fc_output_dim`` only where they are not the defaults, the
        option dicts only where not empty, so that configs (and descriptor file headers) made
        before these options existed are unchanged."""
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _OPTION_FIELDS
        }
        if data["l2"] in (None, "before_pool"):
            del data["l2"]
        if data["fc_output_dim"] is None:
            del data["fc_output_dim"]
        if data["model"] is None:
            del data["model"]
            for key in _OPTION_FIELDS:
                if getattr(self, key):
                    data[key] = dict(getattr(self, key))
        else:  # a zoo model is its name: the composable fields do not apply
            for key in ("backbone", "aggregation", "clusters"):
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: object, *, where: Where | None = None, zoo: bool = True) -> ModelConfig:
        """The config that a recorded dict describes (``to_dict``'s, a descriptor file header's
        ``model``, a checkpoint's ``model_config``, of any release), checked.

        Args:
            data: the record (``backbone``, ``aggregation``, ``clusters``, ``weights``,
                ``checkpoint``, ``l2``, ``fc_output_dim``, ``aggregation_options``,
                ``backbone_options`` or a zoo ``model``; other keys such as ``output_dim`` and
                ``fingerprint`` are checked for their types and ignored).
            where: where it was read, as the error line names it (None: given in code).
            zoo: a zoo model (``model``) is accepted (False: a backbone and aggregation are
                needed).

        Raises:
            VprkitError: one line such as ``{file}: {kind} '{key}.clusters' is 'abc';
                expected ...``, before any layer is built.
        """
        at = where or Where("the model configuration", "field", "", note=None)
        record = model_record(data, at)
        if record.get("type") == "ensemble":
            at.at("type").fail("ensemble", "a single network (an ensemble has no network to build)")
        weights = text(at.at("weights"), record.get("weights", "imagenet"))
        checkpoint = text(at.at("checkpoint"), record.get("checkpoint"), optional=True)
        if record.get("model") is not None:
            if not zoo:
                at.at("model").fail(record["model"], "absent (a backbone and an aggregation)")
            from vprkit.models.zoo.base import REGISTRY as ZOO

            if record["model"] not in ZOO:
                at.at("model").fail(record["model"], "a model of the zoo (vprkit models lists them)")
            return cls(model=record["model"], weights=str(weights), checkpoint=checkpoint)
        backbone = get(record, "backbone")
        if backbone not in BACKBONES:
            at.at("backbone").fail(backbone, f"one of {', '.join(BACKBONES.names())}")
        aggregation = get(record, "aggregation")
        if aggregation not in AGGREGATIONS:
            at.at("aggregation").fail(aggregation, f"one of {', '.join(AGGREGATIONS.names())}")
        l2 = record.get("l2")
        if l2 not in (None, L2_PLACEMENTS[0]) and not AGGREGATIONS.get(str(aggregation)).uses_l2:
            at.at("l2").fail(l2, f"before_pool or null for {aggregation}")
        options = {key: mapping(at.at(key), record.get(key), optional=True) or {} for key in _OPTION_FIELDS}
        for key, declared in (
            ("aggregation_options", AGGREGATIONS.get(str(aggregation)).Options),
            ("backbone_options", BACKBONES.get(str(backbone)).options),
        ):
            try:
                make_options(declared, options[key], f"{key.split('_')[0]} {record[key.split('_')[0]]}")
            except VprkitError as err:  # an option that the component does not declare
                raise VprkitError(f"{at.file}: {at.kind} '{at.at(key).key}': {err}") from None
        config = cls(
            backbone=str(backbone),
            aggregation=str(aggregation),
            clusters=int(record.get("clusters", 64)),
            weights=str(weights),
            checkpoint=checkpoint,
            l2=l2,
            fc_output_dim=record.get("fc_output_dim"),
            aggregation_options=options["aggregation_options"],
            backbone_options=options["backbone_options"],
        )
        check_sizes(config, at)
        return config

    def with_overrides(self, settings: Sequence[str]) -> ModelConfig:
        """A copy with each ``COMPONENT.OPTION=VALUE`` setting applied, in order.

        ``COMPONENT`` is ``aggregation`` or ``backbone``; the value is read by the option's
        declared type (whole numbers, numbers, ``true``/``false``, ``null`` for an optional
        one, text), e.g. ``aggregation.clusters=32``, ``aggregation.p=3.5``,
        ``aggregation.fc_output_dim=128``.

        Raises:
            VprkitError: one line naming the setting: not of that form, an unknown component
                or option, a value of another type.
        """
        config = self
        for setting in settings:
            key, equals, value = setting.partition("=")
            component, dot, option = key.strip().partition(".")
            what = f"setting {shown(setting, 60)!r}"
            if not equals or not dot or not option:
                raise VprkitError(f"{what}: expected COMPONENT.OPTION=VALUE, e.g. aggregation.clusters=32")
            if component not in ("aggregation", "backbone"):
                raise VprkitError(
                    f"{what}: unknown component {shown(component, 40)!r} (aggregation or backbone)"
                )
            if config.model:
                raise VprkitError(f"{what}: the zoo model {config.model} has no {component} options")
            if getattr(config, component) is None:  # a checkpoint's, read when it is loaded
                raise VprkitError(f"{what}: give the {component} whose option it sets")
            if component == "aggregation":
                kinds: type = AGGREGATIONS.get(config.aggregation).Options
                parsed = parse_option(kinds, option, value.strip(), what, f"aggregation {config.aggregation}")
                if option in FLAT_OPTIONS:
                    config = dataclasses.replace(config, **{option: parsed})
                else:
                    config = dataclasses.replace(
                        config, aggregation_options={**config.aggregation_options, option: parsed}
                    )
            else:
                parsed = parse_option(
                    BACKBONES.get(config.backbone).options,
                    option,
                    value.strip(),
                    what,
                    f"backbone {config.backbone}",
                )
                config = dataclasses.replace(
                    config, backbone_options={**config.backbone_options, option: parsed}
                )
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
    if config.backbone not in BACKBONES or config.aggregation not in AGGREGATIONS:
        return  # (the builders name an unknown backbone or aggregation)
    cls = AGGREGATIONS.get(config.aggregation)
    settings = dataclasses.replace(config.aggregation_settings(), fc_output_dim=None)
    channels = BACKBONES.get(config.backbone).channels
    with torch.device("meta"):  # no memory: only its output dimension is wanted
        dim = cls.build(channels, settings).output_dim(channels)
    if dim > MAX_DIM:
        at.at("clusters").fail(
            config.clusters,
            f"at most {MAX_DIM // channels} clusters of "
            f"{config.backbone}'s {channels} channels (descriptors of at most "
            f"{MAX_DIM} dimensions)",
        )
    if config.fc_output_dim is not None:
        most = max(1, min(MAX_DIM, MAX_LAYER_WEIGHTS // dim))
        integer(at.at("fc_output_dim"), config.fc_output_dim, 1, most)
