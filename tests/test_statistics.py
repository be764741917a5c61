"""Bootstrap intervals, precision-recall, McNemar's test and R@1 at thresholds (vprkit.evaluate.statistics,
vprkit.evaluate.compare), checked against scikit-learn, scipy and hand computations."""

import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import binomtest
from sklearn.metrics import auc, precision_recall_curve

from vprkit.cli import main
from vprkit.errors import VprkitError
from vprkit.evaluate import statistics
from vprkit.evaluate.compare import compare_files, compare_rows
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.evaluate.statistics import (
    QueryOutcomes,
    bootstrap_recalls,
    mcnemar_exact,
    paired_bootstrap,
    parse_thresholds,
    precision_recall,
    query_outcomes,
    recall_at_thresholds,
)
from vprkit.report.markdown import write_report
from vprkit.report.predictions import write_predictions
from vprkit.testing import write_descriptor_file


def outcomes(rank, distance=None, metres=None, has=None, key="q"):
    rank = np.asarray(rank, dtype=np.int64)
    n = len(rank)
    return QueryOutcomes(
        rank,
        np.asarray(distance if distance is not None else np.arange(n), dtype=np.float64),
        np.asarray(metres if metres is not None else np.where(rank == 1, 3.0, 300.0), np.float64),
        np.asarray(has if has is not None else np.ones(n), dtype=bool),
        key,
    )


