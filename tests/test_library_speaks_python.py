"""The library speaks Python: errors name parameters (the CLI shows the option), messages go to
``logging`` under the ``vprkit`` logger, progress goes to a callback (the CLI renders it)."""

from __future__ import annotations

import logging
import pickle
import warnings

import click
import pytest
from click.testing import CliRunner
from conftest import config, options

from vprkit.cli import command_context, error_line, main, option_message
from vprkit.ensemble.combining import combine
from vprkit.errors import ParameterError, VprkitError
from vprkit.extract.split import extract
from vprkit.progress import ProgressEvent, ProgressRenderer, progress_callback, progress_task


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class Recorder:
    """A progress callback that keeps every event."""

    def __init__(self):
        self.events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def tasks(self) -> dict[int, list[ProgressEvent]]:
        tasks: dict[int, list[ProgressEvent]] = {}
        for e in self.events:
            tasks.setdefault(e.id, []).append(e)
        return tasks


def assert_well_formed(events: list[ProgressEvent], total: int) -> None:
    assert events[0].kind == "start" and events[0].total == total and events[0].completed == 0
    assert events[-1].kind == "done" and events[-1].completed == total
    assert all(e.kind == "advance" for e in events[1:-1])
    assert sum(e.advance for e in events) == total
    done = [e.completed for e in events]
    assert done == sorted(done)


class TestParameterErrors:
    def test_library_names_the_parameter(self, gem_file, netvlad_file, tmp_path):
        with pytest.raises(ParameterError) as info:
            combine([gem_file, netvlad_file], tmp_path / "c.h5", block_rows=0)
        assert info.value.parameter == "block_rows"
        assert str(info.value) == "block_rows must be at least 1, got 0"
        assert isinstance(info.value, VprkitError) and isinstance(info.value, ValueError)
        assert not (tmp_path / "c.h5").exists()

    @pytest.mark.parametrize(
        "kw, parameter",
        [
            ({"batch_size": 0}, "batch_size"),
            ({"workers": -1}, "workers"),
            ({"seed": -1}, "seed"),
            ({"resize": (0, 10)}, "resize"),
            ({"dtype": "int8"}, "dtype"),
        ],
    )
    def test_extract_options(self, small_root, tmp_path, kw, parameter):
        with pytest.raises(ParameterError) as info:
            extract(small_root, tmp_path / "x.h5", config(), options(**kw))
        assert info.value.parameter == parameter and "--" not in str(info.value)
        assert parameter in str(info.value)

    def test_cli_shows_the_option(self, gem_file, netvlad_file, tmp_path):
        result = cli("combine", gem_file, netvlad_file, "-o", tmp_path / "c.h5", "--block-rows", "0")
        assert result.exit_code == 1
        assert result.output.strip() == "Error: --block-rows must be at least 1, got 0"

    def test_cli_shows_an_option_of_another_name(self, gem_file, netvlad_file, tmp_path):
        """combine's ``weights`` is the command's --part-weights (declared by the command)."""
        result = cli("combine", gem_file, netvlad_file, "-o", tmp_path / "c.h5", "--part-weights", "1")
        assert "Error: --part-weights needs 2 positive numbers" in result.output

    def test_words_inside_names_and_paths_are_kept(self):
        command = click.Command("x", params=[click.Option(["-p", "--pca"], type=int)])
        ctx = click.Context(command)
        err = ParameterError("pca", "pca must be positive for /data/pca/x.h5 and pca.h5 (pca_fit)")
        shown = option_message(err, command_context(_traceback_with(ctx, err)))
        assert shown == "--pca must be positive for /data/pca/x.h5 and pca.h5 (pca_fit)"

    def test_unknown_parameter_keeps_the_message(self):
        ctx = click.Context(click.Command("x", params=[]))
        err = ParameterError("batch_size", "batch_size must be at least 1, got 0")
        assert option_message(err, command_context(_traceback_with(ctx, err))) == str(err)
        assert option_message(err, None) == str(err)

    def test_a_quoted_cause_gets_the_options_too(self):
        """A torchrun failure quotes the ParameterError of a process (``ProcessFailed``)."""
        command = click.Command("x", params=[click.Option(["--overwrite"], is_flag=True)])
        cause = ParameterError("overwrite", "x.h5 exists; pass overwrite")
        try:
            raise VprkitError(f"process 1 of 2 failed: {cause}") from cause
        except VprkitError as err:
            assert error_line(err, click.Context(command)) == (
                "process 1 of 2 failed: x.h5 exists; pass --overwrite"
            )

    def test_pickles_with_its_parameters(self):
        err = pickle.loads(pickle.dumps(ParameterError("resize", "resize or native_size", "native_size")))
        assert (err.parameter, err.others, str(err)) == ("resize", ("native_size",), "resize or native_size")


def _traceback_with(ctx: click.Context, err: Exception):
    """A traceback whose frame holds ``ctx`` as click's Command.invoke frames do."""

    def invoke(ctx):
        raise err

    try:
        invoke(ctx)
    except Exception as caught:
        return caught.__traceback__


