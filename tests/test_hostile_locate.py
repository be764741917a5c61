"""Hostile input on locate, report and dataset import (issue 23): FIFOs and devices named as
photos, notes or CSV files are refused at once (never a hang, never a read without end), locate's
CSV cannot carry spreadsheet formulas, names that are not UTF-8 reach CSV, JSON and GeoJSON as
valid UTF-8, and bad option values or runs without any readable photo fail with one line.

A regression must fail, not hang or exhaust memory: the FIFO cases run under an alarm and the
``/dev/zero`` cases under a cap on the address space (``guarded``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import Hung, guarded

from vprkit.cli import main
from vprkit.report.locations import BENCHMARK_NAME, spreadsheet_safe

BAD_NAME = b"caf\xe9.jpg"  # Latin-1, not valid UTF-8


def run_cli(*args):
    with guarded():
        result = CliRunner().invoke(main, [str(a) for a in args])
    assert not isinstance(result.exception, (Hung, MemoryError)), result.exception
    return result


def assert_one_line_error(args, *fragments, code: int = 1) -> str:
    """The CLI fails with ``code`` and exactly one line ``Error: ...`` holding ``fragments``."""
    result = run_cli(*args)
    lines = result.output.splitlines()
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("Error: "), (
        result.exit_code,
        result.output,
        result.exception,
    )
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def queries(small_root: Path) -> list[Path]:
    return sorted((small_root / "images/test/queries").glob("*.jpg"))


def photo_folder(folder: Path, small_root: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in queries(small_root)[:count]:
        shutil.copy(photo, folder / photo.name)
    return folder


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def zero_link(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to("/dev/zero")
    return path


def bad_name_copy(folder: Path, source: Path, name: bytes = BAD_NAME) -> str:
    """A copy of ``source`` whose name is not valid UTF-8 (skips where the file system refuses
    such names); the name as Python sees it (surrogate escapes)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(os.path.join(os.fsencode(folder), name), os.O_CREAT | os.O_WRONLY, 0o644)
    except OSError as err:
        pytest.skip(f"this file system refuses names that are not UTF-8 ({err.strerror})")
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
    return os.fsdecode(name)


def strict_utf8(path: Path) -> str:
    """The file's text, which must be valid UTF-8 with no surrogate, raw or escaped."""
    text = path.read_bytes().decode("utf-8")
    assert "\\ud" not in text.lower(), text
    return text


