import json

import numpy as np
import pytest
from helpers import write_file

from vprkit.errors import VprkitError
from vprkit.evaluate.evaluation import evaluate_file, parse_recalls, recall_at_n
from vprkit.report.predictions import write_predictions
from vprkit.search.exact import blocked_search, exact_search
from vprkit.store import DescriptorFile


class TestRecallAtN:
    def test_hand_made(self):
        predictions = np.array([[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 1, 2]])
        positives = [np.array([0]), np.array([0]), np.array([5]), np.array([], dtype=int)]
        # q0 hit at rank 1, q1 at rank 3, q2 never, q3 has no positive but counts
        np.testing.assert_allclose(recall_at_n(predictions, positives, (1, 2, 3)), [25.0, 25.0, 50.0])

    def test_missing_predictions_never_hit(self):
        got = recall_at_n(np.array([[-1, -1]]), [np.array([0])], (1, 2))
        np.testing.assert_array_equal(got, [0.0, 0.0])

    def test_recall_parsing(self):
        assert parse_recalls("1,5,10") == (1, 5, 10)
        with pytest.raises(VprkitError):
            parse_recalls("5,1")


class TestBlockedSearch:
    @pytest.mark.parametrize("block", [1, 7, 64, 1000])
    def test_equals_one_shot(self, block):
        rng = np.random.default_rng(0)
        db = rng.standard_normal((300, 16)).astype(np.float32)
        q = rng.standard_normal((20, 16)).astype(np.float32)
        blocks = ((s, db[s : s + block]) for s in range(0, len(db), block))
        dist, ids = blocked_search(q, blocks, 10)
        ref_d, ref_i = exact_search(q, db, 10)
        np.testing.assert_array_equal(ids, ref_i)
        np.testing.assert_allclose(dist, ref_d, rtol=1e-5)

    def test_fewer_rows_than_k(self):
        db = np.eye(3, dtype=np.float32)
        dist, ids = blocked_search(db[:1], [(0, db[:2]), (2, db[2:])], 5)
        assert ids[0, :3].tolist() == [0, 1, 2] and ids[0, 3:].tolist() == [-1, -1]
        assert np.isinf(dist[0, 3:]).all()


class TestEvaluateFile:
    def test_recalls_on_a_hand_made_file(self, tmp_path):
        # write_file puts database row i at UTM (i, 0) and query j at (j, 5); descriptors are
        # chosen so that the rank of the first positive is known: positives of query j are
        # the database rows x <= j + 24.49.
        db = np.zeros((60, 2), np.float32)
        db[:, 0] = np.arange(60)
        q = np.array(
            [
                [0.0, 0.0],  # nearest row 0: positive at rank 1
                [30.2, 0.0],  # ranks 30, 31, 29, 32, ... first positive (25) at rank 11
                [20.0, 1000.0],
            ],  # far from all, nearest row 20: positive at rank 1
            np.float32,
        )
        path = write_file(tmp_path / "e.h5", db, q)
        res = evaluate_file(path, "1", recalls=(1, 5, 10, 20))
        assert res.recalls == {
            1: pytest.approx(200 / 3),
            5: pytest.approx(200 / 3),
            10: pytest.approx(200 / 3),
            20: pytest.approx(100.0),
        }
        assert res.queries == 3 and res.database == 60 and res.scale == "1"

    def test_predictions_csv(self, tmp_path):
        db = np.arange(10, dtype=np.float32).reshape(5, 2)
        path = write_file(tmp_path / "p.h5", db, db[:2])
        write_predictions(evaluate_file(path, recalls=(1, 2)), tmp_path / "pred.csv")
        lines = (tmp_path / "pred.csv").read_text().splitlines()
        assert lines[0] == "query,rank,database,distance,metres,positive,method,top1_metres"
        assert lines[1] == "@0@5@.jpg,1,@0@0@.jpg,0,5.0,1,hard_resize,5.0"
        assert len(lines) == 1 + 2 * 2

    def test_bad_threshold(self, tmp_path):
        path = write_file(tmp_path / "t.h5", np.ones((2, 2), np.float32), np.ones((1, 2), np.float32))
        with pytest.raises(VprkitError, match="threshold"):
            evaluate_file(path, threshold=0)

    def test_pyramid_file_search_equals_in_memory_reference(self, gem_file, small_root):
        from vprkit.data.datasets import load_split

        with DescriptorFile(gem_file) as f:
            db = f.read_rows("database", (1, 2), 0, f.num("database"))
            q = f.read_rows("queries", (1, 2), 0, f.num("queries"))
        small = evaluate_file(gem_file, "1+2", block_rows=5)
        big = evaluate_file(gem_file, "1+2")
        _, ids = exact_search(q, db, 20)
        expected = recall_at_n(ids, load_split(small_root, "test").positives(25.0), (1, 5, 10, 20))
        assert small.recalls == big.recalls == dict(zip((1, 5, 10, 20), expected.tolist(), strict=True))
        assert json.loads(json.dumps(big.to_dict()))["recalls"]["1"] == expected[0]


class TestApproximateIndex:
    @pytest.fixture
    def file(self, tmp_path):
        rng = np.random.default_rng(0)
        db = rng.standard_normal((400, 8)).astype(np.float32)
        q = db[:50] + 0.01 * rng.standard_normal((50, 8)).astype(np.float32)
        return write_file(tmp_path / "a.h5", db, q)

    def test_ivf_probing_every_list_equals_exact_and_is_labelled(self, file):
        exact = evaluate_file(file)
        approx = evaluate_file(file, index="IVF4,Flat", nprobe=4)
        assert approx.recalls == exact.recalls
        assert exact.search == "exact" and approx.search.startswith("approximate (IVF4,Flat")

    def test_index_is_stored_and_reused(self, file):
        from vprkit.search.index import build_or_load, index_path

        with DescriptorFile(file) as f:
            _, loaded = build_or_load(f, (1,), "IVF4,Flat", 100)
            assert not loaded and index_path(f, (1,), "IVF4,Flat").exists()
            index, loaded = build_or_load(f, (1,), "IVF4,Flat", 100)
            assert loaded and index.ntotal == 400

    def test_bad_factory_string(self, file):
        with pytest.raises(VprkitError, match="bad faiss index string 'Nope'"):
            evaluate_file(file, index="Nope")
