"""End-to-end extraction on generated data: content, pyramid, resume, refusals, bad input."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import SIZE, config, options
from helpers import datasets_of, identical
from PIL import Image

from vprkit.data.datasets import load_split
from vprkit.data.images import load_image, preprocess
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.extract.split import extract
from vprkit.files import output_lock
from vprkit.models import VPRModel
from vprkit.store import DescriptorFile, DescriptorWriter, partial_path


def reference_model(aggregation: str, file: Path, seed: int = 0, clusters: int = 8) -> VPRModel:
    torch.manual_seed(seed)
    model = VPRModel(config(aggregation, clusters=clusters)).eval()
    if aggregation == "netvlad":
        with h5py.File(file) as f:
            state = {k: torch.from_numpy(v[()]) for k, v in f["model/aggregation"].items()}
        model.aggregation.load_state_dict(state)
    return model


def images_at(root: Path, role: str, scales) -> list[torch.Tensor]:
    split = load_split(root, "test")
    per_image = [preprocess(load_image(p), SIZE, scales) for p in split.role(role).paths()]
    return [torch.stack([im[i] for im in per_image]) for i in range(len(scales))]


class TestExtractedFile:
    def test_layout(self, gem_file, small_root):
        split = load_split(small_root, "test")
        with DescriptorFile(gem_file) as f:
            assert f.scales == [1, 2, 3] and f.dim == 256
            assert f.names("database") == split.database.names
            np.testing.assert_array_equal(f.utm("queries"), split.queries.utm)
            assert f.model["backbone"] == "resnet18conv4" and len(f.model["fingerprint"]) == 64
            assert f.preprocessing["resize"] == list(SIZE)
            assert f.h5["scales/3"].attrs["image_size"] == "[21, 26]"
            assert f.h5["scales/2/stats/queries/count"][0] == 2 * 3  # 32x40 -> stride 16
            assert bool(f.h5.attrs["complete"])

    @pytest.mark.parametrize("aggregation", ["gem", "netvlad"])
    def test_descriptors_equal_the_network(self, aggregation, request, small_root):
        file = request.getfixturevalue(f"{aggregation}_file")
        model = reference_model(aggregation, file)
        batches = images_at(small_root, "queries", (1, 2, 3))
        with torch.no_grad(), DescriptorFile(file) as f:
            for scale, batch in zip((1, 2, 3), batches, strict=True):
                np.testing.assert_allclose(
                    f.read_rows("queries", (scale,), 0, 12), model(batch).numpy(), atol=1e-5
                )
            for spec in ((1, 2), (1, 3), (1, 2, 3), (2, 3)):
                direct = model.forward_pyramid([batches[s - 1] for s in spec]).numpy()
                np.testing.assert_allclose(f.read_rows("queries", spec, 0, 12), direct, atol=1e-5)

    def test_netvlad_clusters_recorded(self, netvlad_file, small_root):
        with DescriptorFile(netvlad_file) as f:
            init = f.model["netvlad_init"]
            assert init["split"] == "test" and init["seed"] == 0 and init["features"] > 8
            names = "\n".join(load_split(small_root, "test").database.names).encode()
            assert init["database_names_sha256"] == hashlib.sha256(names).hexdigest()
            assert init["images"] == 24
            assert f.h5["model/aggregation/centroids"].shape == (8, 256)

    def test_clusters_are_not_reused_from_another_dataset_or_options(
        self, small_root, tmp_path, netvlad_file
    ):
        other = generate_dataset(tmp_path / "other", {"test": (24, 12)}, size=SIZE, seed=9)
        out = tmp_path / "n.h5"
        shutil.copyfile(netvlad_file, out)
        netvlad = config("netvlad", clusters=8)
        extract(other, out, netvlad, options(scales=(1, 2, 3), overwrite=True), progress=False)
        with DescriptorFile(out) as f, DescriptorFile(netvlad_file) as old:
            assert f.dataset["root"] == str(other.resolve())
            assert not np.array_equal(
                f.h5["model/aggregation/centroids"][:], old.h5["model/aggregation/centroids"][:]
            )
        extract(
            small_root,
            tmp_path / "t.h5",
            netvlad,
            options(cluster_split="train", cluster_images=5),
            progress=False,
        )
        with DescriptorFile(tmp_path / "t.h5") as f:
            init = f.model["netvlad_init"]
            assert init["split"] == "train" and init["images"] == 5


class TestResume:
    def test_interrupted_run_resumes_to_identical_descriptors(self, small_root, tmp_path, monkeypatch):
        reference = extract(
            small_root,
            tmp_path / "ref.h5",
            config("netvlad", clusters=8),
            options(scales=(1, 2)),
            progress=False,
        )
        out = tmp_path / "out.h5"
        real_commit = DescriptorWriter.commit_rows
        calls = {"n": 0}

        def failing_commit(self, role, scales, rows, *view):
            real_commit(self, role, scales, rows, *view)
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt

        monkeypatch.setattr(DescriptorWriter, "commit_rows", failing_commit)
        with pytest.raises(KeyboardInterrupt):
            extract(small_root, out, config("netvlad", clusters=8), options(scales=(1, 2)), progress=False)
        monkeypatch.undo()
        assert not out.exists() and partial_path(out).exists()
        with h5py.File(partial_path(out)) as f:
            assert f["scales/1"].attrs["rows_done_database"] == 15
            assert not f.attrs["complete"]
        extract(small_root, out, config("netvlad", clusters=8), options(scales=(1, 2)), progress=False)
        assert not partial_path(out).exists()
        ref, got = datasets_of(reference), datasets_of(out)
        assert ref.keys() == got.keys()
        for key in ref:
            assert identical(ref[key], got[key]), key

    @pytest.mark.slow
    def test_kill_9_then_rerun(self, tmp_path):
        # ~1 GFLOP per image so that the run lasts seconds, long enough to be killed mid-way
        root = generate_dataset(tmp_path / "data", {"test": (300, 100)}, size=SIZE, seed=2)
        out = tmp_path / "k.h5"
        cmd = [
            sys.executable,
            "-m",
            "vprkit.cli",
            "extract",
            str(root),
            "-o",
            str(out),
            "--weights",
            "none",
            "--resize",
            "128",
            "160",
            "--scales",
            "1,2",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--quiet",
            "--device",
            "cpu",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not partial_path(out).exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
        assert proc.poll() is None, "extraction finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not out.exists(), "a killed extraction left a file at the final path"
        subprocess.run(cmd, check=True, capture_output=True)
        assert out.exists() and not partial_path(out).exists()
        shutil.move(out, tmp_path / "resumed.h5")
        subprocess.run(cmd, check=True, capture_output=True)
        resumed, clean = datasets_of(tmp_path / "resumed.h5"), datasets_of(out)
        for key in clean:
            assert identical(clean[key], resumed[key]), key


class TestExistingOutput:
    def test_append_scale_and_nothing_to_do(self, small_root, tmp_path):
        out = tmp_path / "a.h5"
        extract(small_root, out, config(), options(scales=(1,)), progress=False)
        first = datasets_of(out)["scales/1/database"]
        extract(small_root, out, config(), options(scales=(1, 2)), progress=False)
        with DescriptorFile(out) as f:
            assert f.scales == [1, 2]
            np.testing.assert_array_equal(f.h5["scales/1/database"][:], first)
        both = extract(small_root, tmp_path / "b.h5", config(), options(scales=(1, 2)), progress=False)
        assert identical(datasets_of(both)["scales/2/queries"], datasets_of(out)["scales/2/queries"])
        mtime = out.stat().st_mtime_ns
        extract(small_root, out, config(), options(scales=(2,)), progress=False)
        assert out.stat().st_mtime_ns == mtime

    def test_different_model_refused_then_overwritten(self, small_root, tmp_path):
        out = tmp_path / "a.h5"
        extract(small_root, out, config(), options(), progress=False)
        before = out.read_bytes()
        with pytest.raises(VprkitError, match="made differently .*fingerprint"):
            extract(small_root, out, config(), options(seed=1), progress=False)
        with pytest.raises(VprkitError, match="preprocessing differs"):
            extract(small_root, out, config(), options(resize=(32, 40)), progress=False)
        assert out.read_bytes() == before
        extract(small_root, out, config(), options(seed=1, overwrite=True), progress=False)
        assert out.read_bytes() != before

    def test_unfinished_file_of_another_model_refused(self, small_root, tmp_path, monkeypatch):
        out = tmp_path / "p.h5"

        def interrupt(self, role, scales, rows, *view):
            raise KeyboardInterrupt

        monkeypatch.setattr(DescriptorWriter, "commit_rows", interrupt)
        with pytest.raises(KeyboardInterrupt):
            extract(small_root, out, config(), options(), progress=False)
        monkeypatch.undo()
        with pytest.raises(VprkitError, match="unfinished extraction of something else"):
            extract(small_root, out, config(), options(seed=5), progress=False)

    def test_damaged_partial_is_restarted(self, small_root, tmp_path):
        out = tmp_path / "d.h5"
        partial_path(out).write_bytes(b"\x89HDF garbage")
        with pytest.warns(UserWarning, match="damaged"):
            extract(small_root, out, config(), options(), progress=False)
        assert DescriptorFile(out).num("queries") == 12

    def test_concurrent_run_refused(self, small_root, tmp_path):
        out = tmp_path / "l.h5"
        with output_lock(out):
            with pytest.raises(VprkitError, match="another vprkit process"):
                extract(small_root, out, config(), options(), progress=False)
            assert out.with_name("l.h5.lock").exists()  # the refused run left the lock alone
        assert not out.with_name("l.h5.lock").exists()

    def test_resume_with_fewer_scales_drops_the_unfinished_one(self, small_root, tmp_path, monkeypatch):
        out = tmp_path / "f.h5"

        def interrupt(self, role, scales, rows, *view):
            raise KeyboardInterrupt

        monkeypatch.setattr(DescriptorWriter, "commit_rows", interrupt)
        with pytest.raises(KeyboardInterrupt):
            extract(small_root, out, config(), options(scales=(1, 2, 3)), progress=False)
        monkeypatch.undo()
        extract(small_root, out, config(), options(scales=(1, 2)), progress=False)
        with DescriptorFile(out) as f:
            assert f.scales == [1, 2]

    def test_other_cluster_count_refused(self, small_root, tmp_path, netvlad_file):
        out = tmp_path / "c.h5"
        shutil.copyfile(netvlad_file, out)
        with pytest.raises(VprkitError, match="made differently .*clusters"):
            extract(small_root, out, config("netvlad", clusters=4), options(scales=(1,)), progress=False)


class TestOptions:
    def test_float16_storage(self, small_root, tmp_path, gem_file):
        out = extract(small_root, tmp_path / "h.h5", config(), options(dtype="float16"), progress=False)
        with DescriptorFile(out) as half, DescriptorFile(gem_file) as full:
            assert half.h5["scales/1/database"].dtype == np.float16
            np.testing.assert_allclose(
                half.read_rows("database", (1,), 0, 24), full.read_rows("database", (1,), 0, 24), atol=2e-3
            )

    def test_half_on_cpu_is_bfloat16_close_to_float32(self, small_root, tmp_path, gem_file):
        out = extract(small_root, tmp_path / "bf16.h5", config(), options(half=True), progress=False)
        with DescriptorFile(out) as half, DescriptorFile(gem_file) as full:
            assert half.preprocessing["precision"] == "bfloat16"
            assert full.preprocessing["precision"] == "float32"
            a = half.read_rows("database", (1,), 0, 24)
            b = full.read_rows("database", (1,), 0, 24)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() > 0.999 and np.abs(a - b).max() > 0  # close, and really bfloat16
        copy = tmp_path / "gem.h5"
        shutil.copyfile(gem_file, copy)
        with pytest.raises(VprkitError, match="preprocessing differs"):  # never mixed in a file
            extract(small_root, copy, config(), options(half=True, scales=(1, 4)), progress=False)

    def test_native_size_with_mixed_sizes_grey_and_rgba(self, tmp_path):
        root = tmp_path / "mixed"
        for role in ("database", "queries"):
            folder = root / "images/test" / role
            folder.mkdir(parents=True)
            Image.new("L", (40, 30), 90).save(folder / "@0@0@.png")
            Image.new("RGBA", (50, 20), (10, 200, 30, 128)).save(folder / "@0@5@.png")
            Image.new("RGB", (40, 30), (1, 2, 3)).save(folder / "@0@9@.jpg")
        out = extract(root, tmp_path / "m.h5", config(), options(resize=None, scales=(1, 2)), progress=False)
        with DescriptorFile(out) as f:
            counts = f.h5["scales/1/stats/database/count"][:].tolist()
        assert counts == [2 * 3, 2 * 4, 2 * 3]  # @0@0@ 40x30, @0@5@ 50x20, @0@9@ 40x30


class TestTooSmall:
    def test_network_failure_is_one_line(self, tmp_path):
        root = tmp_path / "tiny"
        for role in ("database", "queries"):
            (root / "images/test" / role).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / "images/test" / role / "@0@0@.jpg")
        vgg = config().__class__(backbone="vgg16", aggregation="gem", weights="none")
        message = r"vgg16 failed on 1 image\(s\) of 8x8 pixels at scale 1 \(too small\?\)"
        with pytest.raises(VprkitError, match=message):
            extract(root, tmp_path / "t.h5", vgg, options(resize=None, scales=(1, 3)), progress=False)


class TestBadImages:
    @pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
    def test_one_clear_error_naming_the_file(self, tmp_path, content):
        root = generate_dataset(tmp_path / "bad", {"test": (4, 2)}, size=(32, 40), seed=0)
        victim = sorted((root / "images/test/database").iterdir())[2]
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
        out = tmp_path / "bad.h5"
        with pytest.raises(VprkitError, match=f"cannot read image .*{victim.name}"):
            extract(root, out, config(), options(resize=(32, 40)), progress=False)
        assert not out.exists()


def test_the_one_process_path_is_run_extraction_and_the_old_name_warns(monkeypatch, tmp_path):
    """``extract_distributed`` was renamed ``run_extraction``; the old name is a deprecated alias
    for one release, and ``vprkit.extract.split.ExtractOptions`` still imports."""
    import vprkit.extract
    import vprkit.extract.split
    from vprkit.extract import distributed, options

    assert vprkit.extract.ExtractOptions is vprkit.extract.split.ExtractOptions is options.ExtractOptions
    calls = []
    monkeypatch.setattr(distributed, "run_extraction", lambda *a, **kw: calls.append((a, kw)) or "p")
    with pytest.warns(DeprecationWarning, match="run_extraction"):
        assert distributed.extract_distributed("r", "o", progress=None) == "p"
    assert calls == [(("r", "o"), {"progress": None})]