def two_files(tmp_path, n_db=300, n_q=200, noises=(1.0, 0.7), seed=0):
    """Descriptor files of two 'models' (noisier and cleaner queries) on the same queries."""
    rng = np.random.default_rng(seed)
    db = rng.normal(size=(n_db, 32)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    utm = np.c_[np.arange(n_db) * 10.0, np.zeros(n_db)]
    names = {"database": [f"d{i}.jpg" for i in range(n_db)], "queries": [f"q{i}.jpg" for i in range(n_q)]}
    paths = []
    for i, noise in enumerate(noises):
        q = db[:n_q] + noise * rng.normal(size=(n_q, 32)).astype(np.float32)
        q[-10:] = rng.normal(size=(10, 32))  # ten queries far from everything...
        q_utm = utm[:n_q] + [3.0, 0.0]
        q_utm[-10:] += [0.0, 5000.0]  # ...and without any positive
        paths.append(
            write_descriptor_file(
                tmp_path / f"m{i}.h5", db, q, names=names, utm={"database": utm, "queries": q_utm}
            )
        )
    return paths


class TestPrecisionRecall:
    def test_equals_scikit_learn_on_a_hand_made_case(self):
        # right, wrong, right, right (tie with a wrong one), no positive (wrong), right
        o = outcomes([1, 3, 1, 1, 0, 1], distance=[0.1, 0.2, 0.3, 0.5, 0.5, 0.9], has=[1, 1, 1, 1, 0, 1])
        curve = precision_recall(o)
        labels = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
        precision, recall, _ = precision_recall_curve(labels, -o.top1_distance)
        np.testing.assert_array_equal(curve.precision, precision)
        np.testing.assert_array_equal(curve.recall, recall)
        assert curve.auc == pytest.approx(auc(recall, precision))
        # accepted before the first wrong answer: only the first right one of four
        assert curve.recall_at_full_precision == pytest.approx(25.0)
        assert curve.unmatched == "counted" and curve.queries == 6

    def test_dropping_unmatched_queries_removes_them_from_the_curve(self):
        # the nearest answer is a query without any positive: counted, it is the first error
        o = outcomes([0, 1, 1, 2], distance=[0.0, 0.1, 0.2, 0.3], has=[0, 1, 1, 1])
        counted, dropped = precision_recall(o), precision_recall(o, drop_unmatched=True)
        assert counted.recall_at_full_precision == 0.0
        assert dropped.recall_at_full_precision == pytest.approx(100.0)
        assert dropped.queries == 3 and dropped.unmatched == "dropped"
        precision, recall, _ = precision_recall_curve([1, 1, 0], [-0.1, -0.2, -0.3])
        assert dropped.auc == pytest.approx(auc(recall, precision))

    def test_no_right_answer_has_no_area(self):
        curve = precision_recall(outcomes([0, 2, 3]))
        assert math.isnan(curve.auc) and curve.recall_at_full_precision == 0.0

    def test_all_right_is_perfect(self):
        curve = precision_recall(outcomes([1, 1, 1]))
        assert curve.auc == pytest.approx(1.0) and curve.recall_at_full_precision == 100.0


class TestBootstrap:
    def test_reproducible_with_the_seed_and_covering_the_estimate(self):
        rng = np.random.default_rng(1)
        o = outcomes(rng.choice([0, 1, 2, 7], size=400, p=[0.3, 0.4, 0.2, 0.1]))
        a = bootstrap_recalls(o, (1, 5), resamples=500, seed=3)
        assert a == bootstrap_recalls(o, (1, 5), resamples=500, seed=3)
        assert a != bootstrap_recalls(o, (1, 5), resamples=500, seed=4)
        point = o.hits((1, 5)).mean(axis=0) * 100
        for (low, high), p in zip(a.values(), point, strict=True):
            assert low <= p <= high
        # a proportion near 0.4 of 400 queries: half-width about 1.96 * sqrt(.24 / 400) = 4.8
        low, high = a[1]
        assert 3.8 < (high - low) / 2 < 5.8

    def test_equals_a_plain_loop_over_resamples(self, monkeypatch):
        o = outcomes(np.random.default_rng(2).choice([0, 1, 3], size=97))
        monkeypatch.setattr(statistics, "RESAMPLE_BLOCK", 97 * 3)  # 3 resamples per draw
        got = bootstrap_recalls(o, (1, 3), resamples=200, seed=5)
        rng = np.random.default_rng(5)
        hits = o.hits((1, 3)) * 100.0
        means = np.array([hits[rng.integers(0, 97, size=97)].mean(axis=0) for _ in range(200)])
        expected = np.percentile(means, [2.5, 97.5], axis=0).T
        for n, row in zip((1, 3), expected, strict=True):
            assert got[n] == pytest.approx(tuple(row))

    def test_zero_resamples_and_refusals(self):
        assert bootstrap_recalls(outcomes([1, 0]), (1,), resamples=0) == {}
        with pytest.raises(VprkitError, match="^bootstrap must be a whole number"):
            bootstrap_recalls(outcomes([1, 0]), (1,), resamples=-1)

    def test_paired_interval_of_identical_rows_is_zero(self):
        o = outcomes(np.random.default_rng(0).choice([0, 1, 2], size=100))
        assert paired_bootstrap(o, o, (1, 2), 300) == {1: (0.0, 0.0), 2: (0.0, 0.0)}

    def test_paired_interval_is_narrower_than_the_unpaired_one(self):
        rng = np.random.default_rng(4)
        base = rng.choice([0, 1], size=500, p=[0.5, 0.5])
        better = base.copy()
        better[rng.choice(np.flatnonzero(base == 0), 25, replace=False)] = 1  # +5 points
        a, b = outcomes(base), outcomes(better)
        low, high = paired_bootstrap(a, b, (1,), 1000)[1]
        assert 0 < low < 5 < high  # clear, and the estimate inside
        (la, ha), (lb, hb) = bootstrap_recalls(a, (1,))[1], bootstrap_recalls(b, (1,))[1]
        assert high - low < (ha - la + hb - lb) / 2  # pairing removes the shared noise

    def test_paired_rows_need_the_same_queries(self):
        with pytest.raises(VprkitError, match="same queries"):
            paired_bootstrap(outcomes([1, 0]), outcomes([1, 0], key="other"), (1,))


class TestMcNemar:
    def test_equals_scipy_and_the_binomial_sum(self):
        a = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 8)
        b = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 8)
        only_a, only_b, p = mcnemar_exact(a, b)
        assert (only_a, only_b) == (10, 2)
        assert p == pytest.approx(binomtest(10, 12, 0.5).pvalue)
        by_hand = 2 * sum(math.comb(12, i) for i in range(3)) / 2**12
        assert p == pytest.approx(by_hand)  # 0.0386

    def test_no_discordant_pair(self):
        same = np.array([True, False, True])
        assert mcnemar_exact(same, same) == (0, 0, 1.0)


