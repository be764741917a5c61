"""SALAD and MegaLoc of the zoo (``vprkit.models.zoo.salad``, ``.megaloc``) and their shared DINOv2
ViT-B/14 backbone on timm (``vprkit.models.zoo.dinov2``), against the plain-torch oracles of
``tests/reference`` (``dinov2``, ``salad``, ``megaloc``: upstream's module structure, so that
their ``state_dict()`` is the released files' layout).

Each release is a reference with seeded random weights saved as its published file is
(``torch.save`` of the state dict: ``dino_salad.ckpt``, ``megaloc.torch``), read back with
``load_safely`` (``weights_only=True``), loaded with the spec's ``load_state_dict`` into
``spec.build()``; the descriptors must equal the reference's to 1e-4 (absolute, and relative to
the descriptor's norm). ViT-B on CPU: batches of 1-2 at 126x126 or 224x224.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm")

from reference.dinov2 import RefDinoVisionTransformer  # noqa: E402
from reference.megaloc import build_reference_megaloc, ref_get_matching_probs  # noqa: E402
from reference.salad import build_reference_salad, ref_log_optimal_transport  # noqa: E402

from vprkit.errors import VprkitError  # noqa: E402
from vprkit.models.serialization import load_safely  # noqa: E402
from vprkit.models.zoo import get_zoo_model, zoo_models  # noqa: E402
from vprkit.models.zoo.dinov2 import interpolate_pos_encoding, load_dinov2_state  # noqa: E402
from vprkit.models.zoo.salad import log_optimal_transport  # noqa: E402

TOL = 1e-4
SALAD = "salad_dinov2_8448"
MEGALOC = "megaloc_dinov2_8448"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def batch(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A normalised-looking (n, 3, h, w) batch."""
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    relative = ((ours - theirs).norm(dim=-1) / theirs.norm(dim=-1)).max().item()
    assert diff < TOL and relative < TOL, (diff, relative)


