"""The ``vprkit`` command line: a thin click layer over the library.

This module holds the group (``main``, which turns library errors into one line) and the options
every command shares (``-o/--output``, ``--json PATH|-``, named choices); the commands live in
``pipeline`` (extract, merge, evaluate, combine), ``training`` (train) and ``inspect`` (report,
info, dataset, demo)."""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from pathlib import Path

import click

from vprkit import __version__
from vprkit.choices import DEFAULT_RESAMPLES, DEFAULT_SEED, DEFAULT_THRESHOLDS, L2_PLACEMENTS
from vprkit.errors import ParameterError, VprkitError
from vprkit.files import write_text
from vprkit.progress import ProgressCallback, ProgressRenderer, console, inert, show_logs, styled

SCALE_HELP = "a scale such as 1, or a pyramid such as 1+2+3"
SIZE_HELP = "sizes are H W (height first), as shown everywhere"


class NamedChoice(click.Choice):
    """``click.Choice`` whose refusal names what was asked for: "unknown backbone 'x'; choose one
    of ..." (the list is also in ``--help``)."""

    def __init__(self, what: str, choices):
        super().__init__(list(choices))
        self.what = what

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        self.fail(f"unknown {self.what} {value!r}; choose one of {', '.join(self.choices)}", param, ctx)


def json_option(what: str, is_output: bool = False):
    """``--json PATH|-`` as every command has it: the command's result as JSON, written to PATH
    or, with ``-`` (or ``--json`` alone), printed alone to stdout. ``is_output``: the JSON is
    what the command makes (evaluate, info, dataset info), so ``-o/--output`` names it too."""
    names = ("-o", "--output", "--json") if is_output else ("--json",)
    also = " -o/--output is the same option." if is_output else ""
    return click.option(
        *names,
        "json_path",
        is_flag=False,
        flag_value="-",
        default=None,
        metavar="PATH|-",
        help=f"Write {what} as JSON to PATH, or print it alone to stdout with - "
        f"(also --json alone).{also}  [default: none]",
    )


def statistics_options(function):
    """``--bootstrap``, ``--seed``, ``--thresholds`` and ``--drop-unmatched``: how evaluate
    states its uncertainty (``vprkit.evaluate.statistics``)."""
    function = click.option(
        "--drop-unmatched",
        is_flag=True,
        help="Leave queries without any positive out of the precision-recall curve.  [default: "
        "counted there as wrong answers; Recall@N always counts them]",
    )(function)
    function = click.option(
        "--thresholds",
        default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS),
        show_default=True,
        metavar="M1,M2,...",
        help="Metres at which R@1 is also given (top-1 within M metres); none: no such table.",
    )(function)
    function = click.option(
        "--seed",
        type=click.IntRange(0, 2**32 - 1),
        default=DEFAULT_SEED,
        show_default=True,
        help="Seed of the bootstrap resampling (0 to 2**32-1).",
    )(function)
    return click.option(
        "--bootstrap",
        type=click.IntRange(min=0),
        default=DEFAULT_RESAMPLES,
        show_default=True,
        help="Resamples of the queries for the 95% intervals of Recall@N (0: none).",
    )(function)


def aggregation_options(function):
    """``--clusters``, ``--l2`` and ``--fc-output-dim``: the aggregation's options, as extract and
    train take them."""
    function = click.option(
        "--fc-output-dim",
        type=click.IntRange(min=1),
        default=None,
        help="A fully connected layer to this dimension, then L2, after the aggregation "
        "(the benchmark's --fc_output_dim; no pyramid).  [default: none]",
    )(function)
    function = click.option(
        "--l2",
        type=NamedChoice("--l2", L2_PLACEMENTS),
        default=None,
        help="Where gem, mac, spoc and rmac L2-normalise (the benchmark's --l2).  "
        "[default: before_pool, or what --checkpoint holds]",
    )(function)
    from vprkit.cli.defaults import field_default, library_option

    return library_option(
        "--clusters",
        type=click.IntRange(min=1),
        source=field_default("vprkit.models", "ModelConfig", "clusters"),
        help="NetVLAD clusters.",
    )(function)


def emit_json(json_path: str | None, data) -> bool:
    """Write ``data`` as ``--json`` asks; True when it went to stdout (print nothing else)."""
    if json_path is None:
        return False
    text = json.dumps(data, indent=2, default=str)
    if json_path == "-":
        click.echo(text)
        return True
    write_text(json_path, text + "\n")
    console.print(f"wrote {json_path}")
    return False


def output_option(help_text: str, default: Path | None = None):
    """``-o/--output`` as every command that writes has it, with ``--out`` kept as a hidden,
    deprecated alias (train and demo took --out before 0.2)."""

    def decorate(function):
        function = click.option(
            "--out",
            "deprecated_out",
            type=click.Path(path_type=Path),
            default=None,
            hidden=True,
            help="Deprecated alias of -o/--output.  [default: none]",
        )(function)
        return click.option(
            "-o",
            "--output",
            type=click.Path(path_type=Path),
            default=default,
            show_default=default is not None,
            help=help_text,
        )(function)

    return decorate