class TestThresholds:
    def test_share_within_each_threshold(self):
        o = outcomes([1, 0, 0, 1], metres=[3.0, 10.0, 60.0, 25.0])
        assert recall_at_thresholds(o, (5, 10, 25, 50)) == {5.0: 25.0, 10.0: 50.0, 25.0: 75.0, 50.0: 75.0}

    def test_parsing(self):
        assert parse_thresholds("5,10,25") == (5.0, 10.0, 25.0)
        assert parse_thresholds("none") == ()
        for bad in ("10,5", "0,5", "x", "5,,10", "nan"):
            with pytest.raises(VprkitError, match="bad threshold list"):
                parse_thresholds(bad)


class TestOnAStoredFile:
    def test_curve_equals_scikit_learn_on_the_predictions(self, tmp_path):
        path, _ = two_files(tmp_path)
        res = evaluate_file(path, recalls=(1, 5))
        write_predictions(res, tmp_path / "p.csv")
        with open(tmp_path / "p.csv", newline="") as handle:
            first = [r for r in csv.DictReader(handle) if r["rank"] == "1"]
        labels = np.array([r["positive"] == "1" for r in first])
        scores = -np.array([float(r["distance"]) for r in first])
        precision, recall, _ = precision_recall_curve(labels, scores)
        assert res.auc_pr == pytest.approx(auc(recall, precision), abs=1e-6)
        curve = precision_recall(res.outcomes)
        np.testing.assert_allclose(curve.recall, recall)
        np.testing.assert_allclose(curve.precision, precision)
        assert res.recalls[1] == pytest.approx(labels.mean() * 100)
        # R@1 at the evaluation threshold is R@1; the CSV's top1_metres is the rank-1 metres
        assert res.recall_at_thresholds[25.0] == pytest.approx(res.recalls[1])
        assert all(r["top1_metres"] == r["metres"] for r in first)
        assert res.queries_without_positives == 10

    def test_intervals_reproducible_and_covering(self, tmp_path):
        path, _ = two_files(tmp_path)
        a = evaluate_file(path, bootstrap=300, seed=7)
        assert a.recall_ci == evaluate_file(path, bootstrap=300, seed=7).recall_ci
        assert a.recall_ci != evaluate_file(path, bootstrap=300, seed=8).recall_ci
        for n, (low, high) in a.recall_ci.items():
            assert low <= a.recalls[n] <= high
        assert evaluate_file(path, bootstrap=0).recall_ci == {}

    def test_outcomes_from_predictions(self):
        predictions = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
        distances = np.array([[0.1, 0.2, 0.3], [0.5, 0.6, 0.7], [0.2, 0.3, 0.4]])
        positives = [np.array([0]), np.array([], dtype=int), np.array([0, 1])]
        db_utm = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 30.0]])
        q_utm = np.array([[0.0, 4.0], [500.0, 0.0], [1.0, 0.0]])
        o = query_outcomes(predictions, distances, positives, q_utm, db_utm, ["a", "b", "c"])
        np.testing.assert_array_equal(o.first_positive_rank, [2, 0, 1])
        np.testing.assert_allclose(o.top1_distance, [0.1, 0.5, 0.2])
        np.testing.assert_allclose(o.top1_metres, [26.0, 400.0, 1.0])
        np.testing.assert_array_equal(o.has_positive, [True, False, True])
        again = QueryOutcomes.from_dict(json.loads(json.dumps(o.to_dict())), "x")
        np.testing.assert_array_equal(again.first_positive_rank, o.first_positive_rank)
        assert again.queries_sha256 == o.queries_sha256