def one_line_error(call) -> str:
    with pytest.raises(VprkitError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def release(tmp_path_factory, build, file_name: str, name: str, seed: int):
    """(reference, vprkit network, the file's loaded state, its path) for one release."""
    ref = build(seed)
    path = tmp_path_factory.mktemp(name) / file_name
    torch.save(ref.state_dict(), path)
    state = load_safely(path, "checkpoint")
    spec = get_zoo_model(name)
    net = spec.build()
    spec.load_state_dict(net, state)
    return ref, net.eval(), state, path


@pytest.fixture(scope="module")
def salad(tmp_path_factory):
    ref, net, state, path = release(tmp_path_factory, build_reference_salad, "dino_salad.ckpt", SALAD, seed=1)
    yield ref, net, state, path
    path.unlink(missing_ok=True)  # 350 MB: not left for pytest's kept temporary folders


@pytest.fixture(scope="module")
def megaloc(tmp_path_factory):
    ref, net, state, path = release(
        tmp_path_factory, build_reference_megaloc, "megaloc.torch", MEGALOC, seed=2
    )
    path.unlink()  # 900 MB
    return ref, net, state


# --------------------------------------------------------------------------- the specs
def test_registered_releases():
    models = zoo_models()
    salad_spec, megaloc_spec = models[SALAD], models[MEGALOC]
    assert (salad_spec.family, salad_spec.output_dim) == ("salad", 64 * 128 + 256)
    assert (megaloc_spec.family, megaloc_spec.output_dim) == ("megaloc", 8448)
    assert salad_spec.resize == (322, 322) and salad_spec.multiple_of == 14
    assert megaloc_spec.resize is None and megaloc_spec.multiple_of == 1  # rounds sides itself
    assert salad_spec.weights.endswith("(dino_salad.ckpt)")
    assert "serizba/salad/releases/download/v1.0.0/dino_salad.ckpt" in salad_spec.weights
    assert megaloc_spec.weights.endswith("(megaloc.torch)")
    assert "gmberton/MegaLoc/releases/download/v1.0/megaloc.torch" in megaloc_spec.weights
    for spec in (salad_spec, megaloc_spec):
        assert spec.requires == ("timm",)
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- DINOv2 alone
@pytest.mark.parametrize(
    "size", [(126, 126), (224, 182), (182, 224), (322, 322), (518, 518), (70, 518), (28, 14)]
)
def test_position_embeddings_interpolate_as_dinov2(size):
    ref = RefDinoVisionTransformer(depth=0)
    with torch.no_grad():
        ref.pos_embed.normal_(generator=torch.Generator().manual_seed(5))
    h, w = size
    tokens = torch.zeros(1, 1 + (h // 14) * (w // 14), 768)
    expected = ref.interpolate_pos_encoding(tokens, h, w).detach()
    ours = interpolate_pos_encoding(ref.pos_embed.detach(), h, w)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() < 1e-5


def test_timm_resampling_is_not_dinov2s():
    """Why dinov2.py resamples itself: timm's (output size, antialiased) differs from DINOv2's
    (scale factor (n + 0.1) / 37), by far more than 1e-5."""
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 37 * 37, 768, generator=torch.Generator().manual_seed(6))
    timm_pos = resample_abs_pos_embed(pos, [9, 9], num_prefix_tokens=1)
    assert (timm_pos - interpolate_pos_encoding(pos, 126, 126)).abs().max().item() > 1e-2


@pytest.fixture(scope="module")
def dinov2_pair(salad):
    """A plain-torch ViT-B/14 with seeded random weights (the SALAD reference's ``model``, so
    that no other ViT is built) and vprkit's timm-built backbone loaded from its state dict in
    facebookresearch's layout without prefix (as ``dinov2_vitb14_pretrain.pth``)."""
    ref, net, _, _ = salad
    dinov2, backbone = ref.backbone.model, net.backbone
    state = dinov2.state_dict()
    with torch.no_grad():  # nothing left from the SALAD load: every parameter is written again
        for p in backbone.parameters():
            p.zero_()
    assert load_dinov2_state(backbone, state, "") == set(state)
    return dinov2, backbone


@pytest.mark.parametrize("shape", [(2, 126, 126), (1, 224, 182)])
def test_dinov2_mapping_matches_reference(dinov2_pair, shape):
    ref, net = dinov2_pair
    n, h, w = shape
    x = batch(n, h, w, seed=h + w)
    with torch.no_grad():
        expected = ref.forward_features(x)
        patches, token = net(x)
    assert patches.shape == (n, 768, h // 14, w // 14)
    assert_close(token, expected["x_norm_clstoken"])
    assert_close(patches.flatten(2).transpose(1, 2), expected["x_norm_patchtokens"])


def test_dinov2_wrong_state_refused(dinov2_pair):
    ref, net = dinov2_pair
    state = ref.state_dict()
    missing = {k: v for k, v in state.items() if k != "blocks.11.ls2.gamma"}
    assert "missing 'm.blocks.11.ls2.gamma'" in one_line_error(
        lambda: load_dinov2_state(net, {f"m.{k}": v for k, v in missing.items()}, "m.")
    )
    extra = {**state, "register_tokens": torch.zeros(1, 4, 768)}
    assert "unexpected 'register_tokens'" in one_line_error(lambda: load_dinov2_state(net, extra, ""))
    small = {**state, "pos_embed": torch.zeros(1, 257, 768)}
    assert "pos_embed has shape (1, 257, 768), expected (1, 1370, 768)" in one_line_error(
        lambda: load_dinov2_state(net, small, "")
    )
    assert "multiples of 14, not 130x126" in one_line_error(lambda: net(batch(1, 130, 126)))


# --------------------------------------------------------------------------- SALAD
def test_salad_release_layout(salad):
    ref, net, state, _ = salad
    assert list(state) == list(ref.state_dict())  # the file as saved: backbone.model.*, aggregator.*
    assert {k.split(".")[0] for k in state} == {"backbone", "aggregator"}
    assert "backbone.model.mask_token" in state and "aggregator.dust_bin" in state
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("shape", [(2, 126, 126), (1, 224, 224)])
def test_salad_matches_reference(salad, shape):
    ref, net, _, _ = salad
    x = batch(*shape, seed=11)
    with torch.no_grad():
        expected, ours = ref(x), net(x)
    assert ours.shape == (shape[0], 8448)
    assert_close(ours, expected)
    assert torch.allclose(ours.norm(dim=1), torch.ones(shape[0]), atol=1e-5)


@pytest.mark.parametrize("patches", [64, 81, 256])
def test_sinkhorn_is_upstreams(patches):
    """vprkit's log-domain optimal transport equals SALAD's (SuperGlue's) and MegaLoc's
    (OpenGlue's) with their 3 iterations, on scores as sharp as the references'; 2 or 4
    iterations differ: the comparisons above see the iteration count."""
    gen = torch.Generator().manual_seed(patches)
    scores = 7.0 * torch.randn(2, 64, patches, generator=gen)
    dustbin = torch.tensor(0.7)
    ours = log_optimal_transport(scores, dustbin).exp()
    assert (ours - ref_log_optimal_transport(scores, dustbin, 3).exp()).abs().max() < 1e-5
    if patches > 64:  # MegaLoc's form takes log(n - m)
        assert (ours - ref_get_matching_probs(scores, dustbin, 3).exp()).abs().max() < 1e-5
    for iterations in (2, 4):
        other = log_optimal_transport(scores, dustbin, iterations).exp()
        assert (other - ours).abs().max() > 1e-3


def test_salad_lightning_checkpoint_and_prefix(salad):
    """A Lightning checkpoint's ``state_dict`` (of one's own training) and ``module.`` keys."""
    _, net, state, _ = salad
    spec = get_zoo_model(SALAD)
    spec.load_state_dict(net, {"state_dict": state, "epoch": 3, "global_step": 10})
    spec.load_state_dict(net, {f"module.{k}": v for k, v in state.items()})


def test_salad_input_rules(salad):
    _, net, _, _ = salad
    assert "multiples of 14" in one_line_error(lambda: net(batch(1, 120, 126)))
    assert "at least as many patches as clusters (64), not 49" in one_line_error(
        lambda: net(batch(1, 98, 98))
    )


# --------------------------------------------------------------------------- MegaLoc
@pytest.mark.slow
def test_megaloc_release_layout(megaloc):
    ref, net, state = megaloc
    assert list(state) == list(ref.state_dict())
    assert {".".join(k.split(".")[:2]) for k in state if k.startswith("aggregator.")} == {
        "aggregator.agg",
        "aggregator.linear",
    }
    assert tuple(state["aggregator.linear.weight"].shape) == (8448, 64 * 256 + 256)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 130, 124), (1, 126, 126)])
