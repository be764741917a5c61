"""MixVPR and BoQ in the zoo against independent re-implementations of upstream's networks.

Each reference (``tests/reference/mixvpr.py``, ``tests/reference/boq.py``) gets seeded random
weights and is saved as the released file is (a bare state dict; for MixVPR also as a Lightning
checkpoint); vprkit reads the file with ``load_safely``, builds the zoo model and loads it, and
the descriptors must agree to 1e-4.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import boq as ref_boq
from reference import mixvpr as ref_mixvpr

from vprkit.errors import VprkitError
from vprkit.models.serialization import load_safely
from vprkit.models.zoo import boq, dinov2, mixvpr  # noqa: F401  (registers the variants)
from vprkit.models.zoo.base import REGISTRY, ZooSpec

TOL = 1e-4


_BUILT: dict[str, torch.nn.Module] = {}


@pytest.fixture(scope="module", autouse=True)
def _free_built_models():
    yield
    _BUILT.clear()  # the ViT-B and ResNet-50s are not kept for the rest of the session


def spec(name: str) -> ZooSpec:
    return REGISTRY[name]


def built(name: str) -> torch.nn.Module:
    """``spec(name).build()`` in eval mode, built once for the module (a refused file leaves it
    untouched: ``strict_load`` checks every key and shape first); each test loads the weights
    it compares."""
    if name not in _BUILT:
        _BUILT[name] = spec(name).build().eval()
    return _BUILT[name]


def loaded(name: str, path) -> torch.nn.Module:
    """The zoo model ``name`` with the file at ``path``, as vprkit reads it."""
    model = built(name)
    spec(name).load_state_dict(model, load_safely(path))
    return model


def assert_same(model, reference, x):
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert ours.shape == theirs.shape
    assert torch.isfinite(theirs).all()
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(x)), atol=1e-5)
    assert (ours - theirs).abs().max().item() < TOL


def refused(name: str, state) -> str:
    model = built(name)
    with pytest.raises(VprkitError) as err:
        spec(name).load_state_dict(model, state)
    message = str(err.value)
    assert "\n" not in message
    return message


def image(*size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------


def test_registered_variants():
    expected = {
        "mixvpr_resnet50_4096": (4096, (320, 320), 1, (), "resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt"),
        "mixvpr_resnet50_512": (512, (320, 320), 1, (), "resnet50_MixVPR_512_channels(256)_rows(2).ckpt"),
        "mixvpr_resnet50_128": (128, (320, 320), 1, (), "resnet50_MixVPR_128_channels(64)_rows(2).ckpt"),
        "boq_resnet50_16384": (16384, (384, 384), 1, (), "resnet50_16384.pth"),
        "boq_dinov2_12288": (12288, (322, 322), 14, ("timm",), "dinov2_12288.pth"),
    }
    for name, (dim, size, multiple, requires, file_name) in expected.items():
        s = spec(name)
        assert (s.output_dim, s.resize, s.multiple_of, s.requires) == (dim, size, multiple, requires)
        assert s.family == name.split("_")[0]
        assert file_name in s.weights and s.weights.startswith("https://")
        assert s.resize[0] % s.multiple_of == 0


# ---------------------------------------------------------------------------------------------
# MixVPR
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixvpr_reference():
    return ref_mixvpr.build_reference(4096, seed=0)


@pytest.fixture(scope="module")
def mixvpr_release(mixvpr_reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("mixvpr") / "resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt"
    return ref_mixvpr.save_release(mixvpr_reference, path)


def test_mixvpr_release_file_matches_reference(mixvpr_reference, mixvpr_release):
    state = load_safely(mixvpr_release)
    assert any(k.startswith("backbone.model.layer3.") for k in state)
    assert "aggregator.mix.3.mix.3.weight" in state and "aggregator.row_proj.bias" in state
    assert not any(k.startswith("backbone.model.layer4.") for k in state)
    assert_same(loaded("mixvpr_resnet50_4096", mixvpr_release), mixvpr_reference, image(1, 3, 320, 320))


def test_mixvpr_lightning_checkpoint(mixvpr_reference, tmp_path):
    path = ref_mixvpr.save_lightning(mixvpr_reference, tmp_path / "epoch(09).ckpt")
    state = load_safely(path)  # plain hyper-parameters: read without running code
    assert set(state) >= {"state_dict", "hyper_parameters", "epoch"}
    model = built("mixvpr_resnet50_4096")
    spec("mixvpr_resnet50_4096").load_state_dict(model, state)
    x = image(1, 3, 320, 320, seed=1)
    assert_same(model, mixvpr_reference, x)
    wrapped = {f"module.{k}": v for k, v in mixvpr_reference.state_dict().items()}
    spec("mixvpr_resnet50_4096").load_state_dict(model, wrapped)  # nn.DataParallel's prefix


@pytest.mark.parametrize("dim", [128])  # 512 differs from it in the sizes only
def test_mixvpr_smaller_releases(dim, tmp_path):
    reference = ref_mixvpr.build_reference(dim, seed=dim)
    path = ref_mixvpr.save_release(reference, tmp_path / "mixvpr.ckpt")
    assert_same(loaded(f"mixvpr_resnet50_{dim}", path), reference, image(1, 3, 320, 320, seed=dim))


def test_mixvpr_refuses_what_does_not_fit(mixvpr_reference, boq_resnet_reference):
    state = mixvpr_reference.state_dict()
    assert "use --model mixvpr_resnet50_4096" in refused("mixvpr_resnet50_512", state)
    no_bias = {k: v for k, v in state.items() if k != "aggregator.row_proj.bias"}
    assert "aggregator.row_proj.bias" in refused("mixvpr_resnet50_4096", no_bias)
    assert "not a MixVPR" in refused("mixvpr_resnet50_4096", {"epoch": 3, "state_dict": [1]})
    assert "tensor" in refused("mixvpr_resnet50_4096", {**state, "step": 5})
    assert "list" in refused("mixvpr_resnet50_4096", [1, 2])
    assert "MixVPR" in refused("mixvpr_resnet50_4096", boq_resnet_reference.state_dict())


def test_mixvpr_needs_its_input_size():
    model = built("mixvpr_resnet50_4096")
    for size in [(256, 256), (320, 336), (288, 320)]:
        with torch.no_grad(), pytest.raises(VprkitError, match="--resize 320 320"):
            model(image(1, 3, *size))
    with torch.no_grad(), pytest.raises(VprkitError, match="20x20"):
        model.aggregator(image(1, 1024, 16, 20))


# ---------------------------------------------------------------------------------------------
# BoQ, ResNet-50
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boq_resnet_reference():
    return ref_boq.build_resnet_reference(seed=0)


def test_boq_resnet50_release_file_matches_reference(boq_resnet_reference, tmp_path):
    path = ref_boq.save_release(boq_resnet_reference, tmp_path / "resnet50_16384.pth")
    state = load_safely(path)
    assert "backbone.net.6.5.conv3.weight" in state and "aggregator.boqs.1.queries" in state
    assert "aggregator.boqs.0.encoder.self_attn.in_proj_weight" in state
    model = loaded("boq_resnet50_16384", path)
    assert_same(model, boq_resnet_reference, image(2, 3, 128, 128))
    assert_same(model, boq_resnet_reference, image(1, 3, 96, 160, seed=1))  # any size


def split_layout(state: dict, frozen: bool) -> dict:
    """The same weights in upstream's later ResNet layout (frozen + unfrozen layers)."""
    names = (
        (
            "frozen_layers.0.0.",
            "frozen_layers.0.1.",
            "frozen_layers.1.",
            "frozen_layers.2.",
            "unfrozen_layers.0.",
        )
        if frozen
        else (
            "unfrozen_layers.0.0.",
            "unfrozen_layers.0.1.",
            "unfrozen_layers.1.",
            "unfrozen_layers.2.",
            "unfrozen_layers.3.",
        )
    )
    out = {}
    for key, value in state.items():
        for i, new in zip((0, 1, 4, 5, 6), names, strict=True):
            if key.startswith(f"backbone.net.{i}."):
                key = "backbone." + new + key[len(f"backbone.net.{i}.") :]
                break
        out[key] = value
    return out


