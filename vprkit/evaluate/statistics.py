"""How sure a Recall@N is, and how well the top-1 distance ranks right and wrong answers.

Everything here works from one row of outcomes per query (``QueryOutcomes``), computed once
from the stored predictions: no network run, no search.

- **Bootstrap intervals.** The queries are resampled with replacement (``resamples`` times,
  seeded); the interval is the percentile interval of Recall@N over the resamples (95% by
  default). ``paired_bootstrap`` resamples the same queries for two methods and gives the
  interval of their difference.
- **Precision-recall.** Each query's answer is its top-1 prediction; the score is minus its
  top-1 distance (nearer is surer) and the label is whether it is a positive. The curve and its
  area are scikit-learn's (``precision_recall_curve`` and ``auc``, trapezoids over the curve's
  points); precision is the share of right answers among those accepted above a score, recall
  the share of all right answers accepted. Queries without any positive can only be wrong: they
  are **counted** as wrong answers by default (the system must learn to reject them) or
  **dropped** (``drop_unmatched``, the convention of benchmarks whose every query has a match).
- **Recall at 100% precision**: the largest recall of the curve at precision 1, i.e. the share
  of right answers that are accepted before the first wrong one.
- **R@1 at other thresholds**: the share of queries whose top-1 prediction lies within t metres.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vprkit.choices import DEFAULT_RESAMPLES, DEFAULT_SEED, DEFAULT_THRESHOLDS
from vprkit.errors import ParameterError, VprkitError
from vprkit.numbers import parse_float

__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_LEVEL",
    "QueryOutcomes",
    "bootstrap_recalls",
    "paired_bootstrap",
    "mcnemar_exact",
    "precision_recall",
    "recall_at_thresholds",
    "query_outcomes",
    "parse_thresholds",
    "SEED_MAX",
    "check_seed",
]

DEFAULT_LEVEL = 0.95
SEED_MAX = 2**32 - 1  # the largest bootstrap seed (``--seed``)
RESAMPLE_BLOCK = 2**22  # query indices drawn at a time by the bootstrap (bounds its memory)


@dataclass(frozen=True)
class QueryOutcomes:
    """One row per query: what its predictions were worth.

    Attributes:
        first_positive_rank: 1-based rank of the first positive among the predictions, 0 where
            none of them is a positive.
        top1_distance: distance of the first prediction (squared L2; ``maj_voting``: after the
            vote).
        top1_metres: metres (UTM) between the query and its first prediction.
        has_positive: whether the query has any database image within the threshold.
        queries_sha256: hash of the query names and positions, so that two rows can be proven
            to be about the same queries.
    """

    first_positive_rank: np.ndarray
    top1_distance: np.ndarray
    top1_metres: np.ndarray
    has_positive: np.ndarray
    queries_sha256: str

    def __len__(self) -> int:
        return len(self.first_positive_rank)

    def hits(self, ns: Sequence[int]) -> np.ndarray:
        """(queries, len(ns)) booleans: a positive among the first n predictions."""
        rank = self.first_positive_rank[:, None]
        return (rank >= 1) & (rank <= np.asarray(ns)[None, :])

    def to_dict(self) -> dict:
        """The JSON form (``per_query`` of ``vprkit evaluate --json``)."""
        return {
            "queries_sha256": self.queries_sha256,
            "first_positive_rank": self.first_positive_rank.tolist(),
            "top1_distance": [round(float(d), 7) for d in self.top1_distance],
            "top1_metres": [round(float(m), 3) for m in self.top1_metres],
            "has_positive": self.has_positive.astype(int).tolist(),
        }

    @classmethod
    def from_dict(cls, data: object, where: str) -> QueryOutcomes:
        """Read ``to_dict``'s form back; one line naming ``where`` when it is not that."""
        keys = ("first_positive_rank", "top1_distance", "top1_metres", "has_positive")
        if (
            not isinstance(data, dict)
            or not all(isinstance(data.get(k), list) for k in keys)
            or not isinstance(data.get("queries_sha256"), str)
        ):
            raise VprkitError(
                f"{where} has no per-query outcomes (written by an older vprkit "
                "evaluate?): evaluate the file again with this version"
            )
        lengths = {len(data[k]) for k in keys}
        if len(lengths) != 1 or 0 in lengths:
            raise VprkitError(f"{where}: its per-query lists are empty or of different lengths")
        try:
            rank = np.asarray(data["first_positive_rank"], dtype=np.int64)
            distance = np.asarray(data["top1_distance"], dtype=np.float64)
            metres = np.asarray(data["top1_metres"], dtype=np.float64)
            has = np.asarray(data["has_positive"], dtype=np.int64).astype(bool)
        except (TypeError, ValueError, OverflowError):
            raise VprkitError(f"{where}: its per-query lists hold values that are not numbers") from None
        if rank.min() < 0 or not np.isfinite(metres).all() or np.isnan(distance).any():
            raise VprkitError(f"{where}: its per-query lists hold negative ranks or NaN values")
        return cls(rank, distance, metres, has, data["queries_sha256"])