class TestLogging:
    def test_library_logs_and_prints_nothing(self, gem_file, netvlad_file, tmp_path, caplog, capsys):
        with caplog.at_level(logging.INFO, logger="vprkit"):
            path = combine([gem_file, netvlad_file], tmp_path / "c.h5", pca=16)
        out = capsys.readouterr()
        assert out.out == "" and out.err == ""
        messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
        wrote = [m for name, _, m in messages if m.startswith("wrote ")]
        assert len(wrote) == 1 and wrote[0].startswith(f"wrote {path}: 32 dims from ")
        assert all(name.startswith("vprkit.") for name, _, _ in messages)
        assert any(m.startswith("fitting PCA") for _, _, m in messages)

    def test_silent_without_logging_configured(self, gem_file, netvlad_file, tmp_path, capsys):
        assert logging.getLogger("vprkit").getEffectiveLevel() >= logging.WARNING
        combine([gem_file, netvlad_file], tmp_path / "c.h5")
        out = capsys.readouterr()
        assert out.out == "" and out.err == ""

    def test_cli_shows_the_log_lines(self, gem_file, netvlad_file, tmp_path):
        result = cli("combine", gem_file, netvlad_file, "-o", tmp_path / "c.h5")
        assert result.exit_code == 0, result.output
        assert f"wrote {tmp_path / 'c.h5'}: 2304 dims from gem.h5[1] + netvlad.h5[1]" in result.output
        assert "combine: 36/36 done" in result.output  # the progress, as log lines
        quiet = cli("combine", gem_file, netvlad_file, "-o", tmp_path / "q.h5", "--quiet")
        assert quiet.exit_code == 0 and quiet.output == ""

    def test_cli_leaves_logging_as_it_was(self, gem_file, netvlad_file, tmp_path):
        logger = logging.getLogger("vprkit")
        before = (list(logger.handlers), logger.level)
        assert cli("combine", gem_file, netvlad_file, "-o", tmp_path / "c.h5", "--quiet").exit_code == 0
        assert (list(logger.handlers), logger.level) == before


class TestProgress:
    def test_combine_reports_its_rows(self, gem_file, netvlad_file, tmp_path):
        seen = Recorder()
        combine([gem_file, netvlad_file], tmp_path / "c.h5", progress=seen)
        (events,) = seen.tasks().values()
        assert events[0].task == "combine"
        assert_well_formed(events, 24 + 12)

    def test_extract_reports_its_images(self, small_root, tmp_path):
        seen = Recorder()
        extract(small_root, tmp_path / "x.h5", config(), options(scales=(1, 2)), progress=seen)
        (events,) = seen.tasks().values()
        assert events[0].task == "extract scales 1+2"
        assert_well_formed(events, 24 + 12)
        assert all(e.status.endswith(" img/s") for e in events[1:-1] if e.advance)

    def test_done_after_an_error(self):
        seen = Recorder()
        with pytest.raises(RuntimeError), progress_task(seen, "work", 10) as task:
            task.advance(3)
            raise RuntimeError("stop")
        assert [e.kind for e in seen.events] == ["start", "advance", "done"]
        assert seen.events[-1].completed == 3

    def test_none_is_silent(self):
        with progress_task(None, "work", 2) as task:
            task.advance(2)
        assert task.completed == 2

    def test_booleans_still_work_with_a_warning(self, gem_file, netvlad_file, tmp_path):
        with pytest.warns(DeprecationWarning, match="progress=True is deprecated") as seen:
            path = combine([gem_file, netvlad_file], tmp_path / "c.h5", progress=True)
        assert path.is_file()
        assert seen[0].filename == __file__  # the warning points at the caller
        with pytest.warns(DeprecationWarning):
            assert isinstance(progress_callback(True), ProgressRenderer)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert progress_callback(False) is None  # False means None: no warning
            assert combine([gem_file, netvlad_file], tmp_path / "f.h5", progress=False).is_file()

    def test_not_a_callable(self):
        with pytest.raises(ParameterError, match="progress must be a callable"):
            progress_callback("yes")  # type: ignore[arg-type]


class TestRenderer:
    def test_log_lines_at_a_bounded_rate(self, caplog, monkeypatch):
        clock = [1000.0]
        monkeypatch.setattr("vprkit.progress.time.monotonic", lambda: clock[0])
        render = ProgressRenderer(live=False, seconds=30)
        with caplog.at_level(logging.INFO, logger="vprkit"):
            with progress_task(render, "extract scales 1", 5000) as task:
                for _ in range(500):
                    clock[0] += 0.5
                    task.advance(10, "20.0 img/s")
        lines = [r.getMessage() for r in caplog.records if r.name == "vprkit.progress"]
        assert lines[0] == "extract scales 1: started, 5000 to do"
        assert lines[-1] == "extract scales 1: 5000/5000 done in 4 min"
        assert "extract scales 1: 500/5000 (10%), 20.0 img/s, ETA 4 min" in lines
        assert len(lines) <= 2 + 10 + 250 / 30 + 1  # every 10 % or 30 s at most

    def test_quiet_time_gets_a_line_every_interval(self, caplog, monkeypatch):
        clock = [0.0]
        monkeypatch.setattr("vprkit.progress.time.monotonic", lambda: clock[0])
        render = ProgressRenderer(live=False, seconds=30)
        with caplog.at_level(logging.INFO, logger="vprkit"), progress_task(render, "pictures", 1000) as task:
            for _ in range(4):
                clock[0] += 31
                task.advance(1)
        lines = [r.getMessage() for r in caplog.records if r.name == "vprkit.progress"]
        assert len(lines) == 6  # started, one every 31 s, done
        assert lines[2].startswith("pictures: 2/1000 (0%), ")

    def test_bar_on_a_terminal(self):
        render = ProgressRenderer(live=True)
        with progress_task(render, "work", 4) as task:
            task.advance(4)
            assert render._bar is not None and render._bar.tasks[0].completed == 4
        assert render._bar is None  # stopped when its last task is done
