"""Rich tables for results, descriptor files and datasets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from .evaluate import EvaluationResult
from .progress import inert
from .store import DescriptorFile, human_bytes

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
    for col in ("scale", "dim", *(f"R@{n}" for n in ns)):
        table.add_column(col, justify="right")
    for r in results:
        method = [cell(r.test_method)] if methods else []
        table.add_row(cell(Path(r.file).name), cell(r.model), *method, cell(r.scale), str(r.dim),
                      *(f"{r.recalls[n]:.1f}" for n in ns))
    counts = {r.dataset: (r.queries, r.queries_without_positives, r.database) for r in results}
    searches = sorted({r.search for r in results})
    table.caption = cell("; ".join(
        f"{name}: {q} queries ({w} without positive), {d} database images"
        for name, (q, w, d) in counts.items()
    ) + f"; {', '.join(searches)} search")
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
            value = {**value, "resize": "native size (each image's own)" if size is None
                     else f"{size[0]}x{size[1]} (H x W)" if isinstance(size, list) and len(size) == 2
                     else size}
        if key == "views" and isinstance(value, dict):
            value = "; ".join(f"scale {s}: {', '.join(map(str, v))}" for s, v in value.items())
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        table.add_row(key, cell(value))
    return table


def dataset_table(rows: list[dict], root, threshold: float) -> Table:
    """``datasets.dataset_info``'s rows as a rich table (sizes H x W)."""
    table = Table(title=cell(root))
    for col in ("split", "role", "images", f"queries without positive (<= {threshold:g} m)",
                "image sizes (H x W)"):
        table.add_column(col, justify="right" if col == "images" else "left")
    for row in rows:
        sizes = ", ".join(f"{k} ({v})" for k, v in list(row["sizes"].items())[:3])
        if len(row["sizes"]) > 3:
            sizes += f", ... {len(row['sizes'])} sizes"
        without = row["queries_without_positives"]
        table.add_row(row["split"], row["role"], str(row["images"]),
                      "" if without is None else str(without), cell(sizes))
    return table
