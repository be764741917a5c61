"""One source for every default: each command's options have the library's defaults.

For every command that runs a library step (extract, train, evaluate, locate, combine), each
click option that maps to a library option (a field of ``ExtractOptions``, ``TrainConfig`` or
``ModelConfig``, or a keyword of the library function the command calls) has that option's
default, compared after the command's own parsing of its text (``--scales 1,2`` -> ``(1, 2)``).
Every other option is listed, with why it has no library default or a different one on purpose.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import click
import pytest
from click.testing import CliRunner

from vprkit.cli import main
from vprkit.cli.defaults import LibraryOption, library_default
from vprkit.ensemble.combining import combine
from vprkit.evaluate.evaluation import evaluate_file, parse_recalls
from vprkit.evaluate.statistics import parse_thresholds
from vprkit.extract.options import ExtractOptions
from vprkit.locate.photos import locate
from vprkit.models import ModelConfig
from vprkit.store import parse_scales
from vprkit.train.config import TrainConfig

# options of every command that are not library options: what to write, how to run
COMMON = {
    "output": "the file to write",
    "json_path": "what to print",
    "quiet": "no progress bar",
    "deprecated_out": "a deprecated alias",
}


def parsed(value):
    """A default as the command reads it: tuples for click's sequences."""
    return tuple(value) if isinstance(value, list) else value


def defaults(command: str) -> dict:
    """Option name -> its default (a multiple option's unset default: ``()``, as it parses)."""
    cmd = main.commands[command]
    ctx = click.Context(cmd)
    unset = getattr(click.core, "UNSET", None)

    def default(p: click.Parameter):
        value = p.get_default(ctx)
        return () if p.multiple and (value is None or value is unset) else parsed(value)

    return {
        p.name: default(p) for p in cmd.params if isinstance(p, click.Option) and p.expose_value
    }  # not --list-recipes and such


def check(command: str, sources: list, converters: dict, exceptions: dict) -> None:
    """Each option of ``command`` has the default of the first of ``sources`` (dataclasses or
    functions) that declares its name, read through ``converters[name]``; the others are in
    ``exceptions`` (with a reason) or in COMMON. ``exceptions`` names no option that matches."""
    found = defaults(command)
    checked = set()
    for name, value in found.items():
        if name in exceptions or name in COMMON:
            continue
        owners = [s for s in sources if _declares(s, name)]
        assert owners, f"{command} --{name}: no library option of that name; list it as an exception"
        expected = library_default(owners[0], name)
        got = converters.get(name, lambda v: v)(value)
        assert got == parsed(expected), (command, name, got, expected)
        checked.add(name)
    assert not set(exceptions) - set(found), f"stale exceptions: {set(exceptions) - set(found)}"
    assert checked, command


def _declares(source, name: str) -> bool:
    if dataclasses.is_dataclass(source):
        return any(f.name == name for f in dataclasses.fields(source))
    return name in inspect.signature(source).parameters


def test_extract():
    check(
        "extract",
        [ExtractOptions, ModelConfig],
        {"scales": parse_scales, "views": lambda text: tuple(text.split(","))},
        {
            "backbone": "None: ModelConfig's default, or what --checkpoint holds (help says which)",
            "aggregation": "None: ModelConfig's default, or what --checkpoint holds",
            "l2": "None: before_pool, or what --checkpoint holds (ModelConfig's None too)",
            "resize": "None: the size a vprkit --checkpoint was trained at, else "
            "ExtractOptions.resize (image_size_for)",
            "native_size": "the other half of --resize (ExtractOptions.resize=None)",
            "shard": "text I/N or slurm, parsed into ExtractOptions.shard (None alike)",
            "merge_when_complete": "a flag of extract_shard_task, not of ExtractOptions",
            "keep_shards": "a keyword of run_extraction (default False alike)",
            "settings": "--set: no default (ModelConfig.with_overrides)",
        },
    )
    # --resize None is ExtractOptions.resize when no checkpoint records a size
    from vprkit.extract.split import image_size_for

    assert image_size_for(None, None, False)[0] == ExtractOptions().resize


def test_train():
    check(
        "train",
        [TrainConfig, ModelConfig],
        {},
        {
            "resume": "a run folder to continue, not a TrainConfig field",
            "recipe": "None: no recipe; TrainConfig.recipe records the one given",
            "native_size": "the other half of --resize (TrainConfig.resize=None)",
            "augment": "multiple option: () is TrainConfig.augment's []",
            "settings": "--set: no default (ModelConfig.with_overrides)",
        },
    )
    assert defaults("train")["augment"] == () and TrainConfig(root="r").augment == []


