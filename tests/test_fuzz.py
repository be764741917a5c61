"""Fuzzing (hypothesis) of image names and descriptor files: anything gives a result or one clear
error line with a non-zero exit, never a traceback, and never changes the input."""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vprkit.cli import main
from vprkit.data.datasets import parse_utm
from vprkit.errors import VprkitError

FUZZ = settings(
    max_examples=int(__import__("os").environ.get("VPRKIT_FUZZ_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class TestNames:
    @FUZZ
    @given(st.text(max_size=80))
    def test_any_name_parses_or_fails_clearly(self, name):
        try:
            east, north = parse_utm(name)
        except VprkitError as err:
            assert "\n" not in str(err).strip() or "\n" in name
            return
        assert math.isfinite(east) and math.isfinite(north)

    @FUZZ
    @given(
        st.floats(-1e7, 1e7, allow_nan=False),
        st.floats(-1e7, 1e7, allow_nan=False),
        st.lists(st.text(alphabet=st.characters(blacklist_characters="@/\x00"), max_size=8), max_size=6),
    )
    def test_benchmark_names_round_trip(self, east, north, extra):
        name = "@".join(["", f"{east!r}", f"{north!r}", *extra, ""]) + ".jpg"
        assert parse_utm(name) == (east, north)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    return write_file(
        tmp_path_factory.mktemp("fuzz") / "good.h5", rng.normal(size=(30, 16)), rng.normal(size=(10, 16))
    )


def _paths(f: h5py.File) -> list[str]:
    found: list[str] = []
    f.visit(found.append)
    return sorted(found)


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("bytes"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
    st.tuples(
        st.just("attr"),
        st.sampled_from(
            [
                "format",
                "format_version",
                "complete",
                "model",
                "aggregation",
                "dataset",
                "preprocessing",
                "dtype",
            ]
        ),
        st.one_of(
            st.text(max_size=20),
            st.integers(-5, 5),
            st.just("{}"),
            st.just("[]"),
            st.just('{"type": "netvlad"}'),
        ),
    ),
    st.tuples(st.just("rows_done"), st.integers(-3, 100)),
    st.tuples(
        st.just("replace"),
        st.integers(0, 10_000),
        st.sampled_from(["empty", "scalar", "strings", "wide", "nan", "int"]),
    ),
)


def _mutate(path: Path, mutation) -> None:
    kind = mutation[0]
    if kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * mutation[1])])
    elif kind == "bytes":
        data = bytearray(path.read_bytes())
        at = int((len(data) - 1) * mutation[1])
        data[at : at + len(mutation[2])] = mutation[2]
        path.write_bytes(bytes(data[: len(data)]))
    else:
        with h5py.File(path, "r+") as f:
            datasets = [p for p in _paths(f) if isinstance(f[p], h5py.Dataset)]
            if kind == "delete":
                names = _paths(f)
                del f[names[mutation[1] % len(names)]]
            elif kind == "attr":
                f.attrs[mutation[1]] = mutation[2]
            elif kind == "rows_done":
                f["scales/1"].attrs["rows_done_database"] = mutation[1]
            elif kind == "replace":
                target = datasets[mutation[1] % len(datasets)]
                shape = f[target].shape
                del f[target]
                value = {
                    "empty": np.zeros((0,)),
                    "scalar": np.float32(1),
                    "strings": np.array(["x"] * max(1, shape[0] if shape else 1), dtype=object),
                    "wide": np.zeros((shape[0] if shape else 1, 99), np.float32),
                    "nan": np.full(shape or (1,), np.nan, np.float32),
                    "int": np.ones(shape or (1,), np.int8),
                }[mutation[2]]
                if value.dtype == object:
                    f.create_dataset(target, data=value, dtype=h5py.string_dtype())
                else:
                    f.create_dataset(target, data=value)


def _one_clear_line(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output


class TestDescriptorFiles:
    @FUZZ
    @given(mutations)
    def test_damaged_files_give_one_clear_error(self, good_file, mutation):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "f.h5"
            shutil.copyfile(good_file, path)
            try:
                _mutate(path, mutation)
            except (OSError, KeyError, ValueError, TypeError):
                return  # the mutation itself could not be applied to this file
            before = hashlib.sha256(path.read_bytes()).hexdigest()
            runner = CliRunner()
            for args in (
                ["evaluate", str(path)],
                ["info", str(path)],
                ["combine", str(path), str(good_file), "-o", str(Path(tmp) / "c.h5"), "--quiet"],
                ["evaluate", str(path), "--scale", "1", "--json", "-"],
            ):
                _one_clear_line(runner.invoke(main, args))
            assert hashlib.sha256(path.read_bytes()).hexdigest() == before
