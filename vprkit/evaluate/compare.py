"""Paired comparisons of evaluation rows: is one method's Recall@N clearly above another's?

Two rows of ``vprkit evaluate --json`` on the same queries (proven by the hash of their names
and positions) are compared query by query:

- the difference in Recall@N (points) with a **paired bootstrap** interval (the same queries
  resampled for both rows, seeded);
- on R@1, **McNemar's exact test**: of the queries that one row answers right and the other
  wrong, is the split far from even (a two-sided binomial test at 1/2, scipy)?

A difference at N is *clear at 95%* when its interval leaves out 0; at R@1 McNemar's p must
also be below 0.05, so that both tests agree. Otherwise the rows are said to be level within
noise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vprkit.descriptors.views import HARD_RESIZE
from vprkit.errors import VprkitError, shown
from vprkit.evaluate.results import EvaluationResult, load_results
from vprkit.evaluate.statistics import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    QueryOutcomes,
    check_seed,
    mcnemar_exact,
    paired_bootstrap,
    same_queries,
)


@dataclass(frozen=True)
class Difference:
    """Recall@n of ``b`` minus ``a``, in points, with its paired interval."""

    n: int
    a: float
    b: float
    difference: float
    low: float | None
    high: float | None

    @property
    def clear(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class Comparison:
    """Row ``b`` against row ``a`` (the baseline), query by query.

    Attributes:
        a, b: labels of the two rows (file, scale, test method).
        queries: queries both rows were evaluated on.
        differences: one ``Difference`` per N of Recall@N.
        only_a, only_b: queries whose top-1 only ``a`` (only ``b``) gets right.
        p_value: McNemar's exact two-sided p-value on R@1.
        level: confidence level of the intervals.
        resamples, seed: how the paired bootstrap was drawn.
    """

    a: str
    b: str
    queries: int
    differences: list[Difference]
    only_a: int
    only_b: int
    p_value: float
    level: float
    resamples: int
    seed: int

    @property
    def clear_at_1(self) -> bool:
        """R@1 differs clearly: the interval leaves out 0 and McNemar's p is below 1 - level."""
        first = next((d for d in self.differences if d.n == 1), None)
        return first is not None and first.clear and self.p_value < 1 - self.level

    def verdict(self) -> str:
        """The comparison in words, as ``vprkit compare`` prints it."""
        pct = f"{self.level * 100:g}%"
        first = next((d for d in self.differences if d.n == 1), self.differences[0])
        interval = "" if first.low is None else f", {pct} interval {first.low:+.1f} to {first.high:+.1f}"
        way = "above" if first.difference > 0 else "below" if first.difference < 0 else "level with"
        head = (
            f"{self.b} is {abs(first.difference):.1f} points {way} {self.a} at R@{first.n}"
            if first.difference
            else f"{self.b} is level with {self.a} at R@{first.n}"
        )
        test = (
            f" (McNemar exact p = {self.p_value:.3g}: {self.only_b} queries right only with "
            f"the second, {self.only_a} only with the first{interval})"
        )
        if first.n != 1:
            test = f" ({interval.lstrip(', ')})" if interval else ""
        clear = self.clear_at_1 if first.n == 1 else first.clear
        if first.low is None:
            words = "no interval (--bootstrap 0)"
        elif clear:
            words = f"clear at {pct}"
        elif first.n == 1 and first.clear != (self.p_value < 1 - self.level):
            words = f"borderline: the interval and McNemar's test disagree, not clear at {pct}"
        else:
            words = f"not clear at {pct}"
        others = [
            f"R@{d.n} {d.difference:+.1f}" + (" (clear)" if d.clear else "")
            for d in self.differences
            if d is not first
        ]
        return f"{head}{test}: {words}." + (f" Also {', '.join(others)}." if others else "")

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "queries": self.queries,
            "differences": [
                {
                    "n": d.n,
                    "a": d.a,
                    "b": d.b,
                    "difference": d.difference,
                    "interval": None if d.low is None else [d.low, d.high],
                    "clear": d.clear,
                }
                for d in self.differences
            ],
            "mcnemar": {"only_a": self.only_a, "only_b": self.only_b, "p_value": self.p_value},
            "clear_at_1": self.clear_at_1,
            "level": self.level,
            "bootstrap": {"resamples": self.resamples, "seed": self.seed},
            "verdict": self.verdict(),
        }


def _result(row: EvaluationResult | dict, where: str) -> EvaluationResult:
    """``row`` as an ``EvaluationResult`` (a dict is read as a row of ``vprkit evaluate --json``)."""
    return row if isinstance(row, EvaluationResult) else EvaluationResult.from_dict(row, where)