@pytest.mark.parametrize("frozen", [True, False])
def test_boq_resnet50_later_upstream_layouts(boq_resnet_reference, frozen):
    state = split_layout(boq_resnet_reference.state_dict(), frozen)
    assert not any(k.startswith("backbone.net.") for k in state)
    model = built("boq_resnet50_16384")
    spec("boq_resnet50_16384").load_state_dict(model, state)
    assert_same(model, boq_resnet_reference, image(1, 3, 64, 64, seed=2))


def test_boq_resnet50_refuses_what_does_not_fit(boq_resnet_reference, mixvpr_reference):
    state = boq_resnet_reference.state_dict()
    assert "BoQ ResNet-50" in refused("boq_resnet50_16384", mixvpr_reference.state_dict())
    small = {k: v[:, :16] if k == "aggregator.fc.weight" else v for k, v in state.items()}
    assert "aggregator.fc.weight" in refused("boq_resnet50_16384", small)
    assert "tensor" in refused("boq_resnet50_16384", {**state, "epoch": 3})


# ---------------------------------------------------------------------------------------------
# BoQ, DINOv2
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boq_dinov2_reference():
    pytest.importorskip("timm")
    return ref_boq.build_dinov2_reference(seed=0)


@pytest.fixture(scope="module")
def boq_dinov2_model(boq_dinov2_reference, tmp_path_factory):
    path = ref_boq.save_release(boq_dinov2_reference, tmp_path_factory.mktemp("boq") / "dinov2_12288.pth")
    state = load_safely(path)
    for key in (
        "backbone.dino.mask_token",
        "backbone.dino.norm.weight",
        "backbone.dino.blocks.11.ls2.gamma",
        "backbone.dino.pos_embed",
        "aggregator.boqs.1.cross_attn.out_proj.weight",
    ):
        assert key in state
    assert tuple(state["backbone.dino.pos_embed"].shape) == (1, 1 + 37 * 37, 768)
    return loaded("boq_dinov2_12288", path)


