"""Faster training: mining with faiss / torch shortlists picks exactly the reference's triplets,
the caches are the network's plain forward, and --amp / --channels-last runs."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import flat_config

from vprkit.cli import main
from vprkit.data.datasets import load_split
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.models import ModelConfig, VPRModel, load_model_from_checkpoint
from vprkit.train import TrainConfig, TripletSource, mine, train
from vprkit.train.caches import cache_features
from vprkit.train.neighbours import Shortlists, reference_nearest
from vprkit.train.steps import training_image

SIZE = (32, 40)


# --------------------------------------------------------------------------- the reference
def _reference_nearest(query, feats, k):
    dist = ((feats - query) ** 2).sum(axis=1)
    return np.argsort(dist, kind="stable")[:k]


def reference_mine(source, query_ids, features, method, negs, neg_samples, rng, neg_cache=None):
    """The mining of vprkit 0.2 (a numpy argsort per query), kept as the oracle."""
    n_db = len(source.split.database)
    neg_samples = min(neg_samples, n_db)
    positives = np.unique(np.concatenate([source.hard[q] for q in query_ids]))
    if method == "partial":
        sampled = rng.choice(n_db, size=neg_samples, replace=False)
        needed = np.union1d(sampled, positives)
    elif method == "full":
        needed = np.arange(n_db)
    else:
        needed = positives
    db_feats, q_feats = features(needed, query_ids)
    row_of = {int(d): i for i, d in enumerate(needed)}
    groups = []
    for qi, q in enumerate(query_ids):
        hard = source.hard[q]
        pos = hard[_reference_nearest(q_feats[qi], db_feats[[row_of[int(h)] for h in hard]], 1)[0]]
        if method == "partial":
            candidates = sampled
        elif method == "full":
            candidates = rng.choice(n_db, size=neg_samples, replace=False)
            if neg_cache is not None and q in neg_cache:
                candidates = np.union1d(candidates, neg_cache[q])
        else:
            candidates = np.arange(n_db)
        candidates = np.setdiff1d(candidates, source.soft[q])
        if method == "random":
            chosen = rng.choice(candidates, size=negs, replace=False)
        else:
            feats = db_feats[[row_of[int(c)] for c in candidates]]
            chosen = candidates[_reference_nearest(q_feats[qi], feats, negs)]
            if method == "full" and neg_cache is not None:
                neg_cache[int(q)] = chosen
        groups.append(np.concatenate([[q, pos], chosen]))
    return np.asarray(groups, dtype=np.int64)


@pytest.fixture(scope="module")
def mining_source(tmp_path_factory):
    root = generate_dataset(tmp_path_factory.mktemp("mining"), {"train": (90, 30)}, size=(16, 20), seed=3)
    return TripletSource.from_split(load_split(root, "train"))


def table_features(source, dim: int, kind: str, seed: int = 0, dtype=np.float32):
    """features() of mine from fixed random descriptors: ``plain``, ``ties`` (duplicated rows
    and integer values: many exactly equal distances) or ``near`` (unit queries; the database
    rows within 1e-8 per element of one of 5 unit points: near ties that the fast formula
    cannot order, between clusters it separates)."""
    rng = np.random.default_rng(seed)
    n_db, n_q = len(source.split.database), len(source.split.queries)
    db, q = rng.standard_normal((n_db, dim)), rng.standard_normal((n_q, dim))
    if kind == "ties":
        db = np.round(db)[np.arange(n_db) % 11]
        q = np.round(q)
    elif kind == "near":
        anchors = rng.standard_normal((5, dim))
        anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
        db = anchors[np.arange(n_db) % 5] + 1e-8 * db
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    db, q = db.astype(dtype), q.astype(dtype)
    return lambda db_idx, q_idx: (db[db_idx], q[q_idx])


class TestMiningEqualsReference:
    @pytest.mark.parametrize("method", ["partial", "full", "random"])
    @pytest.mark.parametrize("kind", ["plain", "ties", "near"])
    @pytest.mark.parametrize("dim", [5, 300])
    def test_same_triplets_rng_and_cache(self, mining_source, method, kind, dim):
        features = table_features(mining_source, dim, kind)
        queries = mining_source.queries
        rng_ref, rng = np.random.default_rng(7), np.random.default_rng(7)
        cache_ref: dict = {}
        cache: dict = {}
        for refresh in range(3):  # full mining: the negatives of a refresh join the next one's
            query_ids = queries[refresh * 7 % len(queries) :][:16]
            expected = reference_mine(mining_source, query_ids, features, method, 4, 50, rng_ref, cache_ref)
            got = mine(mining_source, query_ids, features, method, 4, 50, rng, cache)
            np.testing.assert_array_equal(got, expected)
        assert rng.bit_generator.state == rng_ref.bit_generator.state
        assert cache.keys() == cache_ref.keys()
        for q in cache:
            np.testing.assert_array_equal(cache[q], cache_ref[q])

    @pytest.mark.parametrize("kind", ["plain", "ties", "near"])
    @pytest.mark.parametrize("dim", [5, 300])
    def test_full_mining_pair_by_pair(self, mining_source, kind, dim, monkeypatch):
        """Full mining on a large database: fast distances for each query's candidates only."""
        from vprkit.train import mining

        monkeypatch.setattr(mining, "PER_QUERY", 1)
        features = table_features(mining_source, dim, kind, seed=5)
        rng_ref, rng = np.random.default_rng(3), np.random.default_rng(3)
        cache_ref: dict = {}
        cache: dict = {}
        for refresh in range(2):
            query_ids = mining_source.queries[refresh * 5 :][:20]
            np.testing.assert_array_equal(
                mine(mining_source, query_ids, features, "full", 4, 40, rng, cache),
                reference_mine(mining_source, query_ids, features, "full", 4, 40, rng_ref, cache_ref),
            )

    @pytest.mark.parametrize("dim", [5, 300])
    def test_near_ties_defeat_a_plain_faiss_ranking(self, mining_source, dim, monkeypatch):
        """The ``near`` features are a real test: faiss alone orders them otherwise, and the
        shortlists ranked exactly are the near-tied cluster, not every candidate."""
        from vprkit.train import neighbours

        db, q = table_features(mining_source, dim, "near")(np.arange(90), np.arange(30))
        differs = 0
        for qi in range(len(q)):
            fast = faiss.pairwise_distances(q[qi : qi + 1], db)[0]
            differs += not np.array_equal(
                np.argsort(fast, kind="stable")[:4], _reference_nearest(q[qi], db, 4)
            )
        assert differs > 10
        ranked = []
        monkeypatch.setattr(
            neighbours,
            "reference_nearest",
            lambda query, feats, k: ranked.append(len(feats)) or _reference_nearest(query, feats, k),
        )
        search = Shortlists(q, db)
        for qi in range(len(q)):
            np.testing.assert_array_equal(
                search.nearest(qi, np.arange(90), 4), _reference_nearest(q[qi], db, 4)
            )
        assert set(ranked) == {18}  # the cluster of 18 near ties, of 90 candidates

    def test_repeated_queries_and_other_dtypes(self, mining_source):
        """A query mined twice in one full refresh sees its first negatives (as the reference);
        float64 descriptors are ranked as the reference ranks them."""
        query_ids = np.concatenate([mining_source.queries[:6], mining_source.queries[:6]])
        for dtype in (np.float32, np.float64):
            features = table_features(mining_source, 40, "plain", seed=2, dtype=dtype)
            cache_ref: dict = {}
            cache: dict = {}
            expected = reference_mine(
                mining_source, query_ids, features, "full", 3, 40, np.random.default_rng(1), cache_ref
            )
            got = mine(mining_source, query_ids, features, "full", 3, 40, np.random.default_rng(1), cache)
            np.testing.assert_array_equal(got, expected)

    @pytest.mark.parametrize("engine", ["faiss", "torch", "pairs"])
    @pytest.mark.parametrize("dim", [16, 2048])
    def test_shortlists_of_every_engine(self, engine, dim):
        rng = np.random.default_rng(dim)
        q = rng.standard_normal((40, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        columns = (q[0] + 1e-3 * rng.standard_normal((400, dim)) / np.sqrt(dim)).astype(np.float32)
        columns[::9] = columns[4]  # exact ties
        search = Shortlists(
            q, columns, engine=None if engine == "pairs" else engine, per_query=engine == "pairs"
        )
        search.block = 7  # several blocks of queries
        for qi in range(len(q)):
            candidates = np.sort(rng.choice(400, size=250, replace=False))
            expected = _reference_nearest(q[qi], columns[candidates], 10)
            np.testing.assert_array_equal(search.nearest(qi, candidates, 10), expected)
            np.testing.assert_array_equal(reference_nearest(q[qi], columns[candidates], 10), expected)

    def test_non_finite_descriptors_use_the_reference(self):
        q = np.ones((2, 4), dtype=np.float32)
        columns = np.arange(120, dtype=np.float32).reshape(30, 4)
        columns[3] = np.nan
        search = Shortlists(q, columns)
        assert not search.fast
        np.testing.assert_array_equal(
            search.nearest(0, np.arange(30), 3), _reference_nearest(q[0], columns, 3)
        )


# --------------------------------------------------------------------------- caches
@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    return generate_dataset(root, {"train": (30, 16), "val": (20, 10)}, size=SIZE, seed=4)


def small_config(root, **kw) -> TrainConfig:
    base = dict(
        root=str(root),
        weights="none",
        resize=SIZE,
        queries_per_epoch=6,
        cache_refresh=3,
        batch_size=2,
        negatives=2,
        neg_samples=10,
        epochs=1,
        infer_batch_size=4,
        workers=0,
        device="cpu",
        lr=1e-3,
    )
    base.update(kw)
    return flat_config(**base)


class TestCache:
    @pytest.mark.parametrize("channels_last", [True, False])
    @pytest.mark.parametrize("resize", [SIZE, (24, 36)])
    def test_cache_is_the_plain_forward_of_training_images(self, train_root, channels_last, resize):
        source = TripletSource.from_split(load_split(train_root, "train"))
        torch.manual_seed(0)
        model = VPRModel(ModelConfig(aggregation="netvlad", clusters=4, weights="none"))
        model.train()  # the cache puts it in evaluation mode
        config = small_config(train_root, resize=resize, channels_last=channels_last)
        db_idx, q_idx = np.array([0, 3, 4, 9, 17]), np.array([2, 5, 1])
        db, q = cache_features(model, source, config, torch.device("cpu"))(db_idx, q_idx)
        assert not model.training and db.dtype == np.float32 and db.shape == (5, model.output_dim)
        paths = [source.split.database.paths()[i] for i in db_idx] + [
            source.split.queries.paths()[i] for i in q_idx
        ]
        with torch.no_grad():
            expected = model(torch.stack([training_image(p, resize) for p in paths])).numpy()
        np.testing.assert_allclose(np.concatenate([db, q]), expected, rtol=0, atol=2e-6)

    def test_one_pass_per_refresh(self, train_root, tmp_path, monkeypatch):
        from vprkit.train import caches

        real, calls = caches.dataset_descriptors, []

        def counted(model, dataset, *args, **kw):
            calls.append(len(dataset))
            return real(model, dataset, *args, **kw)

        monkeypatch.setattr(caches, "dataset_descriptors", counted)
        train(small_config(train_root, epochs=2), tmp_path / "r", progress=False)
        assert len(calls) == 4  # 2 epochs x 2 refreshes, one pass each (database + queries)
        assert all(n >= 3 + 10 for n in calls)

    def test_unreadable_image(self, tmp_path):
        root = generate_dataset(tmp_path / "d", {"train": (20, 8)}, size=SIZE, seed=1)
        source = TripletSource.from_split(load_split(root, "train"))
        source.split.database.paths()[2].write_bytes(b"not an image")
        model = VPRModel(ModelConfig(weights="none"))
        features = cache_features(model, source, small_config(root), torch.device("cpu"))
        with pytest.raises(VprkitError, match="cannot read image .*db00002"):
            features(np.arange(5), np.arange(2))


# --------------------------------------------------------------------------- --amp, --channels-last
def cli_run(root, run, *options):
    return CliRunner().invoke(
        main,
        [
            "train",
            str(root),
            "-o",
            str(run),
            "--weights",
            "none",
            "--resize",
            *map(str, SIZE),
            "--queries-per-epoch",
            "4",
            "--cache-refresh",
            "2",
            "--batch-size",
            "2",
            "--negatives",
            "2",
            "--neg-samples",
            "10",
            "--epochs",
            "1",
            "--infer-batch-size",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--lr",
            "1e-3",
            "--quiet",
            *options,
        ],
    )


class TestPrecisionOptions:
    @pytest.mark.parametrize(
        "options, amp, channels_last",
        [
            (["--amp"], True, True),
            (["--no-channels-last"], False, False),
            (["--amp", "--no-channels-last", "--aggregation", "netvlad", "--clusters", "4"], True, False),
        ],
    )
    def test_run_records_and_loads(self, train_root, tmp_path, options, amp, channels_last):
        run = tmp_path / "run"
        result = cli_run(train_root, run, *options)
        assert result.exit_code == 0, result.output
        config = json.loads((run / "config.json").read_text())
        assert (config["amp"], config["channels_last"]) == (amp, channels_last)
        losses = [
            json.loads(x)["loss"]
            for x in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)
        ]
        assert len(losses) == 2 and np.isfinite(losses).all() and min(losses) > 0
        log = (run / "train.log").read_text()
        assert ("bfloat16 autocast" if amp else "float32") in log
        assert ("channels-last" if channels_last else "NCHW") in log
        model = load_model_from_checkpoint(run / "best.pth")
        with torch.no_grad():
            out = model(torch.randn(2, 3, *SIZE))
        assert torch.isfinite(out).all() and out.shape == (2, model.output_dim)

    def test_defaults_in_the_config_and_the_help(self):
        defaults = TrainConfig(root="r")
        assert (defaults.amp, defaults.channels_last) == (False, True)
        command = main.commands["train"]
        import click

        options = {p.name: p.get_default(click.Context(command)) for p in command.params}
        assert (options["amp"], options["channels_last"]) == (defaults.amp, defaults.channels_last)
        text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
        assert "--amp / --no-amp" in text and "--channels-last / --no-channels-last" in text
        assert "[default: no-amp]" in text and "[default: channels-last]" in text

    def test_runs_from_before_the_options_resume_as_they_ran(self, tmp_path):
        stored = {
            k: v for k, v in TrainConfig(root="r").to_dict().items() if k not in ("amp", "channels_last")
        }
        (tmp_path / "config.json").write_text(json.dumps(stored))
        config = TrainConfig.load(tmp_path / "config.json")
        assert (config.amp, config.channels_last) == (False, False)

    @pytest.mark.slow
    def test_amp_resume_gives_the_same_weights(self, train_root, tmp_path, monkeypatch):
        from helpers import interrupt_training_at

        config = small_config(train_root, amp=True, epochs=2)
        train(config, tmp_path / "a", progress=False)
        interrupt_training_at(monkeypatch, 3)
        with pytest.raises(KeyboardInterrupt):
            train(small_config(train_root, amp=True, epochs=2), tmp_path / "b", progress=False)
        monkeypatch.undo()
        train(None, tmp_path / "b", resume=True, progress=False)
        a = torch.load(tmp_path / "a/last.pth", weights_only=True)["model_state_dict"]
        b = torch.load(tmp_path / "b/last.pth", weights_only=True)["model_state_dict"]
        for key, value in a.items():
            torch.testing.assert_close(b[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_two_processes_with_the_new_defaults(train_root, tmp_path):
    """Under torchrun (2 CPU processes, gloo): channels-last steps and the gathered one-pass cache
    train the weights of one process (SGD: differences stay at rounding level)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    options = dict(
        aggregation="netvlad",
        clusters=4,
        queries_per_epoch=8,
        cache_refresh=4,
        batch_size=3,
        negatives=2,
        neg_samples=10,
        epochs=1,
        infer_batch_size=8,
        optimizer="sgd",
        lr=1.0,
        margin=1.0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(small_config(train_root, **options), tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    args = ["--weights", "none", "--resize", *map(str, SIZE), "--workers", "0", "--device", "cpu", "--quiet"]
    for key, value in options.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "vprkit.cli",
            "train",
            str(train_root),
            "-o",
            str(tmp_path / "two"),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "two/config.json").read_text())["channels_last"] is True
    a = torch.load(tmp_path / "one/last.pth", weights_only=True)["model_state_dict"]
    b = torch.load(tmp_path / "two/last.pth", weights_only=True)["model_state_dict"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=key)
