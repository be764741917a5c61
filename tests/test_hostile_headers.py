"""Hostile descriptor file headers and checkpoint configs, and database names that climb out of
the dataset (issue 23, parts 3 and 4).

A crafted attribute is refused when the file (or checkpoint) is opened, before any photo is
searched or any network or image is built: exactly one line ``Error: ...`` naming the file and
the attribute, exit code 1, nothing written. Names stored in a descriptor file are resolved
inside the recorded image folder only: ``..``, absolute names and NUL are refused.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vprkit.cli import main
from vprkit.errors import VprkitError
from vprkit.models import ModelConfig
from vprkit.store import DescriptorFile

DELETE = object()
Edit = Callable[[h5py.File], None]


def set_attr(name: str, value, group: str = "") -> Edit:
    """Replace (or delete) the attribute ``name`` of the root or of ``group``."""

    def edit(h5: h5py.File) -> None:
        attrs = (h5[group] if group else h5).attrs
        if value is DELETE:
            del attrs[name]
        else:
            attrs[name] = value

    return edit


def set_json(attr: str, *keys: str, value) -> Edit:
    """Replace (or delete) ``keys`` inside the JSON root attribute ``attr``."""

    def edit(h5: h5py.File) -> None:
        data = json.loads(h5.attrs[attr])
        target = data
        for key in keys[:-1]:
            target = target[key]
        if value is DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
        h5.attrs[attr] = json.dumps(data)

    return edit


def shard(**changes) -> dict:
    good = {
        "index": 0,
        "count": 2,
        "names_sha256": "0" * 64,
        "database_rows": [0, 24],
        "database_total": 48,
        "queries_rows": [0, 12],
        "queries_total": 24,
    }
    return {**good, **changes}


# (edit, the attribute the line must name)
HEADER_CASES = {
    "model missing": (set_attr("model", DELETE), "'model'"),
    "model not an object": (set_attr("model", "[1, 2]"), "'model'"),
    "model not JSON": (set_attr("model", "{oops"), "'model'"),
    "clusters abc": (set_json("model", "clusters", value="abc"), "'model.clusters'"),
    "clusters 1e9": (set_json("model", "clusters", value=1e9), "'model.clusters'"),
    "clusters 10**9": (set_json("model", "clusters", value=10**9), "'model.clusters'"),
    "clusters -1": (set_json("model", "clusters", value=-1), "'model.clusters'"),
    "clusters true": (set_json("model", "clusters", value=True), "'model.clusters'"),
    "output_dim huge": (set_json("model", "output_dim", value=10**12), "'model.output_dim'"),
    "weights with NUL": (set_json("model", "weights", value="a\x00b"), "'model.weights'"),
    "checkpoint a list": (set_json("model", "checkpoint", value=[1]), "'model.checkpoint'"),
    "l2 unknown": (set_json("model", "l2", value="sideways"), "'model.l2'"),
    "fc_output_dim text": (set_json("model", "fc_output_dim", value="x"), "'model.fc_output_dim'"),
    "netvlad_init a number": (set_json("model", "netvlad_init", value=5), "'model.netvlad_init'"),
    "ensemble inputs text": (set_json("model", "type", value="ensemble"), "'model.inputs'"),
    "aggregation not an object": (set_attr("aggregation", "3"), "'aggregation'"),
    "aggregation p text": (set_json("aggregation", "p", value="x"), "'aggregation.p'"),
    "aggregation type unknown": (set_json("aggregation", "type", value="zzz"), "'aggregation.type'"),
    "resize huge": (set_json("preprocessing", "resize", value=[100000, 100000]), "'preprocessing.resize'"),
    "resize negative": (set_json("preprocessing", "resize", value=[-5, 3]), "'preprocessing.resize'"),
    "resize text": (set_json("preprocessing", "resize", value="x"), "'preprocessing.resize'"),
    "resize three sides": (set_json("preprocessing", "resize", value=[64, 80, 3]), "'preprocessing.resize'"),
    "precision unknown": (
        set_json("preprocessing", "precision", value="float8"),
        "'preprocessing.precision'",
    ),
    "root a number": (set_json("dataset", "root", value=5), "'dataset.root'"),
    "root a list": (set_json("dataset", "root", value=[1]), "'dataset.root'"),
    "root with NUL": (set_json("dataset", "root", value="/a\x00b"), "'dataset.root'"),
    "split climbs": (set_json("dataset", "split", value="../../.."), "'dataset.split'"),
    "skipped negative": (set_json("dataset", "skipped_unparsable", value=-1), "'dataset.skipped_unparsable'"),
    "shard not an object": (set_json("dataset", "shard", value="x"), "'dataset.shard'"),
    "shard index text": (set_json("dataset", "shard", value=shard(index="a")), "'dataset.shard.index'"),
    "shard index -1": (set_json("dataset", "shard", value=shard(index=-1)), "'dataset.shard.index'"),
    "shard index = count": (
        set_json("dataset", "shard", value=shard(index=2, count=2)),
        "'dataset.shard.index'",
    ),
    "shard count 0": (set_json("dataset", "shard", value=shard(index=0, count=0)), "'dataset.shard.count'"),
    "shard hash not hex": (
        set_json("dataset", "shard", value=shard(names_sha256="x" * 64)),
        "'dataset.shard.names_sha256'",
    ),
    "shard rows beyond": (
        set_json("dataset", "shard", value=shard(database_rows=[0, 10**12])),
        "'dataset.shard.database_rows'",
    ),
    "dtype unknown": (set_attr("dtype", "float64"), "'dtype'"),
    "format_version unknown": (set_attr("format_version", 7), "'format_version'"),
    "format_version text": (set_attr("format_version", "abc"), "'format_version'"),
    "image_size huge": (set_attr("image_size", "[100000, 100000]", "scales/1"), "'scales/1/image_size'"),
    "image_size negative": (set_attr("image_size", "[-5, 3]", "scales/2"), "'scales/2/image_size'"),
    "rows_done text": (set_attr("rows_done_database", "abc", "scales/3"), "'scales/3/rows_done_database'"),
}

# A file whose network cannot be rebuilt: refused where it is (locate), before any photo.
REBUILD_CASES = {
    "backbone missing": (set_json("model", "backbone", value=DELETE), "'model.backbone'"),
    "backbone unknown": (set_json("model", "backbone", value="nope"), "'model.backbone'"),
    "backbone a number": (set_json("model", "backbone", value=3), "'model.backbone'"),
    "aggregation missing": (set_json("model", "aggregation", value=DELETE), "'model.aggregation'"),
    "zoo model unknown": (set_json("model", "model", value="nope"), "'model.model'"),
}


def crafted(source: Path, folder: Path, edit: Edit) -> Path:
    path = folder / "crafted.h5"
    shutil.copyfile(source, path)
    with h5py.File(path, "r+") as h5:
        edit(h5)
    return path


def one_error_line(args, *fragments) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = result.output.splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (
        result.output,
        result.exception,
    )
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def no_work(monkeypatch) -> list[str]:
    """Record (and stop) any network build, photo loading or picture drawing of locate."""
    import vprkit.locate.photos as locate_module
    import vprkit.report.pictures as pictures_module

    reached: list[str] = []

    def stop(name: str):
        def stopped(*args, **kw):
            reached.append(name)
            raise AssertionError(f"{name} was reached")

        return stopped

    monkeypatch.setattr(locate_module, "build_model", stop("build_model"))
    monkeypatch.setattr(locate_module, "image_loader", stop("image_loader"))
    monkeypatch.setattr(pictures_module, "write_pictures", stop("write_pictures"))
    return reached


def commands(path: Path, photo: Path, out: Path) -> dict[str, list]:
    return {
        "info": ["info", path],
        "evaluate": ["evaluate", path, "--json", out / "e.json"],
        "evaluate --pictures": ["evaluate", path, "--pictures", out / "e_pictures"],
        "merge": ["merge", path, "-o", out / "merged.h5", "--quiet"],
        "locate --db": ["locate", photo, "--db", path, "--quiet", "--json", out / "l.json"],
        "locate --pictures": ["locate", photo, "--db", path, "--quiet", "--pictures", out / "l_pictures"],
    }


@pytest.fixture(scope="module")
def photo(small_root) -> Path:
    return sorted((small_root / "images" / "test" / "queries").glob("*.jpg"))[0]


class TestHeaders:
    @pytest.mark.parametrize("case", list(HEADER_CASES))
    def test_every_command_gives_one_line(self, case, gem_file, photo, tmp_path, no_work):
        edit, attribute = HEADER_CASES[case]
        path = crafted(gem_file, tmp_path, edit)
        out = tmp_path / "out"
        out.mkdir()
        for name, args in commands(path, photo, out).items():
            line = one_error_line(args, str(path), f"attribute {attribute}")
            assert "Traceback" not in line, name
        assert list(out.iterdir()) == [] and no_work == []

    @pytest.mark.parametrize("case", list(REBUILD_CASES))
    def test_locate_refuses_a_network_it_cannot_rebuild(self, case, gem_file, photo, tmp_path, no_work):
        edit, attribute = REBUILD_CASES[case]
        path = crafted(gem_file, tmp_path, edit)
        out = tmp_path / "out"
        out.mkdir()
        for name in ("locate --db", "locate --pictures"):
            one_error_line(commands(path, photo, out)[name], str(path), f"attribute {attribute}")
        assert list(out.iterdir()) == [] and no_work == []

    def test_a_valid_shard_header_is_read(self, gem_file, tmp_path):
        path = crafted(gem_file, tmp_path, set_json("dataset", "shard", value=shard()))
        with DescriptorFile(path) as f:
            assert f.dataset["shard"]["index"] == 0
        one_error_line(["merge", path, "-o", tmp_path / "m.h5", "--quiet"], "shard(s) 1 of 2 missing")

    def test_merge_needs_each_shards_hash(self, gem_file, tmp_path):
        path = crafted(gem_file, tmp_path, set_json("dataset", "shard", value={"index": 0, "count": 1}))
        one_error_line(
            ["merge", path, "-o", tmp_path / "m.h5", "--quiet"],
            str(path),
            "attribute 'dataset.shard.names_sha256' is missing",
        )
        assert not (tmp_path / "m.h5").exists()

    def test_descriptors_wider_than_any_network_are_refused(self, gem_file, tmp_path):
        def widen(h5: h5py.File) -> None:
            for scale in ("1", "2", "3"):
                for role in ("database", "queries"):
                    rows = h5[f"scales/{scale}/{role}"].shape[0]
                    del h5[f"scales/{scale}/{role}"]  # no bytes stored: a sparse dataset
                    h5.create_dataset(
                        f"scales/{scale}/{role}", shape=(rows, 1 << 21), dtype="float32", chunks=(1, 1 << 16)
                    )

        path = crafted(gem_file, tmp_path, widen)
        one_error_line(["info", path], str(path), "scales/1/database has shape (24, 2097152)")

    @pytest.mark.parametrize("chunked", [False, True])
    def test_rows_declared_but_not_stored_are_refused(self, gem_file, tmp_path, chunked):
        """Names and coordinates of 2^33 images that the file never stored: refused on open,
        before reading them would ask for 128 GiB (checked under a 4 GiB address-space cap)."""
        import subprocess
        import sys

        rows = 1 << 33

        def sparse(h5: h5py.File) -> None:
            for role in ("database", "queries"):
                for name, shape, dtype in (
                    ("names", (rows,), h5py.string_dtype()),
                    ("utm", (rows, 2), "float64"),
                    ("sha256", (rows, 32), "uint8"),
                ):
                    del h5[f"{role}/{name}"]
                    h5.create_dataset(
                        f"{role}/{name}",
                        shape=shape,
                        dtype=dtype,
                        chunks=(1024, *shape[1:]) if chunked else None,
                    )

        path = crafted(gem_file, tmp_path, sparse)
        code = (
            "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
            "from vprkit.cli import main; sys.argv = ['vprkit', 'info', sys.argv[1]]; main()"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
        )
        lines = (done.stdout + done.stderr).splitlines()
        assert done.returncode == 1 and len(lines) == 1, (done.stdout, done.stderr)
        assert str(path) in lines[0] and "database/names declares 8589934592 rows" in lines[0]

    def test_the_valid_file_still_opens(self, gem_file):
        with DescriptorFile(gem_file) as f:
            assert f.preprocessing["resize"] == [64, 80] and f.image_size(1) == (64, 80)


@pytest.fixture(scope="module")
def ensemble_file(gem_file, tmp_path_factory) -> Path:
    from vprkit.ensemble.combining import combine

    out = tmp_path_factory.mktemp("ensemble") / "ens.h5"
    return combine([gem_file, gem_file], out, scales=["1", "2"], progress=False)


ENSEMBLE_CASES = {
    "inputs not a list": (set_json("model", "inputs", value="x"), "'model.inputs'"),
    "input dim text": (
        set_json("model", "inputs", value=[{"dim": "x", "scale": "1", "pca": None, "model": {}}]),
        "'model.inputs[0].dim'",
    ),
    "input model a number": (
        set_json("model", "inputs", value=[{"dim": 256, "scale": "1", "pca": None, "model": 5}]),
        "'model.inputs[0].model'",
    ),
    "combine spec not JSON": (set_attr("spec", "{", "combine"), "'combine/spec'"),
    "combine input dim huge": (
        lambda h5: h5["combine"].attrs.__setitem__(
            "spec", json.dumps({**json.loads(h5["combine"].attrs["spec"]), "inputs": [{"dim": 10**12}]})
        ),
        "'combine/spec.inputs[0].dim'",
    ),
}


class TestEnsembles:
    @pytest.mark.parametrize("case", list(ENSEMBLE_CASES))
    def test_one_line(self, case, ensemble_file, tmp_path):
        edit, attribute = ENSEMBLE_CASES[case]
        path = crafted(ensemble_file, tmp_path, edit)
        for args in (["info", path], ["evaluate", path]):
            one_error_line(args, str(path), f"attribute {attribute}")

    def test_the_valid_ensemble_opens(self, ensemble_file):
        with DescriptorFile(ensemble_file) as f:
            spec, pcas = f.combine_record()
            assert len(spec["inputs"]) == 2 and pcas == [None, None]


# --------------------------------------------------------------------------- checkpoints
GOOD_CONFIG = {
    "backbone": "resnet18conv4",
    "aggregation": "netvlad",
    "clusters": 8,
    "weights": "none",
    "checkpoint": None,
}
CHECKPOINT_CASES = {
    "clusters abc": ({"clusters": "abc"}, None, "'model_config.clusters'"),
    "clusters 1e9": ({"clusters": 1e9}, None, "'model_config.clusters'"),
    "clusters 10**9": ({"clusters": 10**9}, None, "'model_config.clusters'"),
    "clusters -1": ({"clusters": -1}, None, "'model_config.clusters'"),
    "clusters true": ({"clusters": True}, None, "'model_config.clusters'"),
    "backbone unknown": ({"backbone": "nope"}, None, "'model_config.backbone'"),
    "backbone missing": ({"backbone": DELETE}, None, "'model_config.backbone'"),
    "aggregation unknown": ({"aggregation": "nope"}, None, "'model_config.aggregation'"),
    "l2 unknown": ({"l2": "sideways"}, None, "'model_config.l2'"),
    "fc layer too large": (
        {"aggregation": "gem", "fc_output_dim": 10**9},
        None,
        "'model_config.fc_output_dim'",
    ),
    "weights a list": ({"weights": [1]}, None, "'model_config.weights'"),
    "config a list": (None, None, "'model_config'"),
    "trained at a huge size": ({}, {"resize": [100000, 100000]}, "'train_config.resize'"),
    "trained at a negative size": ({}, {"resize": [-5, 3]}, "'train_config.resize'"),
}


def crafted_checkpoint(path: Path, changes: dict | None, train: dict | None) -> Path:
    config: object = [1, 2]
    if changes is not None:
        config = {k: v for k, v in {**GOOD_CONFIG, **changes}.items() if v is not DELETE}
    payload: dict = {"model_state_dict": {"backbone.0.weight": torch.zeros(1)}, "model_config": config}
    if train is not None:
        payload["train_config"] = train
    torch.save(payload, path)
    return path


class TestCheckpoints:
    @pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
    def test_extract_gives_one_line(self, case, small_root, tmp_path, monkeypatch):
        import vprkit.models.checkpoints as checkpoints

        built: list[object] = []

        def refuse(config):
            built.append(config)
            raise AssertionError("the network was built")

        monkeypatch.setattr(checkpoints, "VPRModel", refuse)
        changes, train, key = CHECKPOINT_CASES[case]
        ck = crafted_checkpoint(tmp_path / "crafted.pth", changes, train)
        out = tmp_path / "out"
        out.mkdir()
        one_error_line(
            ["extract", small_root, "-o", out / "x.h5", "--checkpoint", ck, "--quiet"], str(ck), key
        )
        assert built == [] and list(out.iterdir()) == []

    def test_clusters_on_the_command_line_are_bounded(self, small_root, tmp_path, monkeypatch):
        import vprkit.models.network as network

        monkeypatch.setattr(network, "build_aggregation", lambda *a, **k: pytest.fail("built"))
        one_error_line(
            [
                "extract",
                small_root,
                "-o",
                tmp_path / "x.h5",
                "--aggregation",
                "netvlad",
                "--clusters",
                "1000000000",
                "--weights",
                "none",
                "--quiet",
            ],
            "clusters",
        )

    def test_validate_model_config(self):
        from vprkit.models import validate_model_config

        config = validate_model_config(
            {**GOOD_CONFIG, "output_dim": 2048, "fingerprint": "ab"}, "f.h5", "model", "header attribute"
        )
        assert config == ModelConfig(
            backbone="resnet18conv4", aggregation="netvlad", clusters=8, weights="none"
        )
        with pytest.raises(
            VprkitError,
            match=r"^f\.h5: header attribute 'model\.clusters' is "
            r"'abc'; expected an integer 1\.\.4096",
        ):
            validate_model_config({**GOOD_CONFIG, "clusters": "abc"}, "f.h5", "model", "header attribute")


# --------------------------------------------------------------------------- names (part 4)
@pytest.fixture
def escaping(gem_file, tmp_path) -> tuple[Path, Path, Path]:
    """A copy of the file recording a dataset under tmp_path whose database names climb out of
    its folder to an image beside it: (file, the outside image, the dataset root)."""
    root = tmp_path / "data"
    for role in ("database", "queries"):
        (root / "images" / "test" / role).mkdir(parents=True)
    secret = root / "images" / "test" / "secret.jpg"
    Image.new("RGB", (8, 6), (200, 0, 0)).save(secret)
    path = crafted(gem_file, tmp_path, set_json("dataset", "root", value=str(root)))
    return path, secret, root


def rename_database(path: Path, names: list[str]) -> None:
    with h5py.File(path, "r+") as h5:
        n = h5["database/names"].shape[0]
        del h5["database/names"]
        h5.create_dataset(
            "database/names", data=np.array((names * n)[:n], dtype=object), dtype=h5py.string_dtype("utf-8")
        )


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every path that PIL opens."""
    seen: list[str] = []
    real = Image.open

    def spy(fp, *args, **kw):
        seen.append(str(fp))
        return real(fp, *args, **kw)

    monkeypatch.setattr(Image, "open", spy)
    return seen


