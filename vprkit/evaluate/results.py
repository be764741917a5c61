"""The result of an evaluation: one row of a Recall@N table, and its JSON form.

``EvaluationResult`` is what ``vprkit.evaluate.evaluate_file`` returns and what
``vprkit evaluate --json`` writes (``to_dict``); ``EvaluationResult.from_dict`` and
``load_results`` read it back, checked by the JSON kind each field declares
(``vprkit.evaluate.schema``). ``Ranking`` holds each query's predictions for the writers of
``vprkit.report`` (a predictions CSV, pictures), which never re-run the search.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from vprkit.descriptors.views import HARD_RESIZE
from vprkit.errors import VprkitError, shown
from vprkit.evaluate.schema import (
    METRES_KEY,
    N_KEY,
    NAME,
    NUMBER,
    PERCENT,
    POSITIVE,
    TEXT,
    Interval,
    Mismatch,
    Number,
    Parsed,
    Record,
    Table,
    Text,
    integer,
    nullable,
    parse_json,
    read_dataclass,
    schema,
    type_name,
)
from vprkit.evaluate.statistics import SEED_MAX, QueryOutcomes, threshold_label
from vprkit.inputs import DATA_LIMIT, read_text


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


# the JSON kinds of EvaluationResult's structured fields (vprkit.evaluate.schema)
RECALLS = Table("an object of N -> Recall@N (%)", N_KEY, PERCENT, "Recall@{key}", nonempty=True)
INTERVALS = Table(
    "an object of N -> [low, high]",
    N_KEY,
    Interval("an interval [low, high] of percentages", PERCENT),
    "{name} of Recall@{key}",
)
BOOTSTRAP = Record(
    "an object of resamples, seed and level",
    (
        ("resamples", integer(1)),
        ("seed", integer(0, SEED_MAX)),
        ("level", Number("a number between 0 and 1", 0.0, 1.0, above_low=True)),
    ),
)
UNMATCHED = Text("'counted' or 'dropped'", choices=("counted", "dropped"))
BY_METRES = Table("an object of metres -> R@1 (%)", METRES_KEY, PERCENT, "{name} at {key} m")
OUTCOMES = Parsed("an object of per-query outcomes", QueryOutcomes.from_dict)


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
    ``recalls``, ``recall_ci`` and ``recall_at_thresholds`` and the outcomes under ``per_query``;
    ``from_dict`` reads it back. Equality leaves out ``outcomes`` and ``ranking`` (arrays).
    """

    # each field's JSON form, once (``vprkit.evaluate.schema``); a field added in a later release
    # has a default, which rows of earlier releases take
    file: str = field(metadata=schema(NAME))
    scale: str = field(metadata=schema(NAME))
    recalls: dict[int, float] = field(metadata=schema(RECALLS))
    queries: int = field(metadata=schema(integer(1)))
    database: int = field(metadata=schema(integer(1)))
    dim: int = field(metadata=schema(integer(1)))
    threshold: float = field(metadata=schema(POSITIVE))
    queries_without_positives: int = field(metadata=schema(integer(0)))
    seconds: float = field(metadata=schema(Number("a number >= 0", low=0.0)))
    model: str = field(default="", metadata=schema(TEXT))
    dataset: str = field(default="", metadata=schema(TEXT))
    search: str = field(default="exact", metadata=schema(TEXT))
    test_method: str = field(default=HARD_RESIZE, metadata=schema(NAME))
    majority_weight: float | None = field(default=None, metadata=schema(nullable(NUMBER)))
    recall_ci: dict[int, tuple[float, float]] = field(default_factory=dict, metadata=schema(INTERVALS))
    bootstrap: dict | None = field(default=None, metadata=schema(nullable(BOOTSTRAP)))
    auc_pr: float | None = field(default=None, metadata=schema(nullable(NUMBER)))
    recall_at_full_precision: float | None = field(default=None, metadata=schema(nullable(PERCENT)))
    unmatched: str = field(default="counted", metadata=schema(UNMATCHED))
    recall_at_thresholds: dict[float, float] = field(default_factory=dict, metadata=schema(BY_METRES))
    outcomes: QueryOutcomes | None = field(
        default=None, compare=False, metadata=schema(nullable(OUTCOMES), "per_query")
    )
    ranking: Ranking | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = asdict(replace(self, outcomes=None, ranking=None))
        out.pop("outcomes")
        out.pop("ranking")
        out["recalls"] = {str(n): r for n, r in self.recalls.items()}
        out["recall_ci"] = {str(n): list(ci) for n, ci in self.recall_ci.items()}
        out["recall_at_thresholds"] = {threshold_label(t): r for t, r in self.recall_at_thresholds.items()}
        out["per_query"] = self.outcomes.to_dict() if self.outcomes is not None else None
        return out

    @classmethod
    def from_dict(cls, data: object, where: str) -> EvaluationResult:
        """Read ``to_dict()``'s form back, and that of earlier releases.

        Fields added since a file was written take their defaults (a row without ``per_query``
        has ``outcomes=None``); keys of no field are ignored.

        Args:
            data: one row of ``vprkit evaluate --json``, as ``json.loads`` gives it.
            where: how the error names the row, e.g. ``"results.json row 3"``.

        Returns:
            The ``EvaluationResult`` (without ``ranking``).

        Raises:
            VprkitError: one line: ``where``, the field and what is wrong with its value.
        """
        try:
            result = read_dataclass(cls, data)
            if result.outcomes is not None and len(result.outcomes) != result.queries:
                raise Mismatch(
                    f"'per_query' holds {len(result.outcomes)} queries, 'queries' says {result.queries}"
                )
        except Mismatch as err:
            raise VprkitError(f"{where} {err}") from None
        return result


def results_json(results: Sequence[EvaluationResult]) -> str:
    """The rows as the JSON that ``vprkit evaluate --json`` writes (and ``vprkit report`` reads)."""
    return json.dumps([r.to_dict() for r in results], indent=2)


def load_results(path: str | Path) -> list[EvaluationResult]:
    """The rows of a file written by ``vprkit evaluate --json`` (or ``results_json``).

    Args:
        path: the JSON file (a regular file of at most ``vprkit.inputs.DATA_LIMIT``).

    Returns:
        One ``EvaluationResult`` per row, in order.

    Raises:
        VprkitError: one line naming the file (and the row and field) where it cannot be read,
            is not JSON, is not a non-empty list of rows, a row is not what ``to_dict()``
            writes, or rows have other N of Recall@N than the first.
    """
    where = shown(path)
    rows = parse_json(read_text(path, "evaluation JSON", DATA_LIMIT), f"evaluation JSON {where}")
    expected = f"{where} is not the JSON that 'vprkit evaluate --json' writes"
    if not isinstance(rows, list):
        raise VprkitError(f"{expected}: {type_name(rows)}, not a list of rows")
    if not rows:
        raise VprkitError(f"{expected}: an empty list, no rows")
    results = [EvaluationResult.from_dict(row, f"{expected}: row {i}") for i, row in enumerate(rows, start=1)]
    ns = list(results[0].recalls)
    for i, result in enumerate(results, start=1):
        if list(result.recalls) != ns:
            raise VprkitError(
                f"{expected}: row {i} 'recalls' has N = "
                f"{', '.join(map(str, result.recalls))}, other rows "
                f"{', '.join(map(str, ns))}"
            )
    return results