def queries_sha256(names: Sequence[str], utm: np.ndarray) -> str:
    """Hash of the query names and their UTM positions (to 1 mm), in order."""
    digest = hashlib.sha256()
    for name, (east, north) in zip(names, np.asarray(utm, dtype=np.float64), strict=True):
        digest.update(f"{name}\t{east:.3f}\t{north:.3f}\n".encode())
    return digest.hexdigest()


def query_outcomes(
    predictions: np.ndarray,
    distances: np.ndarray,
    positives: Sequence[np.ndarray],
    queries_utm: np.ndarray,
    database_utm: np.ndarray,
    names: Sequence[str],
) -> QueryOutcomes:
    """``QueryOutcomes`` of (queries, k) predictions (database rows, -1 for none) and distances."""
    rank = np.zeros(len(predictions), dtype=np.int64)
    for qi, (pred, pos) in enumerate(zip(predictions, positives, strict=True)):
        found = np.flatnonzero(np.isin(pred, pos) & (pred >= 0))
        rank[qi] = found[0] + 1 if len(found) else 0
    top1 = predictions[:, 0]
    metres = np.linalg.norm(
        np.asarray(queries_utm, dtype=np.float64)
        - np.asarray(database_utm, dtype=np.float64)[np.maximum(top1, 0)],
        axis=1,
    )
    return QueryOutcomes(
        rank,
        np.asarray(distances[:, 0], dtype=np.float64),
        metres,
        np.array([len(p) > 0 for p in positives], dtype=bool),
        queries_sha256(names, queries_utm),
    )


def check_bootstrap(resamples: int, level: float = DEFAULT_LEVEL) -> None:
    """One clear line for a resample count or confidence level that cannot give an interval."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 0:
        raise ParameterError(
            "bootstrap", f"bootstrap must be a whole number of resamples >= 0 (0: none), got {resamples}"
        )
    if not (isinstance(level, float) and 0 < level < 1):
        raise VprkitError(f"the confidence level must be between 0 and 1, got {level}")


def check_seed(seed: int) -> None:
    """One clear line for a bootstrap seed that is not a whole number from 0 to ``SEED_MAX``
    (numpy refuses negative seeds; the CLI takes the same range)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= SEED_MAX:
        raise VprkitError(f"seed must be a whole number from 0 to {SEED_MAX}, got {seed!r}")


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, columns) means of ``values`` (queries, columns) over bootstrap resamples."""
    rng = np.random.default_rng(seed)
    n = len(values)
    per_draw = max(1, RESAMPLE_BLOCK // max(n, 1))
    out = np.empty((resamples, values.shape[1]))
    for start in range(0, resamples, per_draw):
        stop = min(resamples, start + per_draw)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def _interval(samples: np.ndarray, level: float) -> np.ndarray:
    """(columns, 2) percentile intervals of ``samples`` (resamples, columns)."""
    tail = (1 - level) / 2 * 100
    return np.percentile(samples, [tail, 100 - tail], axis=0).T


def bootstrap_recalls(
    outcomes: QueryOutcomes,
    ns: Sequence[int],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
) -> dict[int, tuple[float, float]]:
    """``{n: (low, high)}``: percentile bootstrap interval of Recall@n in percent."""
    check_bootstrap(resamples, level)
    check_seed(seed)
    if resamples == 0:
        return {}
    means = _resampled_means(outcomes.hits(ns).astype(np.float64) * 100.0, resamples, seed)
    return {n: (float(lo), float(hi)) for n, (lo, hi) in zip(ns, _interval(means, level), strict=True)}


def paired_bootstrap(
    a: QueryOutcomes,
    b: QueryOutcomes,
    ns: Sequence[int],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
) -> dict[int, tuple[float, float]]:
    """``{n: (low, high)}``: interval of Recall@n of ``b`` minus ``a`` (points), resampling the
    same queries for both."""
    check_bootstrap(resamples, level)
    check_seed(seed)
    if resamples == 0:
        return {}
    same_queries(a, b)
    diff = (b.hits(ns).astype(np.float64) - a.hits(ns).astype(np.float64)) * 100.0
    means = _resampled_means(diff, resamples, seed)
    return {n: (float(lo), float(hi)) for n, (lo, hi) in zip(ns, _interval(means, level), strict=True)}


def same_queries(a: QueryOutcomes, b: QueryOutcomes) -> None:
    """Refuse two outcome rows that are not about the same queries, in the same order."""
    if len(a) != len(b) or a.queries_sha256 != b.queries_sha256:
        raise VprkitError(
            f"the two rows are not on the same queries ({len(a)} and {len(b)} "
            "queries, or other names or positions): a paired comparison needs the "
            "same query set"
        )


def mcnemar_exact(a_right: np.ndarray, b_right: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired right/wrong answers: (a right and b wrong, a wrong and b
    right, two-sided p-value), the binomial test of the discordant pairs at 1/2 (scipy)."""
    from scipy.stats import binomtest

    only_a = int(np.sum(a_right & ~b_right))
    only_b = int(np.sum(~a_right & b_right))
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