@pytest.mark.parametrize("size", [(70, 70), (70, 112), (126, 98)])
def test_boq_dinov2_release_file_matches_reference(boq_dinov2_model, boq_dinov2_reference, size):
    assert_same(boq_dinov2_model, boq_dinov2_reference, image(2, 3, *size, seed=size[1]))


def test_boq_dinov2_without_the_final_norm(boq_dinov2_reference):
    """Upstream's later ``DinoV2`` replaces ``dino.norm`` by an identity: no ``norm`` keys."""
    state = {
        k: v for k, v in boq_dinov2_reference.state_dict().items() if not k.startswith("backbone.dino.norm.")
    }
    model = built("boq_dinov2_12288")
    spec("boq_dinov2_12288").load_state_dict(model, state)
    assert_same(model, boq_dinov2_reference, image(1, 3, 42, 56, seed=3))


def test_boq_dinov2_position_embeddings_as_dinov2_interpolates(boq_dinov2_reference):
    pytest.importorskip("timm")
    dino = boq_dinov2_reference.backbone.dino
    for rows, cols in [(37, 37), (23, 23), (5, 8), (9, 7), (40, 30), (1, 1)]:
        x = torch.zeros(1, 1 + rows * cols, 768)
        theirs = dino.interpolate_pos_encoding(x, rows * 14, cols * 14)
        ours = dinov2.interpolate_pos_encoding(dino.pos_embed.detach(), rows * 14, cols * 14)
        assert ours.shape == (1, 1 + rows * cols, 768)
        assert torch.equal(ours, theirs.detach())


def test_boq_dinov2_key_mapping_is_explicit_and_complete(boq_dinov2_model):
    model = boq_dinov2_model
    ours = {k[len("backbone.dino.") :] for k in model.state_dict() if k.startswith("backbone.dino.")}
    assert set(dinov2.DINOV2_KEY_MAP.values()) == ours
    upstream = set(ref_boq.RefDinoVisionTransformer().state_dict())
    assert upstream == set(dinov2.DINOV2_KEY_MAP) and set(boq.DINOV2_UNUSED) <= upstream
    assert math.prod(model.backbone.dino.vit.pos_embed.shape) == (1 + 37 * 37) * 768


def test_boq_dinov2_refuses_what_does_not_fit(boq_dinov2_reference, boq_dinov2_model, boq_resnet_reference):
    state = dict(boq_dinov2_reference.state_dict())
    assert "use --model boq_resnet50_16384" in refused("boq_dinov2_12288", boq_resnet_reference.state_dict())
    assert "use --model boq_dinov2_12288" in refused("boq_resnet50_16384", state)
    assert "BoQ DINOv2" in refused("boq_dinov2_12288", {**state, "x": torch.ones(1)})
    state["backbone.dino.pos_embed"] = state["backbone.dino.pos_embed"][:, :257]
    assert "pos_embed" in refused("boq_dinov2_12288", state)
    registers = {**boq_dinov2_reference.state_dict(), "backbone.dino.register_tokens": torch.zeros(1, 4, 768)}
    assert "register_tokens" in refused("boq_dinov2_12288", registers)
    with torch.no_grad(), pytest.raises(VprkitError, match="multiples of 14"):
        boq_dinov2_model(image(1, 3, 64, 64))


# ---------------------------------------------------------------------------------------------
# end to end: vprkit extract --model mixvpr_resnet50_4096 --checkpoint FILE
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_extract_with_the_mixvpr_release(mixvpr_reference, mixvpr_release, tmp_path):
    from vprkit.data.datasets import load_split
    from vprkit.data.synthetic import generate_dataset
    from vprkit.extract.split import ExtractOptions, extract
    from vprkit.models import ModelConfig
    from vprkit.store.reader import DescriptorFile

    root = generate_dataset(tmp_path / "data", {"test": (4, 3)}, size=(320, 320), seed=0)
    out = extract(
        root,
        tmp_path / "mixvpr.h5",
        ModelConfig(model="mixvpr_resnet50_4096", checkpoint=str(mixvpr_release)),
        ExtractOptions(resize=(320, 320), workers=0, device="cpu"),
        progress=False,
    )
    split = load_split(root, "test")
    with DescriptorFile(out) as f:
        assert f.dim == 4096
        assert f.names("database") == split.database.names
        stored = torch.from_numpy(f.read_rows("database", (1,), 0, f.num("database")))
        assert f.num_rows("queries") == 3
    expected = ref_mixvpr.reference_descriptors(mixvpr_reference, split.database.paths())
    assert (stored - expected).abs().max().item() < TOL
