"""Adding a component is one registration: a toy aggregation with its own numeric option,
defined and registered here (as a new file of ``vprkit/models/aggregations`` would), works end to
end through ``ModelConfig``, its overrides, extraction and the recorded config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import SIZE, options

from vprkit.errors import VprkitError
from vprkit.extract.split import extract
from vprkit.models import ModelConfig, VPRModel
from vprkit.models.aggregations import REGISTRY, Aggregation, register
from vprkit.store import DescriptorFile


class ScaledGeM(Aggregation):
    """GeM pooling (p = 3) times a fixed ``scale``: a layer with its own numeric option."""

    help = "GeM pooling times scale (a test's)"

    @dataclass(frozen=True)
    class Options(Aggregation.Options):
        scale: float = 2.0

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    @classmethod
    def build(cls, channels: int, options) -> ScaledGeM:
        return cls(options.scale)

    @classmethod
    def recognise(cls, state):
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=1e-6).pow(3).mean(dim=(-2, -1)).pow(1 / 3) * self.scale


@pytest.fixture
def scaled_gem():
    register("scaled_gem")(ScaledGeM)
    try:
        yield "scaled_gem"
    finally:
        REGISTRY.unregister("scaled_gem")
    assert "scaled_gem" not in REGISTRY


def descriptors(config: ModelConfig) -> torch.Tensor:
    torch.manual_seed(0)
    model = VPRModel(config).eval()
    with torch.no_grad():
        return model(torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(1)))


def test_its_option_changes_the_descriptors(scaled_gem):
    default = ModelConfig(aggregation=scaled_gem, weights="none")
    three = ModelConfig(aggregation=scaled_gem, weights="none", aggregation_options={"scale": 3.0})
    assert default.aggregation_options == {} and three.aggregation_options == {"scale": 3.0}
    assert default.with_overrides(["aggregation.scale=3"]) == three
    torch.testing.assert_close(descriptors(three), descriptors(default) * 1.5)
    assert ModelConfig(aggregation=scaled_gem, weights="none", aggregation_options={"scale": 2}) == default


def test_unknown_options_and_bad_values_are_refused(scaled_gem):
    with pytest.raises(
        VprkitError,
        match=r"aggregation scaled_gem has no option 'shift' "
        r"\(its options: fc_output_dim, scale\)",
    ):
        ModelConfig(aggregation=scaled_gem, aggregation_options={"shift": 1.0})
    with pytest.raises(VprkitError, match=r"option 'scale' is 'big'; expected float"):
        ModelConfig(aggregation=scaled_gem, aggregation_options={"scale": "big"})
    config = ModelConfig(aggregation=scaled_gem)
    with pytest.raises(
        VprkitError,
        match=r"setting 'aggregation.shift=1': aggregation scaled_gem "
        r"has no option 'shift'",
    ):
        config.with_overrides(["aggregation.shift=1"])
    with pytest.raises(VprkitError, match=r"setting 'aggregation.scale=x2': 'x2' is not a number"):
        config.with_overrides(["aggregation.scale=x2"])
    with pytest.raises(VprkitError, match=r"setting 'head.scale=2': unknown component 'head'"):
        config.with_overrides(["head.scale=2"])
    with pytest.raises(VprkitError, match=r"setting 'scale': expected COMPONENT.OPTION=VALUE"):
        config.with_overrides(["scale"])


def test_it_round_trips_through_the_recorded_config(scaled_gem, small_root, tmp_path):
    config = ModelConfig(aggregation=scaled_gem, weights="none").with_overrides(
        ["aggregation.scale=3", "aggregation.fc_output_dim=8"]
    )
    assert config.fc_output_dim == 8 and config.aggregation_options == {"scale": 3.0}
    record = config.to_dict()
    assert record["aggregation_options"] == {"scale": 3.0} and record["fc_output_dim"] == 8
    assert ModelConfig.from_dict(record) == config
    assert "aggregation_options" not in ModelConfig(aggregation=scaled_gem).to_dict()
    with pytest.raises(
        VprkitError,
        match=r"^f\.h5: header attribute 'model\.aggregation_options'"
        r": aggregation scaled_gem has no option 'shift'",
    ):
        from vprkit.store.checks import Where

        ModelConfig.from_dict(
            {**record, "aggregation_options": {"shift": 1}}, where=Where("f.h5", "header attribute", "model")
        )

    out = extract(small_root, tmp_path / "scaled.h5", config, options(), progress=False)
    with DescriptorFile(out) as f:
        assert f.model["aggregation_options"] == {"scale": 3.0} and f.dim == 8
        assert ModelConfig.from_dict(f.model) == config
        assert np.isfinite(f.read_rows("database", (1,), 0, f.num("database"))).all()
