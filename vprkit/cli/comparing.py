"""The compare command: paired comparisons of evaluation rows."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vprkit.choices import DEFAULT_RESAMPLES, DEFAULT_SEED
from vprkit.cli import emit_json, json_option, main
from vprkit.progress import results_console


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--baseline",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="The row every other row is compared with, counted from 1 over all the files' rows in order.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=DEFAULT_RESAMPLES,
    show_default=True,
    help="Resamples of the queries for the 95% paired intervals (0: none).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=DEFAULT_SEED,
    show_default=True,
    help="Seed of the bootstrap resampling (0 to 2**32-1).",
)
@json_option("the comparisons", is_output=True)
def compare(files, baseline, bootstrap, seed, json_path):
    """Is a Recall@N difference clear? Rows of vprkit evaluate --json, query by query.

    Every row of FILES (each a vprkit evaluate --json output on the same queries) is compared
    with the --baseline row: the difference in Recall@N with a paired bootstrap interval, and
    McNemar's exact test on R@1, then the verdict in words.

    Example: vprkit compare gem.json netvlad.json
    """
    from vprkit.evaluate.compare import compare_files, comparisons_json
    from vprkit.report.tables import comparison_table

    comparisons = compare_files(list(files), baseline, bootstrap, seed)
    if json_path != "-":
        results_console.print(comparison_table(comparisons))
        for c in comparisons:
            results_console.print(c.verdict(), markup=False, highlight=False)
    emit_json(json_path, json.loads(comparisons_json(comparisons)))