def row_label(row: EvaluationResult | dict) -> str:
    """``file [scale]`` (and the test method when it is not hard_resize) of an evaluation row."""
    result = _result(row, "the row")
    return f"{Path(result.file).name} [{result.scale}]" + (
        "" if result.test_method == HARD_RESIZE else f" {result.test_method}"
    )


def _outcomes(row: EvaluationResult, where: str) -> QueryOutcomes:
    if row.outcomes is None:
        raise VprkitError(
            f"{where} has no per-query outcomes (written by an older vprkit "
            "evaluate?): evaluate the file again with this version"
        )
    return row.outcomes


def compare_rows(
    a: EvaluationResult | dict,
    b: EvaluationResult | dict,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
    where: tuple[str, str] = ("row a", "row b"),
) -> Comparison:
    """Row ``b`` against row ``a`` (two evaluation results with their outcomes, or their
    ``to_dict()`` form); ``where`` names them in errors."""
    check_seed(seed)
    ra, rb = _result(a, where[0]), _result(b, where[1])
    oa, ob = _outcomes(ra, where[0]), _outcomes(rb, where[1])
    same_queries(oa, ob)
    if ra.threshold != rb.threshold:
        raise VprkitError(
            f"{where[0]} counts positives within {ra.threshold:g} m and "
            f"{where[1]} within {rb.threshold:g} m: compare rows of one threshold"
        )
    ns = [n for n in ra.recalls if n in rb.recalls]
    if not ns:
        raise VprkitError(f"{where[0]} and {where[1]} share no N of Recall@N")
    intervals = paired_bootstrap(oa, ob, ns, resamples, seed, level)
    ha, hb = oa.hits(ns), ob.hits(ns)
    differences = []
    for j, n in enumerate(ns):
        ra_n, rb_n = float(ha[:, j].mean() * 100), float(hb[:, j].mean() * 100)
        low, high = intervals.get(n, (None, None))
        differences.append(Difference(n, ra_n, rb_n, rb_n - ra_n, low, high))
    only_a, only_b, p = mcnemar_exact(oa.first_positive_rank == 1, ob.first_positive_rank == 1)
    return Comparison(
        row_label(ra), row_label(rb), len(oa), differences, only_a, only_b, p, level, resamples, seed
    )


def load_rows(paths: Sequence[str | Path]) -> list[tuple[str, EvaluationResult]]:
    """Every row of the given ``vprkit evaluate --json`` files, in order, with where it is
    (``"a.json row 2"``)."""
    rows = []
    for path in map(Path, paths):
        if not path.is_file():
            raise VprkitError(f"{shown(path)} does not exist or is not a file")
        for i, row in enumerate(load_results(path), start=1):
            rows.append((f"{shown(path)} row {i}", row))
    return rows


def compare_files(
    paths: Sequence[str | Path],
    baseline: int = 1,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
) -> list[Comparison]:
    """Every row of ``paths`` (evaluation JSON files) against row ``baseline``, query by query.

    Args:
        paths: files written by ``vprkit evaluate --json`` (each a list of rows with
            ``per_query`` outcomes), on the same queries.
        baseline: the row the others are compared with, 1-based over all the files' rows in
            order.
        resamples: paired bootstrap resamples of the queries (0: no intervals).
        seed: seed of the resampling.
        level: confidence level of the intervals (and 1 - level is McNemar's bar).

    Returns:
        One ``Comparison`` per other row: the differences in Recall@N with their paired
        intervals, McNemar's exact test on R@1, and ``verdict()`` in words.

    Raises:
        VprkitError: a file that is not evaluation JSON, rows without per-query outcomes (an
            older vprkit), rows on other queries or thresholds, fewer than two rows, or a
            baseline that is not a row.
    """
    check_seed(seed)
    rows = load_rows(paths)
    if len(rows) < 2:
        raise VprkitError(
            "a comparison needs at least two evaluation rows (give two files, or a file of several rows)"
        )
    if not 1 <= baseline <= len(rows):
        raise VprkitError(f"--baseline {baseline} is not a row: the files hold rows 1 to {len(rows)}")
    base_where, base = rows[baseline - 1]
    return [
        compare_rows(base, row, resamples, seed, level, (base_where, where))
        for i, (where, row) in enumerate(rows, start=1)
        if i != baseline
    ]


def comparisons_json(comparisons: Sequence[Comparison]) -> str:
    """The comparisons as the JSON that ``vprkit compare --json`` writes."""
    return json.dumps([c.to_dict() for c in comparisons], indent=2)
