"""Rich tables for results, descriptor files and datasets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from vprkit.evaluate.results import EvaluationResult
from vprkit.progress import inert
from vprkit.store import DescriptorFile, human_bytes

SHOWN_VALUE = 300  # characters of a stored attribute shown in ``vprkit info``


def cell(value: object, limit: int = SHOWN_VALUE) -> Text:
    """A table cell showing ``value`` as it is (no markup, control characters escaped)."""
    return Text(inert(value, limit))


def recall_table(results: Sequence[EvaluationResult], title: str | None = None) -> Table:
    """One row per (file, scale); the image counts of each dataset go to the caption."""
    ns = list(results[0].recalls)
    first = results[0]
    table = Table(title=cell(title or f"Recall@N (positives within {first.threshold:g} m)"))
    table.add_column("file", overflow="fold")
    table.add_column("model (weights)", overflow="fold")
    methods = any(r.test_method != "hard_resize" for r in results)
    if methods:
        table.add_column("test method")
    curves = any(r.recall_at_full_precision is not None for r in results)
    for col in ("scale", "dim", *(f"R@{n}" for n in ns), *(("AUC-PR", "R@100%P") if curves else ())):
        table.add_column(col, justify="right")
    for r in results:
        method = [cell(r.test_method)] if methods else []
        pr = (
            [
                ("-" if r.auc_pr is None else f"{r.auc_pr:.3f}"),
                ("-" if r.recall_at_full_precision is None else f"{r.recall_at_full_precision:.1f}"),
            ]
            if curves
            else []
        )
        table.add_row(
            cell(Path(r.file).name),
            cell(r.model),
            *method,
            cell(r.scale),
            str(r.dim),
            *(with_interval(r.recalls[n], r.recall_ci.get(n)) for n in ns),
            *pr,
        )
    counts = {r.dataset: (r.queries, r.queries_without_positives, r.database) for r in results}
    searches = sorted({r.search for r in results})
    table.caption = cell(
        "; ".join(
            f"{name}: {q} queries ({w} without positive), {d} database images"
            for name, (q, w, d) in counts.items()
        )
        + f"; {', '.join(searches)} search"
        + (
            f"; ± half the {first.bootstrap['level'] * 100:g}% bootstrap interval "
            f"({first.bootstrap['resamples']} resamples, seed {first.bootstrap['seed']})"
            if first.bootstrap
            else ""
        )
        + (
            f"; AUC-PR and R@100%P of the top-1 answers scored by distance, queries without "
            f"positives {first.unmatched}"
            if curves
            else ""
        )
    )
    return table


def with_interval(value: float, interval: tuple[float, float] | None) -> str:
    """``67.6 ±4.3``: a percentage and half its interval's width (the value alone without)."""
    if interval is None:
        return f"{value:.1f}"
    return f"{value:.1f} ±{(interval[1] - interval[0]) / 2:.1f}"


def threshold_table(results: Sequence[EvaluationResult]) -> Table | None:
    """R@1 at each threshold (top-1 within t metres), one row per result; None without any."""
    thresholds = list(results[0].recall_at_thresholds)
    if not thresholds:
        return None
    table = Table(title="R@1 at other thresholds (top-1 prediction within t metres)")
    table.add_column("file", overflow="fold")
    table.add_column("scale", justify="right")
    for t in thresholds:
        table.add_column(f"{t:g} m", justify="right")
    for r in results:
        table.add_row(
            cell(Path(r.file).name),
            cell(r.scale),
            *(f"{r.recall_at_thresholds.get(t, float('nan')):.1f}" for t in thresholds),
        )
    return table


def comparison_table(comparisons: Sequence, title: str = "Paired comparisons") -> Table:
    """``vprkit.evaluate.compare.Comparison`` rows: R@N differences with their paired intervals, and
    McNemar's p on R@1, then the verdict in words in the caption."""
    ns = [d.n for d in comparisons[0].differences]
    table = Table(title=cell(title))
    table.add_column("baseline", overflow="fold")
    table.add_column("against", overflow="fold")
    for n in ns:
        table.add_column(f"ΔR@{n}", justify="right")
    table.add_column("McNemar p (R@1)", justify="right")
    table.add_column("R@1 clear?", justify="center")
    for c in comparisons:
        deltas = []
        for d in c.differences:
            text = f"{d.difference:+.1f}" + ("" if d.low is None else f" [{d.low:+.1f}, {d.high:+.1f}]")
            deltas.append(Text(text, style="bold" if d.clear else ""))
        table.add_row(
            cell(c.a),
            cell(c.b),
            *deltas,
            f"{c.p_value:.3g}",
            Text("yes", style="green") if c.clear_at_1 else Text("no", style="dim"),
        )
    level = comparisons[0].level * 100
    table.caption = cell(
        f"difference (points) of the second row minus the baseline with its "
        f"{level:g}% paired bootstrap interval ({comparisons[0].resamples} "
        f"resamples); clear: the interval leaves out 0 and, at R@1, McNemar's "
        f"exact p < {1 - comparisons[0].level:.2g}",
        2000,
    )
    return table


def _text(value) -> str:
    """An attribute as printable text (damaged bytes shown escaped, never an encoding error)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def describe_file(path) -> dict:
    """What a descriptor file holds (``vprkit info``): counts, scales, model, preprocessing."""
    with DescriptorFile(path, require_complete=False) as f:
        return {
            "file": str(path),
            "complete": f.complete,
            "format_version": f.format_version,
            "vprkit_version": _text(f.vprkit_version or "?"),
            "created": _text(f.created or "?"),
            "database": f.num("database"),
            "queries": f.num("queries"),
            "scales": f.scales,
            "views": {str(s): f.views((s,)) for s in f.scales},
            "dim": f.dim,
            "dtype": f.dtype,
            "size": human_bytes(f.path.stat().st_size),
            "model": f.model,
            "aggregation": f.aggregation,
            "dataset": f.dataset,
            "preprocessing": f.preprocessing,
        }


def describe_table(desc: dict) -> Table:
    """``describe_file``'s description as a rich table, values shown inert and cut."""
    table = Table(title=cell(desc["file"]), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in desc.items():
        if key == "file":
            continue
        if key == "preprocessing" and isinstance(value, dict) and "resize" in value:
            size = value["resize"]
            value = {
                **value,
                "resize": "native size (each image's own)"
                if size is None
                else f"{size[0]}x{size[1]} (H x W)"
                if isinstance(size, list) and len(size) == 2
                else size,
            }
        if key == "views" and isinstance(value, dict):
            value = "; ".join(f"scale {s}: {', '.join(map(str, v))}" for s, v in value.items())
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        table.add_row(key, cell(value))
    return table


def dataset_table(rows: list[dict], root, threshold: float) -> Table:
    """``datasets.dataset_info``'s rows as a rich table (sizes H x W)."""
    table = Table(title=cell(root))
    for col in (
        "split",
        "role",
        "images",
        f"queries without positive (<= {threshold:g} m)",
        "image sizes (H x W)",
    ):
        table.add_column(col, justify="right" if col == "images" else "left")
    for row in rows:
        sizes = ", ".join(f"{k} ({v})" for k, v in list(row["sizes"].items())[:3])
        if len(row["sizes"]) > 3:
            sizes += f", ... {len(row['sizes'])} sizes"
        without = row["queries_without_positives"]
        table.add_row(
            row["split"],
            row["role"],
            str(row["images"]),
            "" if without is None else str(without),
            cell(sizes),
        )
    return table