def resolve_output(output: Path | None, deprecated_out: Path | None) -> Path | None:
    """The output asked for, by -o/--output or (with a deprecation warning) by --out."""
    if deprecated_out is not None:
        warnings.warn(
            "--out is deprecated and will be removed in vprkit 0.3; use -o/--output",
            DeprecationWarning,
            stacklevel=2,
        )
        if output is not None and output != deprecated_out:
            raise VprkitError("give -o/--output once (--out is its deprecated alias)")
        return deprecated_out
    return output


def progress_renderer(quiet: bool = False) -> ProgressCallback | None:
    """The progress callback of a command: a rich bar on a terminal, log lines otherwise
    (``vprkit.progress.ProgressRenderer``); ``--quiet``: none, and only warnings are logged."""
    if quiet:
        logging.getLogger("vprkit").setLevel(logging.WARNING)
        return None
    return ProgressRenderer()


def _option_name(param: click.Parameter) -> str:
    """How a user writes ``param``: its first long option (``--batch-size``), or ROOT."""
    if isinstance(param, click.Option):
        return next((o for o in param.opts if o.startswith("--")), param.opts[0])
    return param.human_readable_name


def library_names(**names: str) -> None:
    """Declare, inside a command, which of its options a library parameter is where their names
    differ (``library_names(weights="part_weights")``), for ``option_message``."""
    click.get_current_context().meta.setdefault(_NAMES, {}).update(names)


_NAMES = "vprkit.library_names"


def command_context(tb) -> click.Context | None:
    """The innermost click context on the traceback ``tb`` (that of the command that raised)."""
    ctx = None
    while tb is not None:
        found = tb.tb_frame.f_locals.get("ctx")
        ctx = found if isinstance(found, click.Context) else ctx
        tb = tb.tb_next
    return ctx


def option_message(err: ParameterError, ctx: click.Context | None) -> str:
    """``err``'s message with its parameters written as the options of the command of ``ctx``
    (``batch_size`` -> ``--batch-size``); a parameter's name where the command has no such
    option."""
    message = str(err)
    if ctx is None:
        return message
    names = ctx.meta.get(_NAMES, {})
    params = {p.name: p for p in ctx.command.params}
    for parameter in (err.parameter, *err.others):
        param = params.get(names.get(parameter, parameter))
        if param is not None:  # the parameter as a word, not inside a name or a path
            word = re.compile(rf"(?<![\w./\\-]){re.escape(parameter)}(?![\w/\\-]|\.\w)")
            message = word.sub(_option_name(param).replace("\\", "\\\\"), message)
    return message


def error_line(err: VprkitError, ctx: click.Context | None) -> str:
    """The message of ``err`` as the CLI shows it: that of a ``ParameterError``, or of one that
    ``err`` quotes as its cause (a torchrun failure), with options for parameters."""
    cause = err if isinstance(err, ParameterError) else err.__cause__
    message = str(err)
    if isinstance(cause, ParameterError) and str(cause) in message:
        message = message.replace(str(cause), option_message(cause, ctx))
    return message


def _log_line(record: logging.LogRecord) -> str:
    """A log record's message, where it quotes a ``ParameterError`` with options (``error_line``)."""
    error = getattr(record, "error", None)
    text = record.getMessage()
    if isinstance(error, ParameterError) and str(error) in text:
        text = text.replace(str(error), option_message(error, click.get_current_context(True)))
    return text


class VprkitGroup(click.Group):
    """Turns library errors into one clear line and a non-zero exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:  # a bad option value: one line too (exit code 2)
            where = f" (see {err.ctx.command_path} --help)" if err.ctx is not None else ""
            click.echo(f"Error: {inert(err.format_message())}{where}", err=True)
            sys.exit(2)
        except VprkitError as err:
            line = error_line(err, command_context(err.__traceback__))
            raise click.ClickException(inert(line)) from None
        except KeyboardInterrupt:
            console.print(styled("interrupted", "red", ": rerun the same command to resume"))
            sys.exit(130)
        except OSError as err:
            if err.errno is None:
                raise
            where = f" ({err.filename})" if err.filename else ""
            raise click.ClickException(inert(f"{err.strerror or err}{where}")) from None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    console.print(styled("Warning:", "yellow", f" {message}"))


@click.group(cls=VprkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vprkit")
def main() -> None:
    """vprkit: visual place recognition from stored descriptor databases.

    Run the network once (extract), then evaluate scales, pyramids and ensembles from the
    stored descriptors without running it again.
    """
    warnings.showwarning = _show_warning
    # the library's messages (logging, ``vprkit`` logger) on stderr while the command runs
    click.get_current_context().call_on_close(show_logs(logging.INFO, _log_line))
    for stream in (sys.stdout, sys.stderr):  # text from damaged files: escaped, never a crash
        reconfigure = getattr(stream, "reconfigure", None)  # absent on some replaced streams
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except ValueError:
                pass


from vprkit.cli import comparing, export, inspect, locating, pipeline, training, zoo  # noqa: E402,F401  (commands)
