"""matplotlib without a display, imported only when a plot is drawn."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (never through a link there) and close it."""
    from vprkit.files import atomic_output

    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, dpi=100, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Path(path)


def integer_ticks(axis):
    """Major ticks at whole numbers only on ``axis`` (``ax.xaxis``), for an N or an epoch axis;
    matplotlib falls back to its usual ticks where the view holds fewer than two integers."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))
    return axis
