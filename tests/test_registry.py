"""The backbone and aggregation registries (issue "One place per extension"): every registered
name builds, the command line's choices equal the registries, ``infer_architecture`` tells every
registered backbone x aggregation apart, the new backbones equal the benchmark's cuts."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SIZE
from reference.benchmark import RefGeoLocalizationNet, ref_aggregation, ref_backbone

from vprkit import choices
from vprkit.descriptors.pyramid import RULES, stat_spec
from vprkit.models import (
    AGGREGATIONS,
    BACKBONES,
    ModelConfig,
    VPRModel,
    build_aggregation,
    get_aggregation,
    get_backbone,
    infer_architecture,
    load_model_from_checkpoint,
)
from vprkit.models.aggregations import L2_PLACEMENTS

HAVE_EFFICIENTNET = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
PARAMETER_FREE = ("mac", "rmac", "spoc")


def test_choices_equal_registries():
    assert choices.BACKBONES == tuple(BACKBONES)
    assert choices.AGGREGATIONS == AGGREGATIONS
    assert choices.L2_PLACEMENTS == L2_PLACEMENTS
    assert {"mac", "spoc", "rmac", "gem", "netvlad"} <= set(AGGREGATIONS)
    assert {"resnet101conv4", "resnet101conv5", "alexnet"} <= set(BACKBONES)


@pytest.mark.parametrize("kind", ["backbones", "aggregations"])
def test_one_module_per_name(kind):
    """The names are the module file names (what the CLI's choices list, unimported and without
    reading source); each module registers its own name: a new component is its own file only."""
    package = importlib.import_module(f"vprkit.models.{kind}")
    registry = package.REGISTRY
    assert registry.declared() == choices.component_names(Path(package.__file__).parent)
    assert registry.names()[: len(registry.declared())] == registry.declared()
    for name in registry.declared():
        item = registry.get(name)
        defined_in = item.builder.__module__ if kind == "backbones" else item.__module__
        assert defined_in == f"vprkit.models.{kind}.{name}", name


def test_registry_refusals():
    from vprkit.errors import VprkitError
    from vprkit.models.aggregations import REGISTRY, GeM
    from vprkit.models.registry import Registry

    with pytest.raises(VprkitError, match=r"unknown aggregation 'nope'; choose one of gem, mac, "):
        get_aggregation("nope")
    with pytest.raises(VprkitError, match=r"unknown backbone 'resnet34conv4'; choose one of alexnet"):
        get_backbone("resnet34conv4")
    with pytest.raises(ValueError, match="'gem' registered twice"):
        REGISTRY.add("gem", GeM)
    with pytest.raises(ValueError, match="must be registered by vprkit.models.aggregations.newpool"):
        REGISTRY.add("newpool", GeM, "vprkit.models.aggregations.gem")
    assert "newpool" not in REGISTRY
    zoo: Registry[str] = Registry("model", "vprkit.models.zoo", family_of=lambda n: n.split("_")[0])
    assert zoo.module_of("cosplace_resnet18_32") == "cosplace"
    zoo.add("mine_1", "a model of a test")
    assert zoo.get("mine_1") == "a model of a test" and "mine_1" in zoo.names()
    assert zoo.unregister("mine_1") == "a model of a test" and "mine_1" not in zoo


def test_literal_of_refuses_what_it_cannot_read(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import x\nNAMES: tuple = ('a', 'b')\nOTHER = tuple(x.NAMES)\n")
    assert choices.literal_of(source, "NAMES") == ("a", "b")
    with pytest.raises(ValueError, match="OTHER is not a literal"):
        choices.literal_of(source, "OTHER")
    with pytest.raises(ValueError, match="has no top-level MISSING"):
        choices.literal_of(source, "MISSING")


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_every_aggregation_builds_and_declares(name):
    cls = get_aggregation(name)
    assert cls.name == name and cls.help
    assert cls.pyramid_rule is None or cls.pyramid_rule in RULES
    for l2 in L2_PLACEMENTS if cls.uses_l2 else (None,):
        for fc in (None, 8):
            layer = build_aggregation(name, 16, clusters=4, l2=l2, fc_output_dim=fc)
            with torch.no_grad():
                desc, stats = layer.forward_with_stats(torch.rand(2, 16, 4, 5))
            assert desc.shape == (2, layer.output_dim(16))
            spec = stat_spec(layer.pyramid_params())
            assert set(stats) == set(spec) == set(layer.stats_spec())
            for stat, (shape, dtype) in spec.items():
                assert stats[stat].shape == (2, *shape) and str(stats[stat].dtype).endswith(dtype)


def test_alexnet_feature_size():
    """AlexNet has no padding to a multiple of its stride: 128 x 160 -> 7 x 9 locations."""
    net = get_backbone("alexnet").build("none").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 128, 160)).shape == (1, 256, 7, 9)


# ----------------------------------------------------------------- the benchmark's cuts
@pytest.mark.parametrize("name", ["resnet101conv4", "resnet101conv5", "alexnet"])
def test_new_backbone_equals_benchmark(tmp_path, name):
    torch.manual_seed(0)
    backbone = ref_backbone(name)
    channels = get_backbone(name).channels
    ref = RefGeoLocalizationNet(backbone, ref_aggregation("mac", "before_pool", 16, channels)).eval()
    torch.save({"epoch_num": 1, "model_state_dict": ref.state_dict()}, tmp_path / "best_model.pth")
    model = load_model_from_checkpoint(tmp_path / "best_model.pth", aggregation="mac")
    assert model.config.backbone == name and model.config.fc_output_dim == 16
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in backbone.named_parameters() if not p.requires_grad} != set()
    x = torch.rand(1, 3, 72, 72)
    with torch.no_grad():
        features = backbone(x)
        assert features.shape[1] == channels
        torch.testing.assert_close(model.backbone(x), features, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- infer_architecture
@pytest.fixture(scope="module")
def backbone_states():
    names = [n for n in BACKBONES if n != "efficientnet_lite0" or HAVE_EFFICIENTNET]
    return {
        n: {f"backbone.{k}": v for k, v in get_backbone(n).build("none").state_dict().items()} for n in names
    }


def test_infer_architecture_round_trips_every_pair(backbone_states):
    for aggregation in AGGREGATIONS:
        cls = get_aggregation(aggregation)
        for l2 in L2_PLACEMENTS if cls.uses_l2 else (None,):
            for fc in (None, 24):
                layer = build_aggregation(aggregation, 8, clusters=5, l2=l2, fc_output_dim=fc)
                agg = {f"aggregation.{k}": v for k, v in layer.state_dict().items()}
                expected = {"aggregation": aggregation, "clusters": 5 if aggregation == "netvlad" else 64}
                if l2 not in (None, "before_pool"):
                    expected["l2"] = l2
                if fc:
                    expected["fc_output_dim"] = fc
                given = {"aggregation": aggregation} if aggregation in PARAMETER_FREE else {}
                for backbone, state in backbone_states.items():
                    got = infer_architecture({**state, **agg}, l2=l2, **given)
                    assert got == {"backbone": backbone, **expected}, (backbone, aggregation, l2, fc)


# ----------------------------------------------------------------- configs and files
def test_default_configs_are_unchanged():
    """Configs (and so descriptor file headers) made before l2 / fc_output_dim still match."""
    old = {"backbone", "aggregation", "clusters", "weights", "checkpoint"}
    assert set(ModelConfig().to_dict()) == old
    assert set(ModelConfig(l2="before_pool").to_dict()) == old
    assert ModelConfig(l2="none", fc_output_dim=4).to_dict()["fc_output_dim"] == 4
    model = VPRModel(ModelConfig(weights="none"))
    assert [k for k in model.state_dict() if k.startswith("aggregation")] == ["aggregation.1.p"]
    assert model.aggregation.pyramid_params() == {"type": "gem", "p": 3.0, "eps": 1e-6}


def test_store_imports_no_torch():
    code = (
        "import sys, vprkit.store, vprkit.descriptors.pyramid, vprkit.choices; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_pyramid_of_aggregation_without_rule(small_root, tmp_path):
    from test_cli import assert_one_line_error, run

    out = tmp_path / "rmac.h5"
    common = (
        "--weights",
        "none",
        "--scales",
        "1,2",
        "--resize",
        *SIZE,
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
    )
    assert run("extract", small_root, "-o", out, "--aggregation", "rmac", *common).exit_code == 0
    assert run("evaluate", out, "--scale", "2").exit_code == 0
    assert_one_line_error(run("evaluate", out, "--scale", "1+2"), "the rmac aggregation has no pyramid rule")
    mac = tmp_path / "mac.h5"
    result = run(
        "extract",
        small_root,
        "-o",
        mac,
        "--aggregation",
        "mac",
        "--l2",
        "after_pool",
        "--fc-output-dim",
        "8",
        *common,
    )
    assert result.exit_code == 0, result.output
    assert_one_line_error(
        run("evaluate", mac, "--scale", "1+2"), r"the mac\+fc aggregation has no pyramid rule"
    )
    assert_one_line_error(
        run("extract", small_root, "-o", tmp_path / "x.h5", "--l2", "sideways"), "unknown --l2 'sideways'"
    )