def test_megaloc_matches_reference(megaloc, shape):
    """130x124 goes through upstream's rounding of the sides to 126x126 (antialiased)."""
    ref, net, _ = megaloc
    x = batch(*shape, seed=12)
    with torch.no_grad():
        expected, ours = ref(x), net(x)
    assert ours.shape == (shape[0], 8448)
    assert_close(ours, expected)


@pytest.mark.slow
def test_megaloc_input_rule(megaloc):
    _, net, _ = megaloc
    assert "more than 64 patches" in one_line_error(lambda: net(batch(1, 112, 112)))


# --------------------------------------------------------------------------- wrong files
@pytest.mark.slow
def test_other_release_refused(salad, megaloc):
    _, salad_net, salad_state, _ = salad
    _, megaloc_net, megaloc_state = megaloc
    spec_s, spec_m = get_zoo_model(SALAD), get_zoo_model(MEGALOC)
    message = one_line_error(lambda: spec_s.load_state_dict(salad_net, megaloc_state))
    assert message.startswith("this is not a DINOv2 SALAD state dict")
    assert "'agg.dust_bin'" in message or "'dust_bin'" in message
    message = one_line_error(lambda: spec_m.load_state_dict(megaloc_net, salad_state))
    assert message.startswith("this is not a MegaLoc state dict")


