"""Faults that must lose nothing: full disks, unwritable outputs, concurrent runs, and processes
killed at random points of combine and train (extract's kill -9 test is in test_extract.py)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import config, options
from helpers import datasets_of, identical, write_file

import vprkit.files as files
import vprkit.store as store
from vprkit.cli import main
from vprkit.data.synthetic import generate_dataset
from vprkit.ensemble.combining import combine
from vprkit.errors import VprkitError
from vprkit.extract.shards import merge
from vprkit.extract.split import extract
from vprkit.store import partial_path


@contextmanager
def tmpfs(path: Path, mount_options: str = "size=256m") -> Iterator[Path]:
    """A tmpfs mounted at ``path`` (skips where mounting needs privileges this run lacks)."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", mount_options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(path)], check=True, capture_output=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_datasets(a: Path, b: Path) -> None:
    da, db = datasets_of(a), datasets_of(b)
    assert sorted(da) == sorted(db)
    for key in da:
        assert identical(da[key], db[key]), key


class FreeSpace:
    """Pretends the disk holds ``writes`` more blocks, then is full."""

    def __init__(self, writes: int):
        self.writes = writes

    def __call__(self, path: Path) -> int:
        self.writes -= 1
        return 1 << 40 if self.writes >= 0 else 10 << 20


class TestFullDisk:
    def test_extract_stops_cleanly_keeps_the_old_file_and_resumes(self, small_root, tmp_path, monkeypatch):
        reference = extract(small_root, tmp_path / "ref.h5", config(), options(scales=(1, 2)), progress=False)
        out = extract(small_root, tmp_path / "gem.h5", config(), options(scales=(1,)), progress=False)
        before = digest(out)
        monkeypatch.setattr(files, "free_bytes", FreeSpace(writes=5))
        with pytest.raises(VprkitError, match=r"disk full: 10\.0 MiB free where .*gem\.h5\.partial"):
            extract(small_root, out, config(), options(scales=(1, 2)), progress=False)
        assert digest(out) == before  # the complete file is untouched
        assert partial_path(out).exists()  # and the committed rows of the new scale are kept
        monkeypatch.undo()
        extract(small_root, out, config(), options(scales=(1, 2)), progress=False)
        same_datasets(out, reference)

    def test_combine_and_merge_leave_the_old_output(self, gem_file, netvlad_file, tmp_path, monkeypatch):
        out = combine([gem_file, netvlad_file], tmp_path / "c.h5", progress=False)
        before = digest(out)
        monkeypatch.setattr(files, "free_bytes", FreeSpace(writes=1))
        with pytest.raises(VprkitError, match="disk full"):
            combine([gem_file, netvlad_file], out, overwrite=True, progress=False)
        assert digest(out) == before
        runner = CliRunner()
        monkeypatch.setattr(files, "free_bytes", FreeSpace(writes=0))
        result = runner.invoke(
            main, ["combine", str(gem_file), str(netvlad_file), "-o", str(out), "--overwrite", "--quiet"]
        )
        assert result.exit_code == 1 and result.output.startswith("Error: disk full")
        assert len(result.output.strip().splitlines()) == 1 and digest(out) == before

    def test_merge(self, small_root, tmp_path, monkeypatch):
        shards = [
            extract(small_root, tmp_path / "g.h5", config(), options(shard=(i, 2)), progress=False)
            for i in range(2)
        ]
        out = tmp_path / "merged.h5"
        out.write_bytes(b"old")
        monkeypatch.setattr(files, "free_bytes", FreeSpace(writes=1))
        with pytest.raises(VprkitError, match="disk full"):
            merge(shards, out, overwrite=True, progress=False)
        assert out.read_bytes() == b"old"


