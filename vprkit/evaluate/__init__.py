"""Recall@N from stored descriptors, with intervals and paired comparisons."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vprkit.lazy import lazy_exports

_EXPORTS = {
    "Comparison": "vprkit.evaluate.compare",
    "DEFAULT_RECALLS": "vprkit.evaluate.evaluation",
    "Difference": "vprkit.evaluate.compare",
    "EvaluationResult": "vprkit.evaluate.results",
    "Ranking": "vprkit.evaluate.results",
    "check_search_options": "vprkit.evaluate.evaluation",
    "compare_files": "vprkit.evaluate.compare",
    "compare_rows": "vprkit.evaluate.compare",
    "comparisons_json": "vprkit.evaluate.compare",
    "evaluate_file": "vprkit.evaluate.evaluation",
    "load_results": "vprkit.evaluate.results",
    "load_rows": "vprkit.evaluate.compare",
    "model_label": "vprkit.evaluate.evaluation",
    "parse_recalls": "vprkit.evaluate.evaluation",
    "recall_at_n": "vprkit.evaluate.evaluation",
    "results_json": "vprkit.evaluate.results",
    "row_label": "vprkit.evaluate.compare",
}
__all__ = [
    "Comparison",
    "DEFAULT_RECALLS",
    "Difference",
    "EvaluationResult",
    "Ranking",
    "check_search_options",
    "compare_files",
    "compare_rows",
    "comparisons_json",
    "evaluate_file",
    "load_results",
    "load_rows",
    "model_label",
    "parse_recalls",
    "recall_at_n",
    "results_json",
    "row_label",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from vprkit.evaluate.compare import (
        Comparison,
        Difference,
        compare_files,
        compare_rows,
        comparisons_json,
        load_rows,
        row_label,
    )
    from vprkit.evaluate.evaluation import (
        DEFAULT_RECALLS,
        check_search_options,
        evaluate_file,
        model_label,
        parse_recalls,
        recall_at_n,
    )
    from vprkit.evaluate.results import EvaluationResult, Ranking, load_results, results_json