def test_evaluate():
    check(
        "evaluate",
        [evaluate_file],
        {"recalls": parse_recalls, "thresholds": parse_thresholds},
        {
            "scales": "multiple --scale: each file's first scale, as evaluate_file's None",
            "predictions": "written by vprkit.report.write_predictions, not evaluate_file",
            "pictures": "written by vprkit.report.write_query_pictures",
            "only_wrong": "a write_query_pictures option (default False alike)",
            "limit": "a write_query_pictures option (default None alike)",
            "paired": "the command's comparison of its rows (vprkit.evaluate.compare)",
        },
    )
    from vprkit.report.predictions import write_query_pictures

    found = defaults("evaluate")
    assert found["only_wrong"] == library_default(write_query_pictures, "only_wrong")
    assert found["limit"] == library_default(write_query_pictures, "limit")


def test_locate():
    check(
        "locate",
        [locate],
        {},
        {
            "database": "required --db: the descriptor file (locate's database argument)",
            "csv_path": "where to write (vprkit.report.locations)",
            "geojson_path": "where to write (vprkit.report.locations)",
            "pictures_dir": "where to write (vprkit.report.pictures)",
        },
    )


def test_combine():
    check(
        "combine",
        [combine],
        {},
        {
            "scales": "multiple --scale: () is combine's None (each file's first scale)",
            "pca_fit": "multiple: () is combine's 'database'",
            "part_weights": "text W1,W2,... parsed into combine's weights (None alike)",
            "deprecated_weights": "a deprecated alias of --part-weights",
            "overwrite": "combine's overwrite (default False alike), checked below",
        },
    )
    found = defaults("combine")
    assert found["overwrite"] == library_default(combine, "overwrite")
    assert found["scales"] == () and library_default(combine, "scales") is None


@pytest.mark.parametrize("command", ["extract", "train", "evaluate", "locate", "combine"])
def test_help_shows_the_library_defaults(command):
    """Each option whose default is read from the library shows it in --help."""
    text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
    cmd = main.commands[command]
    ctx = click.Context(cmd)
    for param in cmd.params:
        if isinstance(param, LibraryOption) and param.show_default and not param.is_flag:
            value = param.get_default(ctx)
            shown = ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
            assert f"[default: {shown}" in text, (command, param.name, shown)


def test_help_states_model_config_defaults_where_the_option_defers():
    """extract's --backbone and --aggregation default to None (a --checkpoint's own); the help
    names ModelConfig's default."""
    text = " ".join(CliRunner().invoke(main, ["extract", "--help"]).output.split())
    model = ModelConfig()
    for option, value in (("backbone", model.backbone), ("aggregation", model.aggregation)):
        assert re.search(rf"--{option} .*?\[default: {value}, or what --checkpoint holds\]", text), option


def test_defaults_are_read_without_importing_torch():
    """``import vprkit.cli`` reads no default (the readers run on first use)."""
    import subprocess
    import sys

    code = (
        "import sys, vprkit.cli; print(','.join(m for m in ('torch', 'h5py', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_extract_set_overrides_component_options(monkeypatch, tmp_path):
    """``vprkit extract --set aggregation.clusters=32``: the network's config, no new flag."""
    import vprkit.extract.distributed as distributed

    made = []
    monkeypatch.setattr(
        distributed,
        "run_extraction",
        lambda root, output, config, options, **kw: made.append(config) or output,
    )
    monkeypatch.setattr("vprkit.report.tables.describe_file", lambda path: {})

    def run(*options):
        return CliRunner().invoke(
            main,
            [
                "extract",
                str(tmp_path),
                "-o",
                str(tmp_path / "x.h5"),
                "--weights",
                "none",
                "--quiet",
                *options,
            ],
        )

    result = run(
        "--aggregation",
        "netvlad",
        "--set",
        "aggregation.clusters=32",
        "--set",
        "aggregation.fc_output_dim=128",
    )
    assert result.exit_code == 0, result.output
    assert (made[-1].aggregation, made[-1].clusters, made[-1].fc_output_dim) == ("netvlad", 32, 128)
    assert run().exit_code == 0 and made[-1] == ModelConfig(weights="none")  # ModelConfig's defaults
    refused = run("--set", "colour.hue=3")
    assert refused.exit_code == 1 and refused.output.startswith("Error: ")
    assert "unknown component 'colour'" in refused.output and "Traceback" not in refused.output
    refused = run("--checkpoint", str(tmp_path / "x.pth"), "--set", "aggregation.clusters=32")
    assert refused.exit_code == 1 and "needs --backbone and --aggregation" in refused.output