@dataclass(frozen=True)
class PrecisionRecall:
    """scikit-learn's precision-recall curve of the top-1 answers and its summaries.

    Attributes:
        precision, recall: the curve's points (scikit-learn's order: recall decreasing, ending
            at recall 0 and precision 1).
        auc: area under the curve (trapezoids), NaN where there is no right answer at all.
        recall_at_full_precision: largest recall (percent) at precision 1.
        queries: queries on the curve (all, or those with a positive when dropped).
        unmatched: ``"counted"`` or ``"dropped"``.
    """

    precision: np.ndarray
    recall: np.ndarray
    auc: float
    recall_at_full_precision: float
    queries: int
    unmatched: str


def precision_recall(outcomes: QueryOutcomes, drop_unmatched: bool = False) -> PrecisionRecall:
    """The precision-recall curve of the top-1 answers scored by minus their distance."""
    from sklearn.metrics import auc, precision_recall_curve

    keep = outcomes.has_positive if drop_unmatched else np.ones(len(outcomes), dtype=bool)
    labels = outcomes.first_positive_rank[keep] == 1
    scores = -outcomes.top1_distance[keep]
    unmatched = "dropped" if drop_unmatched else "counted"
    if not labels.any():  # no right answer: the curve is undefined
        return PrecisionRecall(np.array([1.0]), np.array([0.0]), math.nan, 0.0, int(keep.sum()), unmatched)
    precision, recall, _ = precision_recall_curve(labels, scores)
    full = recall[precision >= 1.0]
    return PrecisionRecall(
        precision,
        recall,
        float(auc(recall, precision)),
        float(full.max() * 100.0) if len(full) else 0.0,
        int(keep.sum()),
        unmatched,
    )


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"5,10,25"`` -> (5.0, 10.0, 25.0): increasing positive metres ("" or "none": none)."""
    if str(text).strip().lower() in ("", "none"):
        return ()
    try:
        values = tuple(parse_float(v, "threshold") for v in str(text).split(","))
    except ValueError:  # NumberError too: no underscores, inf or nan
        values = ()
    if (
        not values
        or not all(math.isfinite(v) and v > 0 for v in values)
        or list(values) != sorted(set(values))
    ):
        raise VprkitError(
            f"bad threshold list {str(text)!r}: expected increasing positive "
            "metres separated by commas, like 5,10,25,50,100"
        )
    return values


def recall_at_thresholds(outcomes: QueryOutcomes, thresholds: Sequence[float]) -> dict[float, float]:
    """``{t: percent of queries whose top-1 prediction lies within t metres}``."""
    return {float(t): float(np.mean(outcomes.top1_metres <= t) * 100.0) for t in thresholds}


def threshold_label(t: float) -> str:
    """``25.0`` -> ``"25"``, ``2.5`` -> ``"2.5"``: a threshold as a JSON key or column name."""
    return f"{t:g}"
