"""MAC, SPoC, R-MAC, the benchmark's --l2 placements and --fc_output_dim, against the
independent references of ``tests/reference/benchmark.py`` (written from the benchmark's
definitions, plain torch), and their pyramid rules against the network's own multi-scale
pyramid."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from reference.benchmark import L2_PLACEMENTS as L2S
from reference.benchmark import RefGeoLocalizationNet, ref_aggregation

from vprkit.errors import VprkitError
from vprkit.models import ModelConfig, VPRModel, load_model_from_checkpoint
from vprkit.models.aggregations import build_aggregation, pyramid


def copy_from(ours, ref):
    ours.load_state_dict(ref.state_dict(), strict=True)


# ----------------------------------------------------------------- layers alone
@pytest.mark.parametrize("fc", [None, 8])
@pytest.mark.parametrize("l2", L2S)
@pytest.mark.parametrize("name", ["mac", "spoc", "rmac", "gem"])
def test_layer_equals_reference(name, l2, fc):
    torch.manual_seed(0)
    ref = ref_aggregation(name, l2, fc)
    ours = build_aggregation(name, 16, l2=l2, fc_output_dim=fc)
    assert list(ours.state_dict()) == list(ref.state_dict())  # the benchmark's keys
    copy_from(ours, ref)
    for shape in [(3, 16, 5, 9), (2, 16, 9, 5), (2, 16, 7, 7), (1, 16, 1, 3), (2, 16, 30, 40)]:
        x = torch.randn(*shape).relu() if name != "spoc" else torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
        assert ours.output_dim(16) == (fc or 16)


def test_l2_does_not_apply_to_netvlad():
    with pytest.raises(VprkitError, match="--l2 after_pool applies to gem, mac, rmac, spoc"):
        build_aggregation("netvlad", 16, l2="after_pool")
    with pytest.raises(VprkitError, match="unknown --l2 'x'"):
        build_aggregation("mac", 16, l2="x")


# ----------------------------------------------------------------- pyramid rules
def _model(aggregation, l2=None, fc=None):
    torch.manual_seed(0)
    return VPRModel(
        ModelConfig(
            backbone="resnet18conv4", aggregation=aggregation, l2=l2, fc_output_dim=fc, weights="none"
        )
    ).eval()


SCALE_IMAGES = [(1, 3, 48, 64), (1, 3, 32, 48), (1, 3, 48, 32)]


@pytest.mark.parametrize("l2", L2S)
@pytest.mark.parametrize("name", ["mac", "spoc", "gem"])
def test_pyramid_rule_equals_network_pyramid(name, l2):
    """From stored descriptors + stats (numpy) == VPRModel.forward_pyramid (the network)."""
    model = _model(name, l2)
    torch.manual_seed(1)
    images = [torch.rand(2, *s[1:]) for s in SCALE_IMAGES]
    with torch.no_grad():
        parts = [model.forward_with_stats(x) for x in images]
        for desc, x in zip(parts, images, strict=True):
            torch.testing.assert_close(desc[0], model(x))
        params = model.aggregation.pyramid_params()
        for subset in ([0, 1], [1, 2], [0, 1, 2]):
            expected = model.forward_pyramid([images[i] for i in subset]).numpy()
            got = pyramid(
                params,
                [parts[i][0].numpy() for i in subset],
                [{k: v.numpy() for k, v in parts[i][1].items()} for i in subset],
            )
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    spec = model.aggregation.stats_spec()
    assert set(spec) == set(parts[0][1])
    assert ("norm" in spec) == (l2 == "after_pool")


@pytest.mark.parametrize("name,fc", [("rmac", None), ("mac", 8), ("gem", 8), ("netvlad", 8)])
def test_no_pyramid_rule(name, fc):
    layer = build_aggregation(name, 16, clusters=4, fc_output_dim=fc)
    with torch.no_grad():
        desc, stats = layer.forward_with_stats(torch.rand(2, 16, 3, 4))
    params = layer.pyramid_params()
    assert params["type"] == "none" and stats == {}
    label = f"{name}+fc" if fc else name
    np.testing.assert_array_equal(pyramid(params, [desc.numpy()], [stats]), desc.numpy())
    with pytest.raises(VprkitError, match=f"the {re.escape(label)} aggregation has no pyramid rule"):
        pyramid(params, [desc.numpy()] * 2, [stats] * 2)


# ----------------------------------------------------------------- benchmark checkpoints
@pytest.mark.parametrize(
    "name,l2,fc",
    [
        ("mac", "before_pool", None),
        ("spoc", "after_pool", None),
        ("rmac", "none", 32),
        ("gem", "none", 32),
        ("gem", "after_pool", None),
        ("netvlad", None, 32),
    ],
)
def test_benchmark_checkpoint_loads(tmp_path, name, l2, fc):
    """GeoLocalizationNet(resnet18conv4, name, l2, fc) saved as the benchmark saves it."""
    torch.manual_seed(2)
    ref = RefGeoLocalizationNet("resnet18conv4", name, l2, fc, clusters=4)
    if name == "netvlad":  # sharper assignments than the default initialisation
        torch.nn.init.normal_(ref.aggregation[0].conv.weight)
    ref.eval()
    path = tmp_path / "best_model.pth"
    torch.save(
        {
            "epoch_num": 3,
            "model_state_dict": ref.state_dict(),
            "recalls": np.array([50.0, 70.0]),
            "best_r5": 70.0,
        },
        path,
    )
    given = {"aggregation": name} if name in ("mac", "spoc", "rmac") else {}
    model = load_model_from_checkpoint(path, l2=l2 if l2 not in (None, "before_pool") else None, **given)
    assert model.config.aggregation == name and model.config.fc_output_dim == fc
    assert (model.config.l2 or "before_pool") == (l2 or "before_pool")
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.aggregation(ref.backbone(x)), rtol=1e-4, atol=1e-5)


def test_ambiguous_checkpoints_ask(tmp_path):
    path = tmp_path / "m.pth"
    model = _model("mac")
    state = {k: v for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(VprkitError, match="may be mac, rmac, spoc; give --aggregation"):
        load_model_from_checkpoint(path)
    gem = _model("gem", "none")
    torch.save({"model_state_dict": gem.state_dict()}, path)
    with pytest.raises(
        VprkitError, match="L2 norm after_pool or none, not before_pool: give --l2 after_pool or --l2 none"
    ):
        load_model_from_checkpoint(path)
    assert load_model_from_checkpoint(path, l2="none").config.l2 == "none"
    with pytest.raises(VprkitError, match="holds a gem aggregation, but --aggregation mac"):
        load_model_from_checkpoint(path, aggregation="mac")
