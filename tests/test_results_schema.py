"""One results schema: ``EvaluationResult.from_dict`` reads what ``to_dict`` writes (and what
earlier releases wrote), checked by the JSON kind each field declares, with one line naming the
file, the row and the field for anything else (vprkit.evaluate.results, vprkit.evaluate.schema)."""

import json
import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pytest
from click.testing import CliRunner

from vprkit.cli import main
from vprkit.errors import VprkitError
from vprkit.evaluate.compare import compare_files, compare_rows
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.evaluate.results import EvaluationResult, load_results, results_json
from vprkit.evaluate.schema import NAME, Mismatch, integer, read_dataclass, schema
from vprkit.report.markdown import write_report
from vprkit.testing import write_descriptor_file


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> EvaluationResult:
    """A real evaluation of a small descriptor file, with intervals, curves and thresholds."""
    rng = np.random.default_rng(3)
    db = rng.normal(size=(60, 16)).astype(np.float32)
    queries = db[:40] + 0.8 * rng.normal(size=(40, 16)).astype(np.float32)
    utm = np.c_[np.arange(60) * 10.0, np.zeros(60)]
    q_utm = utm[:40] + [2.0, 0.0]
    q_utm[-4:] += [0.0, 3000.0]  # four queries without positives
    names = {"database": [f"d{i}.jpg" for i in range(60)], "queries": [f"q{i}.jpg" for i in range(40)]}
    path = write_descriptor_file(
        tmp_path_factory.mktemp("schema") / "m.h5",
        db,
        queries,
        names=names,
        utm={"database": utm, "queries": q_utm},
    )
    return evaluate_file(path, recalls=(1, 5, 10), bootstrap=50, thresholds=(2.5, 25, 100))


def good_row(result) -> dict:
    return json.loads(results_json([result]))[0]


# the first release's row: the fields every release wrote
FIRST_RELEASE = (
    "file",
    "scale",
    "recalls",
    "queries",
    "database",
    "dim",
    "threshold",
    "queries_without_positives",
    "seconds",
    "search",
)


class TestRoundTrip:
    def test_from_dict_of_to_dict_is_the_result(self, result):
        back = EvaluationResult.from_dict(good_row(result), "row 1")
        assert back == result and back.ranking is None
        assert back.recall_ci and back.recall_at_thresholds and back.bootstrap  # all filled
        assert list(back.recalls) == [1, 5, 10] and list(back.recall_at_thresholds) == [2.5, 25, 100]
        assert isinstance(back.recall_ci[1], tuple)
        ours, theirs = back.outcomes, result.outcomes
        assert ours is not None and theirs is not None
        np.testing.assert_array_equal(ours.first_positive_rank, theirs.first_positive_rank)
        np.testing.assert_array_equal(ours.has_positive, theirs.has_positive)
        np.testing.assert_allclose(ours.top1_distance, theirs.top1_distance, atol=1e-6)
        np.testing.assert_allclose(ours.top1_metres, theirs.top1_metres, atol=1e-3)
        assert ours.queries_sha256 == theirs.queries_sha256
        assert back.to_dict() == result.to_dict()

    def test_load_results_reads_results_json(self, result, tmp_path):
        other = replace(result, scale="1+1", recalls={1: 10.0, 5: 20.0, 10: 30.0})
        (tmp_path / "e.json").write_text(results_json([result, other]))
        assert load_results(tmp_path / "e.json") == [result, other]

    def test_every_json_field_is_declared_once(self):
        declared = {
            f.metadata.get("json_key") or f.name for f in fields(EvaluationResult) if "json" in f.metadata
        }
        assert declared == set(EvaluationResult.__dataclass_fields__) - {"outcomes", "ranking"} | {
            "per_query"
        }

    def test_keys_of_a_newer_release_are_ignored(self, result):
        row = dict(good_row(result), some_future_field={"x": 1})
        assert EvaluationResult.from_dict(row, "row 1") == result


