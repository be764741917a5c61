"""The result of an evaluation: one row of a Recall@N table, and its JSON form.

``EvaluationResult`` is what ``vprkit.evaluate.evaluate_file`` returns and what
``vprkit evaluate --json`` writes; ``Ranking`` holds each query's predictions for the writers of
``vprkit.report`` (a predictions CSV, pictures), which never re-run the search.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from vprkit.descriptors.views import HARD_RESIZE
from vprkit.evaluate.statistics import QueryOutcomes, threshold_label


@dataclass
class Ranking:
    """Each query's ranked predictions, as the search and the test method left them.

    Attributes:
        predictions: ``(N_q, K)`` database rows, best first (-1 where fewer than K).
        distances: ``(N_q, K)`` squared L2 distances (``maj_voting``: after the vote).
        positives: per query, the database rows within the threshold.
        scales: the scale or pyramid searched.
    """

    predictions: np.ndarray
    distances: np.ndarray
    positives: Sequence[np.ndarray]
    scales: tuple[int, ...]


@dataclass
class EvaluationResult:
    """Recall@N of one descriptor file at one scale or pyramid (what ``evaluate_file`` returns).

    Attributes:
        file: the descriptor file, as given.
        scale: the scale or pyramid evaluated, e.g. ``"1"`` or ``"1+2"``.
        recalls: ``{N: Recall@N}`` in percent (0-100), for each requested N.
        queries: number of query images (the denominator, queries without positives included).
        database: number of database images.
        dim: descriptor dimension D.
        threshold: metres within which a database image counted as a positive.
        queries_without_positives: queries with no database image within ``threshold``.
        seconds: wall time of the evaluation.
        model: label of the model (``backbone+aggregation weights``, or the ensemble's parts).
        dataset: ``<root folder name>/<split>``.
        search: ``"exact"`` or ``"approximate (<spec>, nprobe <n>)"``.
        test_method: how queries were searched (``vprkit.descriptors.views``: ``hard_resize``, ...,
            ``maj_voting``).
        majority_weight: ``maj_voting``'s weight (None for the other methods).
        recall_ci: ``{N: (low, high)}``, the bootstrap interval of Recall@N (``vprkit.evaluate.statistics``);
            empty when the bootstrap was skipped.
        bootstrap: how the intervals were drawn: ``{"resamples", "seed", "level"}``.
        auc_pr: area under the precision-recall curve of the top-1 answers scored by their
            distance (None where no answer is right).
        recall_at_full_precision: percent of the right top-1 answers accepted before the first
            wrong one.
        unmatched: queries without positives on that curve: ``"counted"`` or ``"dropped"``.
        recall_at_thresholds: ``{t: percent of queries with their top-1 within t metres}``.
        outcomes: one row per query (``vprkit.evaluate.statistics.QueryOutcomes``), for paired
            comparisons (``vprkit compare``) and the report's curves.
        ranking: each query's predictions (``Ranking``), for the writers of ``vprkit.report``;
            not part of the JSON form.

    ``to_dict()`` gives the JSON form (``vprkit evaluate --json``), with string keys in
    ``recalls``, ``recall_ci`` and ``recall_at_thresholds`` and the outcomes under ``per_query``.
    """

    file: str
    scale: str
    recalls: dict[int, float]
    queries: int
    database: int
    dim: int
    threshold: float
    queries_without_positives: int
    seconds: float
    model: str = ""
    dataset: str = ""
    search: str = "exact"
    test_method: str = HARD_RESIZE
    majority_weight: float | None = None
    recall_ci: dict[int, tuple[float, float]] = field(default_factory=dict)
    bootstrap: dict | None = None
    auc_pr: float | None = None
    recall_at_full_precision: float | None = None
    unmatched: str = "counted"
    recall_at_thresholds: dict[float, float] = field(default_factory=dict)
    outcomes: QueryOutcomes | None = None
    ranking: Ranking | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = asdict(replace(self, outcomes=None, ranking=None))
        out.pop("outcomes")
        out.pop("ranking")
        out["recalls"] = {str(n): r for n, r in self.recalls.items()}
        out["recall_ci"] = {str(n): list(ci) for n, ci in self.recall_ci.items()}
        out["recall_at_thresholds"] = {threshold_label(t): r
                                       for t, r in self.recall_at_thresholds.items()}
        out["per_query"] = self.outcomes.to_dict() if self.outcomes is not None else None
        return out


def results_json(results: Sequence[EvaluationResult]) -> str:
    """The rows as the JSON that ``vprkit evaluate --json`` writes (and ``vprkit report`` reads)."""
    return json.dumps([r.to_dict() for r in results], indent=2)
