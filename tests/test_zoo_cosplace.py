"""CosPlace and EigenPlaces in the zoo against the oracle (``reference.cosplace``): a state dict
saved as upstream publishes it loads unchanged and gives the reference's descriptors; other
releases' files are refused in one line; the registered names are the released ones."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference.cosplace import (
    COSPLACE_RELEASED,
    EIGENPLACES_RELEASED,
    RefCosPlaceNet,
    build_reference,
    ref_image,
    save_release,
)

from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.extract.split import ExtractOptions, extract
from vprkit.models import ModelConfig
from vprkit.models.serialization import load_safely
from vprkit.models.zoo import get_zoo_model, zoo_models
from vprkit.store import DescriptorFile

FAMILIES = {"cosplace": COSPLACE_RELEASED, "eigenplaces": EIGENPLACES_RELEASED}
NAME = re.compile(r"^(cosplace|eigenplaces)_(vgg16|resnet18|resnet50|resnet101|resnet152)_([0-9]+)$")
# (family, upstream backbone, dim) compared with the reference on images
COMPARED = [
    ("cosplace", "ResNet18", 32),
    ("cosplace", "ResNet18", 512),
    ("cosplace", "ResNet50", 2048),
    ("cosplace", "VGG16", 512),
    ("eigenplaces", "ResNet18", 256),
    ("eigenplaces", "ResNet18", 512),
    ("eigenplaces", "ResNet50", 2048),
    ("eigenplaces", "VGG16", 512),
]
TOL = 1e-4
BACKBONE_TEXT = {
    "ResNet18": "ResNet-18",
    "ResNet50": "ResNet-50",
    "ResNet101": "ResNet-101",
    "ResNet152": "ResNet-152",
    "VGG16": "VGG-16",
}


def name_of(family: str, backbone: str, dim: int) -> str:
    return f"{family}_{backbone.lower()}_{dim}"


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """(backbone, dim) -> (reference network, its state dict saved as upstream publishes it);
    one seeded reference per layout, shared by both families (the same architecture)."""
    folder = tmp_path_factory.mktemp("releases")
    made: dict = {}

    def get(backbone: str, dim: int):
        if (backbone, dim) not in made:
            ref = build_reference(backbone, dim, seed=dim)
            made[backbone, dim] = ref, save_release(ref, folder / f"{backbone}_{dim}.pth")
        return made[backbone, dim]

    return get


def batch() -> torch.Tensor:
    """Two small normalised images that differ in structure (noise; a coloured ramp)."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 64, 80, generator=generator)
    x[1] = torch.linspace(-2, 2, 80).expand(3, 64, 80) * torch.tensor([1.0, -0.5, 0.3])[:, None, None]
    return x


@pytest.mark.parametrize("family,backbone,dim", COMPARED, ids=[name_of(*case) for case in COMPARED])
def test_release_file_gives_reference_descriptors(releases, family, backbone, dim):
    ref, path = releases(backbone, dim)
    spec = get_zoo_model(name_of(family, backbone, dim))
    assert spec.output_dim == dim
    model = spec.build()
    spec.load_state_dict(model, load_safely(path))
    x = batch()
    with torch.no_grad():
        ours, expected = model.eval()(x), ref.eval()(x)
        assert ours.shape == (2, dim)
        np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(ours.norm(dim=1).numpy(), 1.0, atol=1e-5)
        if family != "cosplace":  # the checks below are the same for both families
            return
        # the comparison can fail: the images differ, and so does GeM's default exponent
        assert (expected[0] - expected[1]).abs().max() > 10 * TOL
        model.aggregation[1].p.fill_(3.0)
        assert (model(x) - expected).abs().max() > 10 * TOL
        if backbone != "VGG16":  # BatchNorm: the running statistics are used (a copy: a forward
            # in train mode updates them)
            assert (copy.deepcopy(ref).train()(x) - expected).abs().max() > 10 * TOL


@pytest.mark.parametrize("shape", ["module_prefix", "training_checkpoint"])
def test_other_file_shapes_load(releases, tmp_path, shape):
    """``nn.DataParallel``'s ``module.`` prefix, and upstream's own ``last_checkpoint.pth``."""
    ref, _ = releases("ResNet18", 32)
    path = tmp_path / "x.pth"
    if shape == "module_prefix":
        save_release(ref, path, prefix="module.")
    else:
        torch.save({"epoch_num": 3, "model_state_dict": ref.state_dict(), "best_val_recall1": 50.0}, path)
    spec = get_zoo_model("cosplace_resnet18_32")
    model = spec.build()
    spec.load_state_dict(model, load_safely(path))
    x = batch()
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()(x).numpy(), ref(x).numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "file,target,expected",
    [
        (("ResNet18", 512), "cosplace_resnet18_256", r"aggregation\.3\.weight has shape \(512, 512\)"),
        (("ResNet18", 32), "cosplace_resnet50_2048", r"missing 'backbone\.4\.0\.conv3\.weight'"),
        (("VGG16", 512), "eigenplaces_resnet18_512", r"missing 'backbone\.1\.weight'"),
        (("ResNet50", 2048), "eigenplaces_resnet101_2048", r"missing 'backbone\.6\.6\.conv1\.weight'"),
    ],
    ids=["wrong_dim", "resnet18_as_resnet50", "vgg16_as_resnet18", "resnet50_as_resnet101"],
)
def test_other_release_refused(releases, file, target, expected):
    _, path = releases(*file)
    spec = get_zoo_model(target)
    model = spec.build()
    with pytest.raises(VprkitError, match=expected) as err:
        spec.load_state_dict(model, load_safely(path))
    message = str(err.value)
    assert "\n" not in message
    assert f"not a {'CosPlace' if target.startswith('cosplace') else 'EigenPlaces'} " in message
    fits = [name_of(family, *file) for family in FAMILIES if file[1] in FAMILIES[family].get(file[0], [])]
    assert message.endswith(
        f"; the file is a {BACKBONE_TEXT[file[0]]} {file[1]}-D GeoLocalizationNet: "
        f"--model {' or '.join(fits)}"
    )