class TestOlderReleases:
    def test_a_first_release_row_loads_with_the_later_fields_defaulted(self, result, tmp_path):
        row = {k: v for k, v in good_row(result).items() if k in FIRST_RELEASE}
        old = EvaluationResult.from_dict(row, "row 1")
        assert old.outcomes is None and old.recall_ci == {} and old.bootstrap is None
        assert old.model == "" and old.test_method == "hard_resize" and old.unmatched == "counted"
        assert old.recalls == result.recalls and old.threshold == result.threshold
        (tmp_path / "old.json").write_text(json.dumps([row, dict(row, scale="2")]))
        text = write_report([tmp_path / "old.json"], tmp_path / "r.md").read_text()
        assert "| m.h5 |  | 1 | 16 |" in text and "AUC-PR" not in text
        with pytest.raises(VprkitError, match="old.json row 1 has no per-query outcomes"):
            compare_files([tmp_path / "old.json"])

    def test_a_row_without_per_query_has_no_outcomes(self, result):
        row = good_row(result)
        del row["per_query"]
        assert EvaluationResult.from_dict(row, "row 1").outcomes is None
        row["per_query"] = None
        assert EvaluationResult.from_dict(row, "row 1").outcomes is None


BAD_FIELDS = [
    # wrong type
    ("file", 3, "'file' is 3, not a non-empty string"),
    ("scale", "", "'scale' is \"\", not a non-empty string"),
    ("model", ["x"], "'model' is [\"x\"], not a string"),
    ("dim", "256", "'dim' is \"256\", not an integer >= 1"),
    ("queries", 2.5, "'queries' is 2.5, not an integer >= 1"),
    ("database", True, "'database' is true, not an integer >= 1"),
    ("recalls", [50.0], "'recalls' is [50.0], not an object of N -> Recall@N (%)"),
    ("recall_ci", {"1": [1, "x"]}, "'recall_ci' of Recall@1 is [1, \"x\"], not an interval"),
    (
        "bootstrap",
        {"resamples": 10, "seed": "0", "level": 0.95},
        "'seed' of 'bootstrap' is \"0\", not an integer from 0 to",
    ),
    ("per_query", [1, 2], "'per_query' is [1, 2], not an object of per-query outcomes"),
    ("unmatched", "ignored", "'unmatched' is \"ignored\", not 'counted' or 'dropped'"),
    # NaN and infinity
    ("recalls", {"1": math.nan}, "Recall@1 is NaN, not a percentage (0..100)"),
    ("threshold", math.inf, "'threshold' is Infinity, not a positive number"),
    ("auc_pr", math.nan, "'auc_pr' is NaN, not a number"),
    ("seconds", -math.inf, "'seconds' is -Infinity, not a number >= 0"),
    # out of range
    ("recalls", {"1": 100.5}, "Recall@1 is 100.5, not a percentage (0..100)"),
    ("threshold", 0, "'threshold' is 0, not a positive number"),
    ("dim", 0, "'dim' is 0, not an integer >= 1"),
    ("queries_without_positives", -1, "'queries_without_positives' is -1, not an integer >= 0"),
    ("recall_at_full_precision", 101, "'recall_at_full_precision' is 101, not a percentage"),
    ("recall_at_thresholds", {"25": -3}, "'recall_at_thresholds' at 25 m is -3, not a percentage"),
    ("recall_ci", {"1": [60.0, 40.0]}, "'recall_ci' of Recall@1 is [60.0, 40.0], not an interval"),
    ("bootstrap", {"resamples": 10, "seed": 0, "level": 1.5}, "'level' of 'bootstrap' is 1.5"),
    # bad keys
    ("recalls", {"x": 50.0}, "'recalls' has the key 'x', not an integer N >= 1"),
    ("recalls", {"05": 50.0}, "'recalls' has the key '05', not an integer N >= 1"),
    ("recall_ci", {"0": [1, 2]}, "'recall_ci' has the key '0', not an integer N >= 1"),
    (
        "recall_at_thresholds",
        {"nan": 5.0},
        "'recall_at_thresholds' has the key 'nan', not a positive number of metres",
    ),
    ("recall_at_thresholds", {"25": 5.0, "25.0": 6.0}, "'recall_at_thresholds' has the key '25.0', twice"),
]


