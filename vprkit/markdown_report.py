"""Pipeline step: gather evaluation JSON and training runs into a markdown report with plots.

``write_report(inputs, "report.md")`` accepts files written by ``vprkit evaluate --json`` and
training run folders (``vprkit train --out``). It writes one Recall@N table per evaluation file
(a row per descriptor file and scale), one table of training runs (configuration, untrained and
best validation recalls), and PNG plots next to the report: Recall@N curves per evaluation file
and validation R@5 per epoch of every run. Nobody copies numbers by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import VprkitError
from .plotting import pyplot


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


def _load_evaluation(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise VprkitError(f"cannot read evaluation JSON {path}: {err}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "recalls" in r for r in rows):
        raise VprkitError(f"{path} is not the JSON that 'vprkit evaluate --json' writes")
    return rows


def _load_run(folder: Path) -> dict:
    metrics = folder / "metrics.jsonl"
    config = folder / "config.json"
    if not metrics.is_file() or not config.is_file():
        raise VprkitError(f"{folder} is not a training run folder (no config.json/metrics.jsonl)")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return {"name": folder.name, "path": folder.resolve(), "config": json.loads(config.read_text()),
            "val": [r for r in rows if "val_recalls" in r],
            "loss": [r for r in rows if "loss" in r]}


def _recall_table(rows: list[dict]) -> list[str]:
    ns = list(rows[0]["recalls"])
    lines = ["| file | model | scale | dim | " + " | ".join(f"R@{n}" for n in ns) + " |",
             "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in ns) + " |"]
    for r in rows:
        lines.append(f"| {Path(r['file']).name} | {r.get('model', '')} | {r['scale']} | {r['dim']} | "
                     + " | ".join(f"{r['recalls'][n]:.1f}" for n in ns) + " |")
    counts = {r.get("dataset", ""): (r["queries"], r["database"]) for r in rows}
    lines.append("")
    lines.append("; ".join(f"{d or 'dataset'}: {q} queries, {db} database images"
                           for d, (q, db) in counts.items())
                 + f"; positives within {rows[0]['threshold']:g} m; {rows[0].get('search', 'exact')}"
                 " search.")
    return lines


def _run_table(runs: list[dict]) -> list[str]:
    lines = ["| run | model | optimizer | lr | wd | scheduler | augment | epochs | untrained R@1 / R@5 "
             "| best val R@1 / R@5 (epoch) |",
             "| --- | --- | --- | ---: | ---: | --- | --- | ---: | --- | --- |"]
    for run in runs:
        c, val = run["config"], run["val"]
        untrained = next((v for v in val if v["epoch"] == 0), None)
        trained = [v for v in val if v["epoch"] > 0]
        best = max(trained, key=lambda v: v["val_recalls"].get("5", 0), default=None)

        def pair(v):
            return "-" if v is None else \
                f"{v['val_recalls'].get('1', 0):.1f} / {v['val_recalls'].get('5', 0):.1f}"

        lines.append(
            f"| {run['name']} | {c['backbone']}+{c['aggregation']} | {c['optimizer']} | {c['lr']:g} "
            f"| {c['weight_decay']:g} | {c['scheduler']} | {', '.join(c['augment']) or '-'} "
            f"| {len(trained)} | {pair(untrained)} | {pair(best)}"
            + (f" ({best['epoch']})" if best else "") + " |")
    return lines


def _plot_recalls(rows: list[dict], out: Path, title: str) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ns = [int(n) for n in r["recalls"]]
        ax.plot(ns, list(r["recalls"].values()), marker="o",
                label=f"{Path(r['file']).stem} [{r['scale']}]")
    ax.set(xlabel="N", ylabel="Recall@N (%)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _plot_runs(runs: list[dict], out: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        ax.plot([v["epoch"] for v in run["val"]], [v["val_recalls"].get("5", 0) for v in run["val"]],
                marker="o", label=run["name"])
    ax.set(xlabel="epoch (0 = untrained)", ylabel="validation R@5 (%)", title="training runs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(inputs: list[str | Path], output: str | Path, title: str = "vprkit report",
                 notes: str | Path | None = None) -> Path:
    """Markdown tables (and PNG plots beside ``output``) from evaluation JSON and run folders.

    Sections and runs are named by their file or folder name, lengthened by parent folders where
    two would read alike (``efficientnet_lite0/table1_multiscale/table1``). ``notes``: a markdown
    file put under the title (hand-written commentary that a rerun keeps).
    """
    output = Path(output)
    evaluations, runs = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            runs.append(_load_run(item))
        elif item.is_file():
            evaluations.append((item, _load_evaluation(item)))
        else:
            raise VprkitError(f"{item} does not exist")
    if not evaluations and not runs:
        raise VprkitError("nothing to report: give evaluation JSON files or run folders")
    lines = [f"# {title}", ""]
    if notes is not None:
        try:
            lines += [Path(notes).read_text().strip(), ""]
        except OSError as err:
            raise VprkitError(f"cannot read the notes {notes}: {err.strerror}") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    labels = unique_labels([path.resolve() for path, _ in evaluations])
    for (path, rows), label in zip(evaluations, labels, strict=True):
        source = os.path.relpath(path.resolve(), output.parent.resolve())
        lines += [f"## {label}", "", f"From `{source}`.", ""] + _recall_table(rows) + [""]
        slug = label.replace("/", "_")
        plot = _plot_recalls(rows, output.with_name(f"{output.stem}_{slug}.png"), label)
        if plot:
            lines += [f"![Recall@N, {label}]({plot.name})", ""]
    groups: dict[Path, list[dict]] = {}  # runs by the folder that holds them (one per recipe)
    for run in runs:
        groups.setdefault(run["path"].parent, []).append(run)
    names = unique_labels(list(groups)) if len(groups) > 1 else [""] * len(groups)
    for (_, members), name in zip(groups.items(), names, strict=True):
        title = f"Training runs: {name}" if name else "Training runs"
        lines += [f"## {title}", ""] + _run_table(members) + [""]
        slug = f"_{name.replace('/', '_')}" if name else ""
        plot = _plot_runs(members, output.with_name(f"{output.stem}_training{slug}.png"))
        if plot:
            lines += [f"![validation R@5 per epoch, {name or 'all runs'}]({plot.name})", ""]
    tmp = output.with_name(output.name + ".partial")
    tmp.write_text("\n".join(lines))
    tmp.replace(output)
    return output