class TestCompare:
    def test_cli_compare_and_evaluate_paired(self, tmp_path):
        a, b = two_files(tmp_path, noises=(1.0, 0.6))
        runner = CliRunner()
        for path in (a, b):
            result = runner.invoke(main, ["evaluate", str(path), "--json", str(path.with_suffix(".json"))])
            assert result.exit_code == 0, result.output
        rows = [json.loads(p.with_suffix(".json").read_text())[0] for p in (a, b)]
        result = runner.invoke(
            main, ["compare", str(a.with_suffix(".json")), str(b.with_suffix(".json")), "--json", "-"]
        )
        assert result.exit_code == 0, result.output
        got = json.loads(result.output)[0]
        ra, rb = rows[0]["recalls"]["1"], rows[1]["recalls"]["1"]
        first = got["differences"][0]
        assert first["difference"] == pytest.approx(rb - ra)
        low, high = first["interval"]
        assert low <= rb - ra <= high
        ha = np.array(rows[0]["per_query"]["first_positive_rank"]) == 1
        hb = np.array(rows[1]["per_query"]["first_positive_rank"]) == 1
        only_a, only_b = int((ha & ~hb).sum()), int((~ha & hb).sum())
        assert got["mcnemar"] == {
            "only_a": only_a,
            "only_b": only_b,
            "p_value": pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue),
        }
        assert got["clear_at_1"] == ((low > 0 or high < 0) and got["mcnemar"]["p_value"] < 0.05)
        words = "clear at 95%" if got["clear_at_1"] else "not clear at 95%"
        assert words in got["verdict"]
        # evaluate --paired prints the same comparison
        result = runner.invoke(main, ["evaluate", str(a), str(b), "--paired"])
        assert result.exit_code == 0, result.output
        assert "Paired comparisons" in result.output and words in result.output

    def test_a_clear_difference_is_called_clear(self, tmp_path):
        a, b = two_files(tmp_path, noises=(1.3, 0.3))
        ra, rb = (evaluate_file(p).to_dict() for p in (a, b))
        c = compare_rows(ra, rb)
        assert c.differences[0].difference > 10 and c.clear_at_1
        assert "clear at 95%" in c.verdict() and "not clear" not in c.verdict()
        reverse = compare_rows(rb, ra)
        assert reverse.clear_at_1 and "below" in reverse.verdict()

    def test_refuses_rows_of_other_queries_and_old_json(self, tmp_path):
        (tmp_path / "x").mkdir()
        (tmp_path / "y").mkdir()
        (a, _), (c, _) = two_files(tmp_path / "x", seed=0), two_files(tmp_path / "y", n_q=150)
        for p in (a, c):
            (p.with_suffix(".json")).write_text(json.dumps([evaluate_file(p).to_dict()]))
        with pytest.raises(VprkitError, match="same queries"):
            compare_files([a.with_suffix(".json"), c.with_suffix(".json")])
        old = evaluate_file(a).to_dict()
        old.pop("per_query")
        (tmp_path / "old.json").write_text(json.dumps([old, old]))
        result = CliRunner().invoke(main, ["compare", str(tmp_path / "old.json")])
        assert result.exit_code == 1
        assert "no per-query outcomes" in result.output and "Traceback" not in result.output
        with pytest.raises(VprkitError, match="--baseline 5 is not a row"):
            compare_files([tmp_path / "old.json"], baseline=5)


class TestReport:
    def test_intervals_curves_and_comparisons_in_the_report(self, tmp_path):
        a, b = two_files(tmp_path, noises=(1.3, 0.3))
        rows = [evaluate_file(p).to_dict() for p in (a, b)]
        (tmp_path / "e.json").write_text(json.dumps(rows))
        out = write_report([tmp_path / "e.json"], tmp_path / "r" / "report.md")
        text = out.read_text()
        ci = rows[0]["recall_ci"]["5"]
        assert f"{rows[0]['recalls']['5']:.1f} ±{(ci[1] - ci[0]) / 2:.1f}" in text
        assert f"{rows[1]['auc_pr']:.3f}" in text
        assert "| m1.h5 [1] | m0.h5 [1] |" in text and "**yes**" in text
        assert (tmp_path / "r" / "report_e_statistics.png").stat().st_size > 10_000
        assert "R@1 at other thresholds" in text

    def test_damaged_statistics_give_one_line(self, tmp_path):
        a, _ = two_files(tmp_path)
        row = evaluate_file(a).to_dict()
        row["recall_ci"] = {"1": [1, "x"]}
        (tmp_path / "e.json").write_text(json.dumps([row]))
        with pytest.raises(VprkitError, match="recall_ci"):
            write_report([tmp_path / "e.json"], tmp_path / "r.md")
