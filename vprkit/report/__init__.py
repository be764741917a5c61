"""What results become for people and other tools: tables, Markdown, plots, pictures, CSV,
GeoJSON and hloc files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vprkit.lazy import lazy_exports

_EXPORTS = {
    "write_predictions": "vprkit.report.predictions",
    "write_query_pictures": "vprkit.report.predictions",
    "NORM_TOLERANCE": "vprkit.report.export",
    "SHOWN_VALUE": "vprkit.report.tables",
    "cell": "vprkit.report.tables",
    "comparison_table": "vprkit.report.tables",
    "dataset_table": "vprkit.report.tables",
    "describe_file": "vprkit.report.tables",
    "describe_table": "vprkit.report.tables",
    "export_hloc": "vprkit.report.export",
    "export_pairs": "vprkit.report.export",
    "recall_table": "vprkit.report.tables",
    "resolve_scale": "vprkit.report.export",
    "threshold_table": "vprkit.report.tables",
    "with_interval": "vprkit.report.tables",
}
__all__ = [
    "write_predictions",
    "write_query_pictures",
    "NORM_TOLERANCE",
    "SHOWN_VALUE",
    "cell",
    "comparison_table",
    "dataset_table",
    "describe_file",
    "describe_table",
    "export_hloc",
    "export_pairs",
    "recall_table",
    "resolve_scale",
    "threshold_table",
    "with_interval",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from vprkit.report.export import (
        NORM_TOLERANCE,
        export_hloc,
        export_pairs,
        resolve_scale,
    )
    from vprkit.report.predictions import write_predictions, write_query_pictures
    from vprkit.report.tables import (
        SHOWN_VALUE,
        cell,
        comparison_table,
        dataset_table,
        describe_file,
        describe_table,
        recall_table,
        threshold_table,
        with_interval,
    )
