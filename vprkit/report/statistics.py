"""The report's statistics: intervals in its tables, curves of the top-1 answers, paired tests.

``vprkit report`` uses these for every evaluation file whose rows carry them (``vprkit evaluate``
writes them; older files simply lack them):

- ``recall_cell`` / ``curve_cells``: Recall@N as ``67.6 ±4.3`` and the AUC-PR and R@100%P;
- ``plot_statistics``: one figure of three panels per file: the precision-recall curves of the
  top-1 answers, R@1 against the threshold in metres, and a histogram of the top-1 errors;
- ``comparison_lines``: a markdown table of paired comparisons (``vprkit.evaluate.compare``), each row
  against its baseline: the first row of the same descriptor file (another scale or pyramid of
  it), else the first row on the same queries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vprkit.errors import VprkitError, shown
from vprkit.evaluate.compare import compare_rows, row_label
from vprkit.evaluate.results import EvaluationResult
from vprkit.evaluate.statistics import precision_recall
from vprkit.report.plotting import pyplot, save_figure

CURVE_METRES = np.geomspace(1, 1000, 61)  # thresholds of the R@1-vs-metres curve


def recall_cell(row: EvaluationResult, n: int) -> str:
    """Recall@n of a row, with half its interval where the row has one."""
    ci = row.recall_ci.get(n)
    value = row.recalls[n]
    return f"{value:.1f}" if ci is None else f"{value:.1f} ±{(ci[1] - ci[0]) / 2:.1f}"


def has_curves(rows: list[EvaluationResult]) -> bool:
    """Whether any row carries the precision-recall summaries."""
    return any(r.recall_at_full_precision is not None for r in rows)


def curve_cells(row: EvaluationResult) -> list[str]:
    """The AUC-PR and recall at 100% precision cells of a row (``-`` where absent)."""
    auc, full = row.auc_pr, row.recall_at_full_precision
    return ["-" if auc is None else f"{auc:.3f}", "-" if full is None else f"{full:.1f}"]


def plot_statistics(rows: list[EvaluationResult], out: Path, title: str) -> Path | None:
    """Precision-recall, R@1-vs-metres and top-1 error panels of the rows with per-query
    outcomes; None when none has them (or matplotlib is missing)."""
    pairs = [(r, r.outcomes) for r in rows if r.outcomes is not None]
    plt = pyplot()
    if not pairs or plt is None:
        return None
    fig, (ax_pr, ax_t, ax_h) = plt.subplots(1, 3, figsize=(15, 4.2))
    top = max(float(o.top1_metres.max()) for _, o in pairs)
    bins = np.geomspace(0.5, max(top, 1000.0) * 1.01, 40)
    for row, o in pairs:
        label = row_label(row).replace("$", "\\$")
        curve = precision_recall(o, row.unmatched == "dropped")
        ax_pr.plot(curve.recall, curve.precision, label=label)
        ax_t.plot(CURVE_METRES, [np.mean(o.top1_metres <= t) * 100 for t in CURVE_METRES], label=label)
        ax_h.hist(np.maximum(o.top1_metres, 0.5), bins=bins, histtype="step", label=label)
    ax_pr.set(
        xlabel="recall (share of right top-1 answers accepted)",
        ylabel="precision",
        title="precision-recall of the top-1 answers",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
    )
    threshold = rows[0].threshold
    ax_t.axvline(threshold, color="grey", linestyle=":", linewidth=1)
    ax_t.set(xscale="log", xlabel="threshold (m)", ylabel="R@1 (%)", title="R@1 against the threshold")
    ax_h.axvline(threshold, color="grey", linestyle=":", linewidth=1)
    ax_h.set(
        xscale="log",
        xlabel="top-1 error (m; below 0.5 m shown at 0.5)",
        ylabel="queries",
        title="top-1 errors",
    )
    ax_pr.legend(fontsize=6)
    fig.suptitle(title.replace("$", "\\$"), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def _queries_key(row: EvaluationResult) -> str | None:
    return None if row.outcomes is None else row.outcomes.queries_sha256


def baseline_index(rows: list[EvaluationResult], i: int) -> int | None:
    """The row that row ``i`` is compared with: the first earlier row of the same file, else the
    first earlier row on the same queries; None for a row that is its own baseline."""
    key = _queries_key(rows[i])
    same_queries = [j for j in range(i) if _queries_key(rows[j]) == key]
    same_file = [j for j in same_queries if rows[j].file == rows[i].file]
    candidates = same_file or same_queries
    return candidates[0] if candidates else None


def comparison_lines(rows: list[EvaluationResult], where: str, resamples: int | None = None) -> list[str]:
    """A markdown table of each row with per-query outcomes against its ``baseline_index``."""
    if not any(r.outcomes is not None for r in rows):
        return []
    lines = []
    ns = list(rows[0].recalls)
    for i, row in enumerate(rows):
        if row.outcomes is None:
            continue
        j = baseline_index(rows, i)
        if j is None:
            continue
        boot = row.bootstrap or {}
        try:
            c = compare_rows(
                rows[j],
                row,
                resamples if resamples is not None else int(boot.get("resamples", 1000)),
                int(boot.get("seed", 0)),
                where=(f"{where} row {j + 1}", f"{where} row {i + 1}"),
            )
        except VprkitError as err:
            raise VprkitError(f"cannot compare the rows of {where}: {err}") from None
        deltas = {d.n: d for d in c.differences}
        cells = []
        for n in ns:
            d = deltas.get(n)
            cells.append(
                "-"
                if d is None
                else f"{d.difference:+.1f}"
                + ("" if d.low is None else f" [{d.low:+.1f}, {d.high:+.1f}]")
                + (" **clear**" if d.clear else "")
            )
        lines.append(
            f"| {_cell(c.b)} | {_cell(c.a)} | "
            + " | ".join(cells)
            + f" | {c.only_b} / {c.only_a} | {c.p_value:.3g} | "
            + ("**yes**" if c.clear_at_1 else "no")
            + " |"
        )
    if not lines:
        return []
    head = [
        "Paired comparisons: each row against the first row of the same file (another scale "
        "or pyramid), else the first row on the same queries; differences in points with "
        "their 95% paired bootstrap interval; McNemar's exact test on R@1 (queries right "
        "only with the row / only with its baseline); clear: the interval leaves out 0 "
        "and, at R@1, p < 0.05.",
        "",
        "| row | baseline | "
        + " | ".join(f"ΔR@{n}" for n in ns)
        + " | right only (row / baseline) | McNemar p | R@1 clear at 95% |",
        "| --- | --- | " + " | ".join("---:" for _ in ns) + " | ---: | ---: | --- |",
    ]
    return head + lines


def _cell(value) -> str:
    return shown(value).replace("|", "\\|")