def test_wrong_files_refused(salad):
    ref, net, state, _ = salad
    spec = get_zoo_model(SALAD)
    dinov2_only = {
        k[len("backbone.model.") :]: v for k, v in state.items() if k.startswith("backbone.model.")
    }
    assert "no backbone.model.* DINOv2 keys" in one_line_error(lambda: spec.load_state_dict(net, dinov2_only))
    assert "not a dict of tensors" in one_line_error(lambda: spec.load_state_dict(net, torch.zeros(3)))
    extra = {**state, "loss_fn.weight": torch.zeros(1)}
    assert "unexpected 'loss_fn.weight'" in one_line_error(lambda: spec.load_state_dict(net, extra))
    no_dustbin = {k: v for k, v in state.items() if k != "aggregator.dust_bin"}
    assert "missing 'dust_bin'" in one_line_error(lambda: spec.load_state_dict(net, no_dustbin))
    wide = {**state, "aggregator.score.3.weight": torch.zeros(32, 512, 1, 1)}
    assert "score.3.weight has shape (32, 512, 1, 1)" in one_line_error(
        lambda: spec.load_state_dict(net, wide)
    )
    truncated = {k: v for k, v in state.items() if not k.startswith("backbone.model.blocks.11.")}
    assert "missing 'backbone.model.blocks.11." in one_line_error(
        lambda: spec.load_state_dict(net, truncated)
    )
    with torch.no_grad():  # none of the refusals changed the network
        x = batch(1, 126, 126, seed=13)
        assert_close(net(x), ref(x))


class Hyperparameters:
    """Stands for the Python objects (an ``AttributeDict``...) a training checkpoint may hold."""

    lr = 0.1


def test_checkpoint_with_objects_refused(tmp_path):
    """``load_safely`` reads tensors, numbers, strings and containers only: a checkpoint that
    pickles other objects is refused with one line (convert a trusted one to its state dict)."""
    path = tmp_path / "lightning.ckpt"
    torch.save(
        {"state_dict": {"aggregator.dust_bin": torch.tensor(1.0)}, "hyper_parameters": Hyperparameters()},
        path,
    )
    message = one_line_error(lambda: load_safely(path, "checkpoint"))
    assert re.search(r"holds Python objects \(.*Hyperparameters\)", message)


# --------------------------------------------------------------------------- end to end
def test_extract_end_to_end(tmp_path, salad):
    """``vprkit.extract.split`` with ``ModelConfig(model=..., checkpoint=...)`` at 126x126 stores the
    reference's descriptors of the dataset's images (PIL, /255, ImageNet normalisation, resized
    bilinear with antialiasing as vprkit resizes)."""
    try:
        from vprkit.extract.split import ExtractOptions, extract
        from vprkit.models import ModelConfig

        ModelConfig(model=SALAD, checkpoint="x")
    except (ImportError, TypeError) as err:  # pragma: no cover  (the integration is not there)
        pytest.skip(f"no zoo support in ModelConfig / extract yet: {err}")
    from PIL import Image

    from vprkit.data.synthetic import generate_dataset
    from vprkit.store import DescriptorFile

    ref, _, _, path = salad
    root = generate_dataset(tmp_path / "data", {"test": (4, 2)}, size=(64, 80), seed=0)
    out = tmp_path / "salad.h5"
    config = ModelConfig(model=SALAD, checkpoint=str(path))
    extract(
        root,
        out,
        config,
        ExtractOptions(resize=(126, 126), batch_size=3, workers=0, device="cpu"),
        progress=False,
    )
    with DescriptorFile(out) as stored:
        assert stored.dim == 8448 and stored.model["model"] == SALAD
        for role, count in (("database", 4), ("queries", 2)):
            names = stored.names(role)
            assert len(names) == count
            rows = stored.read_rows(role, (1,), 0, count)
            images = []
            for name in names:
                with Image.open(root / "images" / "test" / role / name) as image:
                    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
                tensor = (torch.from_numpy(pixels).permute(2, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD
                images.append(
                    F.interpolate(
                        tensor[None], size=(126, 126), mode="bilinear", align_corners=False, antialias=True
                    )[0]
                )
            with torch.no_grad():
                expected = ref(torch.stack(images)).numpy()
            np.testing.assert_allclose(rows, expected, atol=TOL, rtol=0)
