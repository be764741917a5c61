"""``curves.png`` of a run folder: training loss per cache refresh, validation recalls per epoch."""

from __future__ import annotations

import json
from pathlib import Path

from vprkit.report.plotting import integer_ticks, pyplot, save_figure


def plot_run(run_dir: Path) -> Path | None:
    """curves.png: training loss per cache refresh and validation recalls per epoch."""

    plt = pyplot()
    if plt is None:
        return None
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a killed process (resume drops it): not plotted
            continue
    losses = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_recalls" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if losses:
        refreshes = max(r["refresh"] for r in losses)
        x = [(r["epoch"] - 1) + r["refresh"] / refreshes for r in losses]
        ax1.plot(x, [r["loss"] for r in losses], marker="o")
    ax1.set(xlabel="epoch", ylabel="triplet loss", title="training loss per cache refresh")
    integer_ticks(ax1.xaxis)  # ticks at epoch ends (the points between them are cache refreshes)
    for n in vals[0]["val_recalls"] if vals else {}:
        ax2.plot([r["epoch"] for r in vals], [r["val_recalls"][n] for r in vals], marker="o", label=f"R@{n}")
    ax2.set(xlabel="epoch (0 = untrained)", ylabel="recall (%)", title="validation Recall@N")
    integer_ticks(ax2.xaxis)
    if vals:
        ax2.legend()
    fig.tight_layout()
    out = run_dir / "curves.png"
    return save_figure(fig, out)