def assert_one_line(err: VprkitError, *fragments: str) -> None:
    text = str(err)
    assert "\n" not in text and text.isprintable(), text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


class TestBadFields:
    @pytest.mark.parametrize(
        "key, value, message", BAD_FIELDS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD_FIELDS)]
    )
    def test_one_line_naming_the_file_row_and_field(self, result, tmp_path, key, value, message):
        row = good_row(result)
        path = tmp_path / "eval.json"
        path.write_text(json.dumps([row, dict(row, **{key: value})]))
        with pytest.raises(VprkitError) as err:
            load_results(path)
        assert_one_line(
            err.value, f"{path} is not the JSON that 'vprkit evaluate --json' writes: row 2 {message}"
        )

    @pytest.mark.parametrize("key", FIRST_RELEASE[:-1])  # "search" has a default
    def test_a_missing_required_field(self, result, tmp_path, key):
        row = good_row(result)
        del row[key]
        (tmp_path / "eval.json").write_text(json.dumps([good_row(result), row]))
        with pytest.raises(VprkitError) as err:
            load_results(tmp_path / "eval.json")
        assert_one_line(err.value, "eval.json", f"row 2 has no {key!r}")

    def test_per_query_of_other_queries_or_damaged(self, result, tmp_path):
        row = good_row(result)
        row["queries"] = 41
        with pytest.raises(VprkitError, match="row 1 'per_query' holds 40 queries, 'queries' says 41"):
            EvaluationResult.from_dict(row, "row 1")
        row = good_row(result)
        row["per_query"]["top1_metres"][3] = None
        with pytest.raises(VprkitError, match="row 1 'per_query': its per-query lists"):
            EvaluationResult.from_dict(row, "row 1")

    def test_rows_with_other_n(self, result, tmp_path):
        row = good_row(result)
        (tmp_path / "eval.json").write_text(json.dumps([row, dict(row, recalls={"1": 5.0})]))
        with pytest.raises(VprkitError) as err:
            load_results(tmp_path / "eval.json")
        assert_one_line(err.value, "eval.json", "row 2 'recalls' has N = 1, other rows 1, 5, 10")

    def test_cli_report_and_compare_show_the_line(self, result, tmp_path):
        row = good_row(result)
        (tmp_path / "eval.json").write_text(json.dumps([row, dict(row, dim=0)]))
        for args in (
            ["report", str(tmp_path / "eval.json"), "-o", str(tmp_path / "r.md")],
            ["compare", str(tmp_path / "eval.json")],
        ):
            got = CliRunner().invoke(main, args)
            lines = got.output.splitlines()
            assert got.exit_code == 1 and len(lines) == 1, got.output
            assert "row 2 'dim' is 0, not an integer >= 1" in lines[0]

    def test_compare_rows_takes_results_or_their_dicts(self, result):
        other = EvaluationResult.from_dict(good_row(result), "row 2")
        a, b = compare_rows(result, other), compare_rows(result.to_dict(), good_row(result))
        assert a.to_dict() == b.to_dict() and a.differences[0].difference == 0
        with pytest.raises(VprkitError, match="row b 'dim' is 0"):
            compare_rows(result, dict(good_row(result), dim=0))


class TestGenericSchema:
    def test_a_field_is_one_line(self):
        @dataclass
        class Toy:
            name: str = field(metadata=schema(NAME))
            count: int = field(default=1, metadata=schema(integer(1)))  # added later: a default

        assert read_dataclass(Toy, {"name": "a"}) == Toy("a", 1)
        assert read_dataclass(Toy, {"name": "a", "count": 3}) == Toy("a", 3)
        for data, message in (
            ({"count": 3}, "has no 'name'"),
            ([1], "is a list, not an object"),
            ({"name": "a", "count": 0}, "'count' is 0, not an integer >= 1"),
        ):
            with pytest.raises(Mismatch, match=message):
                read_dataclass(Toy, data)
