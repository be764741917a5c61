"""The models command: the zoo of published models."""

from __future__ import annotations

import click

from vprkit.cli import emit_json, json_option, main
from vprkit.progress import results_console


def zoo_rows() -> list[dict]:
    """One row per zoo model: name, family, backbone, aggregation, dimension, input rule,
    weights source, extra packages."""
    from vprkit.models.zoo import zoo_models

    return [
        {
            "name": s.name,
            "family": s.family,
            "backbone": s.backbone,
            "aggregation": s.aggregation,
            "dim": s.output_dim,
            "input": (f"{s.resize[0]}x{s.resize[1]}" if s.resize else "native size")
            + (f", sides multiple of {s.multiple_of}" if s.multiple_of > 1 else ""),
            "weights": s.weights,
            "requires": list(s.requires),
            "notes": s.notes,
        }
        for s in zoo_models().values()
    ]


@main.command()
@click.option("--family", default=None, help="Only this family (e.g. cosplace).  [default: all]")
@json_option("the table")
def models(family, json_path):
    """The published models vprkit builds (extract --model NAME): backbone, aggregation,
    descriptor dimension, input size and where the released weights are.

    Besides these, any --backbone with any --aggregation (the benchmark's models).
    """
    from rich.table import Table

    from vprkit.report.tables import cell

    rows = [r for r in zoo_rows() if family is None or r["family"] == family]
    if emit_json(json_path, rows):
        return
    table = Table(title="vprkit extract --model NAME --checkpoint FILE (or --weights none)")
    for col in ("name", "backbone", "aggregation", "dim", "input (H x W)", "weights"):
        table.add_column(col, overflow="fold", justify="right" if col == "dim" else "left")
    for r in rows:
        extra = " (needs vprkit[dinov2])" if r["requires"] else ""
        table.add_row(
            cell(r["name"]),
            cell(r["backbone"]),
            cell(r["aggregation"]),
            str(r["dim"]),
            cell(r["input"]),
            cell(r["weights"] + extra, 300),
        )
    table.caption = (
        f"{len(rows)} models; besides them, any --backbone with any --aggregation (vprkit extract --help)"
    )
    results_console.print(table)