def run_folder(folder: Path) -> Path:
    """A training run folder that ``vprkit report`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "backbone": "resnet18conv4",
        "aggregation": "gem",
        "optimizer": "adamw",
        "lr": 1e-4,
        "weight_decay": 1e-3,
        "scheduler": "plateau",
        "augment": ["night:M2"],
        "epochs": 1,
    }
    (folder / "config.json").write_text(json.dumps(config))
    rows = [
        {"epoch": 0, "val_recalls": {"1": 10.0, "5": 20.0}},
        {"epoch": 1, "val_recalls": {"1": 12.5, "5": 30.0}},
    ]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


# --------------------------------------------------------------------------- 1. photo files
class TestLocatePhotoFiles:
    """A FIFO or a link to a device among the photos is refused at once, as extract refuses it."""

    def test_fifo_in_a_folder_is_refused_without_hanging(self, small_root, gem_file, tmp_path):
        folder = photo_folder(tmp_path / "photos", small_root)
        fifo(folder / "x.jpg")
        assert_one_line_error(["locate", folder, "--db", gem_file, "--quiet"], "x.jpg", "FIFO")

    def test_dev_zero_link_in_a_folder_is_refused(self, small_root, gem_file, tmp_path):
        folder = photo_folder(tmp_path / "photos", small_root)
        zero_link(folder / "x.jpg")
        assert_one_line_error(["locate", folder, "--db", gem_file, "--quiet"], "x.jpg", "character device")

    def test_fifo_named_on_the_command_line(self, small_root, gem_file, tmp_path):
        photo = queries(small_root)[0]
        assert_one_line_error(
            ["locate", photo, fifo(tmp_path / "x.jpg"), "--db", gem_file, "--quiet"], "x.jpg", "FIFO"
        )

    def test_device_named_on_the_command_line(self, gem_file, tmp_path):
        assert_one_line_error(
            ["locate", zero_link(tmp_path / "x.jpg"), "--db", gem_file, "--quiet"],
            "x.jpg",
            "character device",
        )
        assert_one_line_error(
            ["locate", "/dev/zero", "--db", gem_file, "--quiet"], "/dev/zero", "character device"
        )

    def test_broken_link_is_refused_naming_it(self, small_root, gem_file, tmp_path):
        folder = photo_folder(tmp_path / "photos", small_root)
        (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
        assert_one_line_error(
            ["locate", folder, "--db", gem_file, "--quiet"], "gone.jpg", "broken symbolic link"
        )
        (folder / "gone.jpg").unlink()  # a link to a photo is read like the photo
        (folder / "link.jpg").symlink_to(queries(small_root)[2])
        result = run_cli("locate", folder, "--db", gem_file, "--quiet", "--json", "-")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["located"] == 3

    def test_open_input_checks_the_opened_file(self, tmp_path, monkeypatch):
        """A photo swapped for a FIFO after the check is still refused, without blocking."""
        from vprkit import inputs
        from vprkit.errors import VprkitError

        pipe = fifo(tmp_path / "x.jpg")
        monkeypatch.setattr(inputs, "check_regular", lambda path, what: Path(path))
        with guarded(), pytest.raises(VprkitError, match="x.jpg.*FIFO"):
            inputs.open_input(pipe, "image")

    def test_photo_swapped_for_a_fifo_is_listed_unreadable(self, small_root, tmp_path):
        from vprkit.data.images import ImageScalesDataset

        pipe = fifo(tmp_path / "x.jpg")
        with guarded():
            item = ImageScalesDataset([queries(small_root)[0], pipe], None, (1,))[1]
        assert item[1] is None and "x.jpg" in item[2] and "FIFO" in item[2]

    def test_photo_over_the_size_limit_is_listed_unreadable(self, small_root, gem_file, monkeypatch):
        from vprkit import inputs
        from vprkit.locate.photos import locate

        photo = queries(small_root)[0]
        monkeypatch.setattr(inputs, "IMAGE_FILE_LIMIT", 100)
        result = locate([photo], gem_file, progress=False)
        assert not result.located and len(result.failed) == 1
        reason = result.failed[0][1]
        assert photo.name[:20] in reason and "100 bytes" in reason and "\n" not in reason


# --------------------------------------------------------------------------- 7. locate --csv
class TestLocateCsv:
    FORMULAS = ("=1+1.jpg", "+1.jpg", "-1.jpg", "@SUM(1).jpg")

    def test_formula_cells_are_neutralised(self, small_root, gem_file, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        source = queries(small_root)[0]
        for name in self.FORMULAS:
            shutil.copy(source, tmp_path / name)
        result = run_cli("locate", "--db", gem_file, "--quiet", "--csv", "l.csv", "--", *self.FORMULAS)
        assert result.exit_code == 0, result.output
        with open(tmp_path / "l.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["photo"] for r in rows] == [f"'{n}" for n in self.FORMULAS]
        for row in rows:  # benchmark names (@east@north@...) cannot form a formula: kept as they are
            assert BENCHMARK_NAME.fullmatch(row["best_match"]), row["best_match"]
            assert float(row["east"]) > 0 and float(row["distance"]) >= 0

    @pytest.mark.parametrize("name", ["@0542@4179@10@S@@@@@@@@d0312@.jpg", "@1.5@2@x/y_z-1@.png"])
    def test_benchmark_names_are_kept(self, name):
        assert spreadsheet_safe(name) == name

    @pytest.mark.parametrize(
        "name",
        ["@SUM(1)", "@1@2@+cmd|' /C calc'!A0", "@-1+1", "@ 1", "=1", "+1", "-1", "\t=1", "\r=1", "@1@2@x y"],
    )
    def test_formula_like_names_are_prefixed(self, name):
        assert spreadsheet_safe(name) == "'" + name

    def test_name_that_is_not_utf8(self, small_root, gem_file, tmp_path):
        folder = tmp_path / "photos"
        bad_name_copy(folder, queries(small_root)[0])
        result = run_cli("locate", folder, "--db", gem_file, "--quiet", "--csv", tmp_path / "l.csv")
        assert result.exit_code == 0, (result.output, result.exception)
        rows = list(csv.DictReader(io.StringIO(strict_utf8(tmp_path / "l.csv"), newline="")))
        assert len(rows) == 1 and rows[0]["photo"].endswith("caf\\xe9.jpg")


# --------------------------------------------------------------------------- 8. --nprobe
class TestLocateNprobe:
    @pytest.mark.parametrize("value", [["--nprobe=-1"], ["--nprobe", "0"]])
    def test_cli_refuses_nprobe_below_1(self, small_root, gem_file, value):
        assert_one_line_error(
            ["locate", queries(small_root)[0], "--db", gem_file, "--index", "IVF2,Flat", *value, "--quiet"],
            "--nprobe",
            code=2,
        )

    def test_library_names_the_parameter(self, small_root, gem_file):
        from vprkit.errors import VprkitError
        from vprkit.locate.photos import locate

        with pytest.raises(VprkitError, match="nprobe must be at least 1"):
            locate([queries(small_root)[0]], gem_file, index="IVF2,Flat", nprobe=-1, progress=False)


# --------------------------------------------------------------------------- 10. report --notes
class TestReportNotes:
    def test_dev_zero_link(self, tmp_path):
        run = run_folder(tmp_path / "run")
        assert_one_line_error(
            ["report", run, "-o", tmp_path / "r.md", "--notes", zero_link(tmp_path / "notes.md")],
            "notes.md",
            "character device",
        )
        assert not (tmp_path / "r.md").exists()

    def test_dev_zero(self, tmp_path):
        run = run_folder(tmp_path / "run")
        assert_one_line_error(
            ["report", run, "-o", tmp_path / "r.md", "--notes", "/dev/zero"], "/dev/zero", "character device"
        )

    def test_fifo(self, tmp_path):
        run = run_folder(tmp_path / "run")
        assert_one_line_error(
            ["report", run, "-o", tmp_path / "r.md", "--notes", fifo(tmp_path / "notes.md")],
            "notes.md",
            "FIFO",
        )
        assert not (tmp_path / "r.md").exists()

    def test_notes_over_the_limit(self, tmp_path):
        run = run_folder(tmp_path / "run")
        notes = tmp_path / "notes.md"
        notes.write_bytes(b"x" * ((1 << 20) + 1))
        line = assert_one_line_error(
            ["report", run, "-o", tmp_path / "r.md", "--notes", notes], "notes.md", "1048577 bytes", "1 MiB"
        )
        assert "limit" in line
        assert not (tmp_path / "r.md").exists()
        notes.write_bytes(b"y" * (1 << 20))  # at the limit: kept
        result = run_cli("report", run, "-o", tmp_path / "r.md", "--notes", notes)
        assert result.exit_code == 0, result.output
        assert "y" * 1000 in (tmp_path / "r.md").read_text()


# --------------------------------------------------------------------------- dataset import --csv
class TestImportCsvFile:
    def test_fifo(self, small_root, tmp_path):
        photos = photo_folder(tmp_path / "photos", small_root, 1)
        assert_one_line_error(
            ["dataset", "import", photos, tmp_path / "ds", "--csv", fifo(tmp_path / "c.csv")], "c.csv", "FIFO"
        )
        assert not (tmp_path / "ds").exists()

    def test_dev_zero_link(self, small_root, tmp_path):
        photos = photo_folder(tmp_path / "photos", small_root, 1)
        assert_one_line_error(
            ["dataset", "import", photos, tmp_path / "ds", "--csv", zero_link(tmp_path / "c.csv")],
            "c.csv",
            "character device",
        )
        assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- 11. exit code, -, UTF-8
class TestLocateOutputs:
    def test_no_readable_photo_exits_non_zero(self, gem_file, tmp_path):
        folder = tmp_path / "photos"
        folder.mkdir()
        (folder / "a.jpg").write_bytes(b"not a jpeg")
        (folder / "b.png").write_bytes(b"")
        result = run_cli(
            "locate",
            folder,
            "--db",
            gem_file,
            "--quiet",
            "--csv",
            tmp_path / "l.csv",
            "--json",
            tmp_path / "l.json",
        )
        lines = result.output.splitlines()
        assert result.exit_code == 1, result.output
        assert lines[-1].startswith("Error: ") and "no photo could be read" in lines[-1]
        listed = "".join(lines[:-1])  # the failures, listed first (lines may wrap)
        assert listed.count("skipped") == 2 and "a.jpg" in listed and "b.png" in listed
        assert not any(line.startswith("Error") for line in lines[:-1])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]

    def test_csv_dash_prints_to_stdout(self, small_root, gem_file, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        photo = queries(small_root)[0]
        result = run_cli("locate", photo, "--db", gem_file, "--quiet", "--csv", "-")
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader(io.StringIO(result.output, newline="")))
        assert len(rows) == 1 and rows[0]["photo"] == str(photo)
        assert list(tmp_path.iterdir()) == []

    def test_two_outputs_to_stdout_are_refused(self, small_root, gem_file, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert_one_line_error(
            ["locate", queries(small_root)[0], "--db", gem_file, "--quiet", "--csv", "-", "--json", "-"],
            "--csv",
            "--json",
        )
        assert list(tmp_path.iterdir()) == []

    def test_json_and_geojson_are_valid_utf8(self, small_root, gem_file, tmp_path):
        folder = tmp_path / "photos"
        bad_name_copy(folder, queries(small_root)[0])
        (folder / "broken.jpg").write_bytes(b"not a jpeg")
        os.rename(folder / "broken.jpg", os.path.join(os.fsencode(folder), b"bro\xffken.jpg"))
        result = run_cli(
            "locate",
            folder,
            "--db",
            gem_file,
            "--quiet",
            "--json",
            tmp_path / "l.json",
            "--geojson",
            tmp_path / "g.json",
            "--csv",
            tmp_path / "l.csv",
        )
        assert result.exit_code == 0, (result.output, result.exception)
        located = json.loads(strict_utf8(tmp_path / "l.json"))
        shown_name = str(folder / "caf\\xe9.jpg")
        assert [loc["photo"] for loc in located["locations"]] == [shown_name]
        assert located["failed"][0]["photo"] == str(folder / "bro\\xffken.jpg")
        assert "bro\\xffken.jpg" in located["failed"][0]["error"]
        features = json.loads(strict_utf8(tmp_path / "g.json"))["features"]
        assert [f["properties"]["photo"] for f in features] == [shown_name]
        rows = list(csv.DictReader(io.StringIO(strict_utf8(tmp_path / "l.csv"), newline="")))
        assert [r["photo"] for r in rows] == [shown_name]
