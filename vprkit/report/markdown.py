"""Pipeline step: gather evaluation JSON and training runs into a markdown report with plots.

``write_report(inputs, "report.md")`` accepts files written by ``vprkit evaluate --json`` and
training run folders (``vprkit train --out``). It writes one Recall@N table per evaluation file
(a row per descriptor file and scale), one table of training runs (configuration, untrained and
best validation recalls), and PNG plots next to the report: Recall@N curves per evaluation file
and validation R@5 per epoch of every run. Nobody copies numbers by hand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vprkit.errors import VprkitError, shown
from vprkit.evaluate.results import EvaluationResult, load_results
from vprkit.evaluate.schema import (
    NUMBER,
    TEXT,
    Key,
    ListOf,
    Mismatch,
    Table,
    integer,
    parse_json,
    type_name,
)
from vprkit.evaluate.statistics import threshold_label
from vprkit.files import write_text
from vprkit.inputs import DATA_LIMIT, NOTES_LIMIT, read_text
from vprkit.report.plotting import integer_ticks, pyplot, save_figure
from vprkit.report.statistics import (
    comparison_lines,
    curve_cells,
    has_curves,
    plot_statistics,
    recall_cell,
)


def unique_labels(paths: list[Path]) -> list[str]:
    """Short distinct names: the file stems, lengthened by parent folders where they collide."""
    parts = [p.parts[:-1] + (p.stem if p.suffix == ".json" else p.name,) for p in paths]
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(q[-d:]) for q, d in zip(parts, depth, strict=True)]
        clashes = {label for label in labels if labels.count(label) > 1}
        grow = [i for i, label in enumerate(labels) if label in clashes and depth[i] < len(parts[i])]
        if not grow:
            return labels
        for i in grow:
            depth[i] += 1


def _cell(value) -> str:
    """Text for a markdown table cell: printable, one line, ``|`` escaped."""
    return shown(value).replace("|", "\\|")


def _plot_text(value) -> str:
    """Text for a plot label: printable, and no ``$`` that matplotlib would read as math."""
    return shown(value).replace("$", "\\$")


def _alt(value) -> str:
    """Text for the alt text of a markdown image: printable, brackets escaped."""
    return shown(value).replace("[", "\\[").replace("]", "\\]")


def _slug(label: str, taken: set[str]) -> str:
    """A file-name part for a plot: ``/`` and anything unsafe in a link become ``_``; distinct
    from the slugs already ``taken`` (which it joins)."""
    base = re.sub(r"[^\w.+-]", "_", label, flags=re.ASCII)
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}_{n}"
    taken.add(slug)
    return slug


# what the report reads of a training run (``vprkit.evaluate.schema`` kinds)
RUN_CONFIG = (
    ("backbone", TEXT),
    ("aggregation", TEXT),
    ("optimizer", TEXT),
    ("lr", NUMBER),
    ("weight_decay", NUMBER),
    ("scheduler", TEXT),
    ("augment", ListOf("a list of strings", TEXT)),
)
EPOCH = integer(0)
VAL_RECALLS = Table("an object of N -> Recall@N (%)", Key("a key", str), NUMBER, "Recall@{key}")


def _check_run_config(config, where: str) -> dict:
    if not isinstance(config, dict):
        raise VprkitError(f"{where}: {type_name(config)}, not an object of settings")
    for key, kind in RUN_CONFIG:
        if key not in config:
            raise VprkitError(f"{where}: no {key!r} (not written by 'vprkit train'?)")
        try:
            kind.read(config[key], repr(key))
        except Mismatch as err:
            raise VprkitError(f"{where}: {err}") from None
    return config


def _metric_row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return f"is {type_name(row)}, not an object"
    if "val_recalls" not in row:
        return None
    try:
        EPOCH.read(row.get("epoch"), "'epoch'")
    except Mismatch:
        return "has validation recalls without an integer 'epoch' >= 0"
    try:
        VAL_RECALLS.read(row["val_recalls"], "'val_recalls'")
    except Mismatch as err:
        return str(err)
    return None


def _load_run(folder: Path) -> dict:
    metrics = folder / "metrics.jsonl"
    config = folder / "config.json"
    if not metrics.is_file() or not config.is_file():
        raise VprkitError(f"{shown(folder)} is not a training run folder (no config.json/metrics.jsonl)")
    where = f"run configuration {shown(config)}"
    text = read_text(config, "run configuration", DATA_LIMIT)
    settings = _check_run_config(parse_json(text, where), where)
    rows = []
    for number, line in enumerate(read_text(metrics, "run metrics", DATA_LIMIT).split("\n"), start=1):
        if not line.strip():
            continue
        row = parse_json(line, f"{shown(metrics)} line {number}")
        problem = _metric_row_problem(row)
        if problem:
            raise VprkitError(f"{shown(metrics)} line {number} {problem}")
        rows.append(row)
    return {
        "name": folder.name,
        "path": folder.resolve(),
        "config": settings,
        "val": [r for r in rows if "val_recalls" in r],
        "loss": [r for r in rows if "loss" in r],
    }


def _recall_table(rows: list[EvaluationResult]) -> list[str]:
    ns = list(rows[0].recalls)
    curves = has_curves(rows)
    extra = ["AUC-PR", "R@100%P"] if curves else []
    lines = [
        "| file | model | scale | dim | " + " | ".join([f"R@{n}" for n in ns] + extra) + " |",
        "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in ns + extra) + " |",
    ]
    for r in rows:
        lines.append(
            f"| {_cell(Path(r.file).name)} | {_cell(r.model)} | {_cell(r.scale)} "
            f"| {r.dim} | "
            + " | ".join([recall_cell(r, n) for n in ns] + (curve_cells(r) if curves else []))
            + " |"
        )
    counts = {r.dataset: (r.queries, r.database) for r in rows}
    lines.append("")
    boot = rows[0].bootstrap
    lines.append(
        "; ".join(
            f"{shown(d) or 'dataset'}: {q} queries, {db} database images" for d, (q, db) in counts.items()
        )
        + f"; positives within {rows[0].threshold:g} m; "
        f"{shown(rows[0].search)} search"
        + (
            f"; ± half the 95% bootstrap interval ({boot['resamples']} resamples of the queries)"
            if boot is not None
            else ""
        )
        + (
            "; AUC-PR and R@100%P: precision-recall of the top-1 answers scored by their "
            f"distance, queries without positives {shown(rows[0].unmatched)}"
            if curves
            else ""
        )
        + "."
    )
    metres = list(rows[0].recall_at_thresholds)
    if metres and all(list(r.recall_at_thresholds) == metres for r in rows):
        lines += [
            "",
            "R@1 at other thresholds (top-1 prediction within t metres):",
            "",
            "| file | scale | " + " | ".join(f"{threshold_label(t)} m" for t in metres) + " |",
            "| --- | --- | " + " | ".join("---:" for _ in metres) + " |",
        ]
        for r in rows:
            lines.append(
                f"| {_cell(Path(r.file).name)} | {_cell(r.scale)} | "
                + " | ".join(f"{r.recall_at_thresholds[t]:.1f}" for t in metres)
                + " |"
            )
    return lines


def _run_table(runs: list[dict]) -> list[str]:
    lines = [
        "| run | model | optimizer | lr | wd | scheduler | augment | epochs | untrained R@1 / R@5 "
        "| best val R@1 / R@5 (epoch) |",
        "| --- | --- | --- | ---: | ---: | --- | --- | ---: | --- | --- |",
    ]
    for run in runs:
        c, val = run["config"], run["val"]
        untrained = next((v for v in val if v["epoch"] == 0), None)
        trained = [v for v in val if v["epoch"] > 0]
        best = max(trained, key=lambda v: v["val_recalls"].get("5", 0), default=None)

        def pair(v):
            return (
                "-"
                if v is None
                else f"{v['val_recalls'].get('1', 0):.1f} / {v['val_recalls'].get('5', 0):.1f}"
            )

        lines.append(
            f"| {_cell(run['name'])} | {_cell(c['backbone'])}+{_cell(c['aggregation'])} "
            f"| {_cell(c['optimizer'])} | {c['lr']:g} | {c['weight_decay']:g} | {_cell(c['scheduler'])} "
            f"| {_cell(', '.join(c['augment'])) or '-'} "
            f"| {len(trained)} | {pair(untrained)} | {pair(best)}"
            + (f" ({best['epoch']})" if best else "")
            + " |"
        )
    return lines


def _plot_recalls(rows: list[EvaluationResult], out: Path, title: str) -> Path | None:

    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.plot(
            list(r.recalls),
            list(r.recalls.values()),
            marker="o",
            label=_plot_text(f"{Path(r.file).stem} [{r.scale}]"),
        )
    ax.set(xlabel="N", ylabel="Recall@N (%)", title=_plot_text(title))
    integer_ticks(ax.xaxis)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def _plot_runs(runs: list[dict], out: Path) -> Path | None:

    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        ax.plot(
            [v["epoch"] for v in run["val"]],
            [v["val_recalls"].get("5", 0) for v in run["val"]],
            marker="o",
            label=_plot_text(run["name"]),
        )
    ax.set(xlabel="epoch (0 = untrained)", ylabel="validation R@5 (%)", title="training runs")
    integer_ticks(ax.xaxis)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def write_report(
    inputs: list[str | Path],
    output: str | Path,
    title: str = "vprkit report",
    notes: str | Path | None = None,
) -> Path:
    """Markdown tables (and PNG plots beside ``output``) from evaluation JSON and run folders.

    Sections and runs are named by their file or folder name, lengthened by parent folders where
    two would read alike (``efficientnet_lite0/table1_multiscale/table1``). ``notes``: a markdown
    file put under the title (hand-written commentary that a rerun keeps): a regular file (or a
    link to one) of at most ``vprkit.inputs.NOTES_LIMIT`` (1 MiB), read before anything is
    written.
    """
    output = Path(output)
    evaluations: list[tuple[Path, list[EvaluationResult]]] = []
    runs = []
    for item in map(Path, inputs):
        if item.is_dir():
            runs.append(_load_run(item))
        elif item.is_file():
            evaluations.append((item, load_results(item)))
        else:
            raise VprkitError(
                f"{shown(item)} does not exist"
                if not item.exists()
                else f"{shown(item)} is neither a file nor a folder"
            )
    if not evaluations and not runs:
        raise VprkitError("nothing to report: give evaluation JSON files or run folders")
    lines = [f"# {shown(title)}", ""]
    if notes is not None:
        lines += [read_text(notes, "the notes", NOTES_LIMIT).strip(), ""]
    slugs: set[str] = set()
    output.parent.mkdir(parents=True, exist_ok=True)
    labels = unique_labels([path.resolve() for path, _ in evaluations])
    for (path, rows), label in zip(evaluations, labels, strict=True):
        source = os.path.relpath(path.resolve(), output.parent.resolve())
        lines += [f"## {shown(label)}", "", f"From `{shown(source)}`.", ""] + _recall_table(rows) + [""]
        slug = _slug(f"_{label}", slugs)
        plot = _plot_recalls(rows, output.with_name(f"{output.stem}{slug}.png"), label)
        if plot:
            lines += [f"![Recall@N, {_alt(label)}]({plot.name})", ""]
        compared = comparison_lines(rows, shown(path))
        if compared:
            lines += compared + [""]
        stats = plot_statistics(rows, output.with_name(f"{output.stem}{slug}_statistics.png"), label)
        if stats:
            lines += [
                f"![precision-recall, R@1 against the threshold and top-1 errors, "
                f"{_alt(label)}]({stats.name})",
                "",
            ]
    groups: dict[Path, list[dict]] = {}  # runs by the folder that holds them (one per recipe)
    for run in runs:
        groups.setdefault(run["path"].parent, []).append(run)
    names = unique_labels(list(groups)) if len(groups) > 1 else [""] * len(groups)
    for (_, members), name in zip(groups.items(), names, strict=True):
        title = f"Training runs: {shown(name)}" if name else "Training runs"
        lines += [f"## {title}", ""] + _run_table(members) + [""]
        slug = _slug(f"_training_{name}" if name else "_training", slugs)
        plot = _plot_runs(members, output.with_name(f"{output.stem}{slug}.png"))
        if plot:
            lines += [f"![validation R@5 per epoch, {_alt(name or 'all runs')}]({plot.name})", ""]
    write_text(output, "\n".join(lines).encode("utf-8", "backslashreplace").decode("utf-8"))
    return output