def test_unreleased_size_said():
    state = RefCosPlaceNet("ResNet18", 100).state_dict()
    spec = get_zoo_model("eigenplaces_resnet18_256")
    with pytest.raises(
        VprkitError,
        match=r"; the file is a ResNet-18 100-D GeoLocalizationNet, a size "
        r"that was not released$",
    ):
        spec.load_state_dict(spec.build(), state)


@pytest.mark.parametrize(
    "state,expected",
    [
        ([1, 2], "found list"),
        ({}, "found dict (empty)"),
        ({"backbone.0.weight": "x"}, "'backbone.0.weight' holds str"),
        ({"backbone.0.weight": torch.zeros(1)}, "not a CosPlace ResNet-18 32-D state dict"),
    ],
)
def test_not_a_state_dict_refused(state, expected):
    spec = get_zoo_model("cosplace_resnet18_32")
    with pytest.raises(VprkitError) as err:
        spec.load_state_dict(spec.build(), state)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_registered_names_are_the_releases():
    released = {
        name_of(family, backbone, dim): (family, backbone, dim)
        for family, table in FAMILIES.items()
        for backbone, dims in table.items()
        for dim in dims
    }
    ours = {name: spec for name, spec in zoo_models().items() if spec.family in FAMILIES}
    assert len(released) == 43
    assert sorted(ours) == sorted(released)
    for name, spec in ours.items():
        match = NAME.match(name)
        assert match, name
        family, backbone, dim = released[name]
        assert spec.name == name and spec.family == family == match[1]
        assert spec.output_dim == dim == int(match[3])
        assert spec.backbone == BACKBONE_TEXT[backbone]
        assert spec.resize is None and spec.requires == () and spec.multiple_of == 1
        assert f"/releases/download/v1.0/{backbone}_{dim}_{family}.pth" in spec.weights
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("backbone", ["ResNet18", "ResNet50", "ResNet101", "ResNet152", "VGG16"])
def test_every_layout_has_upstream_keys(backbone):
    """Keys and shapes of every released backbone equal the reference's (built on the meta
    device: no weights are made)."""
    with torch.device("meta"):
        theirs = RefCosPlaceNet(backbone, 1).state_dict()
    for family, table in FAMILIES.items():
        for dim in table.get(backbone, []):
            with torch.device("meta"):
                ours = get_zoo_model(name_of(family, backbone, dim)).build().state_dict()
            expected = {
                k: (dim, *v.shape[1:]) if k.startswith("aggregation.3.") else tuple(v.shape)
                for k, v in theirs.items()
            }
            assert list(ours) == list(expected)
            assert {k: tuple(v.shape) for k, v in ours.items()} == expected


def test_extract_end_to_end(tmp_path, releases):
    """``vprkit.extract.split`` with ``ModelConfig(model=..., checkpoint=...)`` stores the reference's
    descriptors of the dataset's images (upstream's preprocessing; resized as vprkit resizes)."""
    ref, path = releases("ResNet18", 32)
    root = generate_dataset(tmp_path / "data", {"test": (10, 5)}, size=(64, 80), seed=0)
    out = tmp_path / "cosplace.h5"
    config = ModelConfig(model="cosplace_resnet18_32", checkpoint=str(path))
    extract(root, out, config, ExtractOptions(resize=(64, 80), workers=0, device="cpu"), progress=False)
    with DescriptorFile(out) as stored:
        assert stored.dim == 32
        for role, count in (("database", 10), ("queries", 5)):
            names = stored.names(role)
            assert len(names) == count
            rows = stored.read_rows(role, (1,), 0, count)
            images = [ref_image(root / "images" / "test" / role / name) for name in names]
            batch_ = torch.stack([resized(image, (64, 80)) for image in images])
            with torch.no_grad():
                expected = ref.eval()(batch_).numpy()
            np.testing.assert_allclose(rows, expected, atol=TOL, rtol=0)
            assert np.abs(expected[0] - expected[1:]).max() > 10 * TOL  # the images differ


def resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``image`` (3, H, W) at ``size`` as vprkit resizes (bilinear, antialiased), if it differs."""
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