class TestNamesStayInside:
    @pytest.mark.parametrize("bad", ["../secret.jpg", "sub/../../secret.jpg", "ABSOLUTE"])
    def test_evaluate_and_locate_pictures_refuse(self, bad, escaping, photo, tmp_path, opened):
        path, secret, _ = escaping
        rename_database(path, [str(secret) if bad == "ABSOLUTE" else bad])
        out = tmp_path / "out"
        out.mkdir()
        one_error_line(["evaluate", path, "--pictures", out / "e"], str(path), "database name")
        one_error_line(
            ["locate", photo, "--db", path, "--quiet", "--pictures", out / "l"], str(path), "database name"
        )
        assert not any(Path(p).name == "secret.jpg" for p in opened), opened
        assert list(out.iterdir()) == []

    def test_names_are_refused_on_reading(self, escaping):
        path, _, _ = escaping
        rename_database(path, ["ok.jpg", "../secret.jpg"])
        with (
            DescriptorFile(path) as f,
            pytest.raises(
                VprkitError,
                match=r"database name 1 "
                r"'\.\./secret\.jpg'",
            ),
        ):
            f.names("database")

    def test_image_inside(self, tmp_path):
        from vprkit.data.datasets import image_inside

        assert image_inside(tmp_path, "a/b.jpg", "f.h5") == tmp_path / "a" / "b.jpg"
        for bad in ("../x.jpg", "a/../../x.jpg", "/etc/x.jpg", "", "a\x00b.jpg", "a/.."):
            with pytest.raises(VprkitError, match="f.h5"):
                image_inside(tmp_path, bad, "f.h5")

    def test_links_inside_the_dataset_are_followed(self, escaping, tmp_path, opened):
        """The dataset's own symbolic links are the user's: a name inside that links out is
        drawn (only a name that climbs out lexically is refused)."""
        path, secret, root = escaping
        link = root / "images" / "test" / "database" / "link.jpg"
        link.symlink_to(secret)
        rename_database(path, ["link.jpg"])
        result = CliRunner().invoke(
            main, ["evaluate", str(path), "--pictures", str(tmp_path / "pics"), "--limit", "1"]
        )
        assert result.exit_code == 0, result.output
        assert str(link) in opened