class TestUnwritable:
    def test_output_in_a_read_only_file_system(self, small_root):
        target = Path("/sys/vprkit-test.h5")
        try:
            target.with_suffix(".probe").open("w").close()
            target.with_suffix(".probe").unlink()
            pytest.skip("/sys is writable here")
        except OSError:
            pass
        result = CliRunner().invoke(
            main, ["extract", str(small_root), "-o", str(target), "--weights", "none", "--quiet"]
        )
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
        assert result.output.startswith(f"Error: cannot write next to {target}: ")

    def test_read_only_folder_keeps_the_old_file(self, gem_file, netvlad_file, tmp_path):
        with tmpfs(tmp_path / "ro") as folder:  # read-only for root too, unlike chmod
            out = combine([gem_file, netvlad_file], folder / "c.h5", progress=False)
            before = digest(out)
            remount(folder, "ro")
            result = CliRunner().invoke(
                main, ["combine", str(gem_file), str(netvlad_file), "-o", str(out), "--overwrite", "--quiet"]
            )
            assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
            assert "Read-only file system" in result.output and digest(out) == before

    def test_evaluate_index_in_a_read_only_folder_still_answers(self, gem_file, tmp_path):
        with tmpfs(tmp_path / "ro") as folder:
            shutil.copy(gem_file, folder / "gem.h5")
            remount(folder, "ro")
            result = CliRunner().invoke(
                main, ["evaluate", str(folder / "gem.h5"), "--index", "IVF2,Flat", "--json", "-"]
            )
            assert result.exit_code == 0, result.output
            assert "the index was built but not stored" in result.output
            assert "approximate (IVF2,Flat" in result.output

    def test_no_inodes_left(self, small_root, tmp_path):
        with tmpfs(tmp_path / "full", "size=64m,nr_inodes=8") as folder:
            for i in range(16):
                try:
                    (folder / f"f{i}").touch()
                except OSError:
                    break
            result = CliRunner().invoke(
                main,
                ["extract", str(small_root), "-o", str(folder / "gem.h5"), "--weights", "none", "--quiet"],
            )
            assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
            assert "No space left on device" in result.output

    def test_a_small_disk_that_fills_during_the_run(self, small_root, tmp_path, monkeypatch):
        """A real ENOSPC (no free-space margin, so the block reservation meets it first): the
        committed rows are kept, and the run resumes elsewhere once there is room."""
        monkeypatch.setattr(files, "SPACE_MARGIN", 0)
        with tmpfs(tmp_path / "small", "size=2m") as folder:  # 64 KiB rows: 2.3 MiB in all
            out = folder / "vlad.h5"
            with pytest.raises(VprkitError, match="No space left on device"):
                extract(small_root, out, config("netvlad", clusters=64), options(), progress=False)
            assert partial_path(out).exists() and not out.exists()
            with store.DescriptorFile(partial_path(out), require_complete=False) as f:
                done = f.h5["scales/1"].attrs["rows_done_database"]
            assert 0 < done < 24
            shutil.copy(partial_path(out), tmp_path / "vlad.h5.partial")
        monkeypatch.undo()
        resumed = extract(
            small_root, tmp_path / "vlad.h5", config("netvlad", clusters=64), options(), progress=False
        )
        reference = extract(
            small_root, tmp_path / "ref.h5", config("netvlad", clusters=64), options(), progress=False
        )
        same_datasets(resumed, reference)


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
if sys.argv[1] == "no-reserve":  # a file system that cannot reserve blocks (no fallocate)
    import vprkit.store.writer
    vprkit.store.writer.reserve = lambda *args: None
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from vprkit.cli import main
sys.argv = ["vprkit", *sys.argv[3:]]
main()
"""


class TestWriteErrorsNotForeseen:
    """EFBIG (a file-size limit, as a quota would stop a write) in the middle of an extraction:
    one line, committed rows kept, no crash and no h5py 'Exception ignored' lines; the rerun
    gives the descriptors of an uninterrupted run."""

    @pytest.mark.parametrize("how, limit", [("reserve", 2_200_000), ("no-reserve", 1_500_000)])
    def test_file_size_limit(self, small_root, tmp_path, how, limit):
        args = [
            "extract",
            str(small_root),
            "-o",
            str(tmp_path / "vlad.h5"),
            "--weights",
            "none",
            "--aggregation",
            "netvlad",
            "--clusters",
            "64",
            "--resize",
            "64",
            "80",
            "--workers",
            "0",
            "--batch-size",
            "5",
            "--quiet",
            "--device",
            "cpu",
        ]
        result = subprocess.run(
            [sys.executable, "-c", LIMITED, how, str(limit), *args],  # of 2.4 MB
            capture_output=True,
            text=True,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        lines = [line for line in output.splitlines() if line.strip()]
        assert lines[-1].startswith("Error: cannot write") and "File too large" in lines[-1]
        assert "Exception ignored" not in output and "Traceback" not in output, output
        partial = partial_path(tmp_path / "vlad.h5")
        assert partial.exists()
        writer = store.DescriptorWriter.open(partial)
        try:
            assert writer.rows_done("database", [1]) > 0
        finally:
            writer.close()
        subprocess.run([sys.executable, "-m", "vprkit.cli", *args], check=True, capture_output=True)
        reference = extract(
            small_root, tmp_path / "ref.h5", config("netvlad", clusters=64), options(), progress=False
        )
        same_datasets(tmp_path / "vlad.h5", reference)


class TestConcurrent:
    def test_combine_into_an_output_being_written_is_refused(self, gem_file, netvlad_file, tmp_path):
        out = tmp_path / "c.h5"
        with files.output_lock(out):
            with pytest.raises(VprkitError, match="another vprkit process is writing"):
                combine([gem_file, netvlad_file], out, progress=False)
        assert not out.exists() and not partial_path(out).exists()


def _kill_at_random_points(
    cmd: list[str], out: Path, rounds: int, seconds: float, rng: random.Random, ready=None
) -> None:
    """Start ``cmd`` ``rounds`` times and SIGKILL it after a random delay (after ``ready()``
    first holds, if given); after each kill the output is absent or complete, never partial."""
    for _ in range(rounds):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while ready is not None and not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, seconds))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            with store.DescriptorFile(out) if out.suffix == ".h5" else open(out, "rb"):
                pass  # a file at the final path is always complete (DescriptorFile checks)


class TestKilled:
    @pytest.mark.slow
    def test_combine_killed_at_random_points_then_rerun(self, tmp_path):
        rng = np.random.default_rng(0)
        gem = write_file(tmp_path / "gem.h5", rng.normal(size=(4000, 64)), rng.normal(size=(300, 64)))
        vlad = write_file(tmp_path / "vlad.h5", rng.normal(size=(4000, 512)), rng.normal(size=(300, 512)))
        cmd = [
            sys.executable,
            "-m",
            "vprkit.cli",
            "combine",
            str(gem),
            str(vlad),
            "--pca",
            "128",
            "-o",
            str(tmp_path / "c.h5"),
            "--overwrite",
            "--quiet",
        ]
        started = time.time()
        subprocess.run(cmd, check=True, capture_output=True)
        took = time.time() - started
        os.replace(tmp_path / "c.h5", tmp_path / "reference.h5")
        _kill_at_random_points(cmd, tmp_path / "c.h5", rounds=2, seconds=took, rng=random.Random(1))
        subprocess.run(cmd, check=True, capture_output=True)
        same_datasets(tmp_path / "c.h5", tmp_path / "reference.h5")
        assert not partial_path(tmp_path / "c.h5").exists()

    @pytest.mark.slow
    def test_train_killed_at_random_points_then_resumed(self, tmp_path):
        root = generate_dataset(
            tmp_path / "data", {"train": (30, 16), "val": (20, 10)}, size=(32, 40), seed=4
        )
        args = [
            str(root),
            "--weights",
            "none",
            "--resize",
            "32",
            "40",
            "--queries-per-epoch",
            "9",
            "--cache-refresh",
            "3",
            "--batch-size",
            "2",
            "--negatives",
            "2",
            "--neg-samples",
            "10",
            "--epochs",
            "2",
            "--infer-batch-size",
            "8",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--lr",
            "0.001",
            "--optimizer",
            "adamw",
            "--quiet",
        ]
        cli = [sys.executable, "-m", "vprkit.cli", "train"]
        started = time.time()
        subprocess.run([*cli, *args, "--out", str(tmp_path / "clean")], check=True, capture_output=True)
        took = time.time() - started
        run = tmp_path / "killed"
        rng = random.Random(2)
        proc = subprocess.Popen(
            [*cli, *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while not (run / "last.pth").exists() and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, took / 3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _kill_at_random_points(
            [*cli, "--resume", str(run)], run / "last.pth", rounds=1, seconds=took / 3, rng=rng
        )
        result = subprocess.run([*cli, "--resume", str(run)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        for name in ("last.pth", "best.pth"):
            a = torch.load(tmp_path / "clean" / name, weights_only=True)
            b = torch.load(run / name, weights_only=True)
            for key, value in a["model_state_dict"].items():
                torch.testing.assert_close(
                    b["model_state_dict"][key], value, rtol=0, atol=0, msg=f"{name} {key}"
                )
        assert not list(run.glob("*.partial"))
