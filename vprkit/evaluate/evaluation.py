"""Pipeline step: Recall@N of a stored descriptor file, for any scale or pyramid.

Recall@N is the percentage of queries with at least one database image within ``threshold``
metres (UTM) among their first N predictions, exactly as the Deep Visual Geo-localization
Benchmark computes it: queries without any positive stay in the denominator.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vprkit.data.datasets import EVAL_POSITIVE_RADIUS, positives_within
from vprkit.descriptors.views import (
    DEFAULT_MAJORITY_WEIGHT,
    HARD_RESIZE,
    TEST_METHODS,
    check_method,
    merge_results,
    query_rows_for,
)
from vprkit.errors import ParameterError, VprkitError
from vprkit.evaluate.results import EvaluationResult, Ranking
from vprkit.evaluate.statistics import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLDS,
    bootstrap_recalls,
    check_bootstrap,
    check_seed,
    precision_recall,
    query_outcomes,
    recall_at_thresholds,
)
from vprkit.search.exact import blocked_search
from vprkit.store import DescriptorFile, parse_scale_spec, spec_name
from vprkit.store.checks import refuse_shard

DEFAULT_RECALLS = (1, 5, 10, 20)


def parse_recalls(text: str) -> tuple[int, ...]:
    """``"1,5,10,20"`` -> (1, 5, 10, 20): the N of Recall@N, increasing integers >= 1."""
    if not re.fullmatch(r"\s*[0-9]{1,9}(\s*,\s*[0-9]{1,9})*\s*", str(text)):
        raise VprkitError(
            f"bad recall list {str(text)!r}: expected increasing integers separated by commas, like 1,5,10,20"
        )
    values = tuple(int(v) for v in str(text).split(","))
    if min(values) < 1 or list(values) != sorted(set(values)):
        raise VprkitError(f"bad recall list {str(text)!r}: expected increasing integers >= 1")
    return values


def check_search_options(threshold: float, block_rows: int | None, nprobe: int) -> None:
    """One clear line for a threshold, block size or nprobe that would give a wrong number."""
    if not math.isfinite(threshold) or threshold <= 0:
        raise ParameterError("threshold", f"threshold must be a positive number of metres, got {threshold}")
    if block_rows is not None and block_rows < 1:
        raise ParameterError("block_rows", f"block_rows must be at least 1, got {block_rows}")
    if nprobe < 1:
        raise ParameterError("nprobe", f"nprobe must be at least 1, got {nprobe}")


def recall_at_n(predictions: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int]) -> np.ndarray:
    """Percentage of queries with a positive among the first n predictions, for each n."""
    if len(predictions) == 0:
        raise VprkitError("there are no queries to evaluate")
    hits = np.zeros(len(ns))
    for pred, pos in zip(predictions, positives, strict=True):
        found = np.isin(pred, pos)
        for i, n in enumerate(ns):
            if found[:n].any():
                hits[i:] += 1
                break
    return hits / len(predictions) * 100.0


def evaluate_file(
    path: str | Path,
    scale: str | None = None,
    recalls: Sequence[int] = DEFAULT_RECALLS,
    threshold: float = EVAL_POSITIVE_RADIUS,
    block_rows: int | None = None,
    index: str | None = None,
    nprobe: int = 16,
    test_method: str = HARD_RESIZE,
    majority_weight: float = DEFAULT_MAJORITY_WEIGHT,
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    drop_unmatched: bool = False,
    device: str = "auto",
) -> EvaluationResult:
    """Recall@N of one scale (``"2"``) or pyramid (``"1+2+3"``) of a descriptor file.

    Exact search by default; ``index`` (a faiss factory string such as ``"IVF1024,PQ32"``) uses an
    approximate index built once and stored next to the file (see ``vprkit.search.index``).

    The ``(N_q, D)`` query rows are read whole; the ``(N_db, D)`` database rows are searched
    ``block_rows`` at a time (squared L2, running top-``max(recalls)``), so memory stays bounded
    by one block plus the queries. Recall@N is the percentage of all queries with a database
    image within ``threshold`` metres among their first N predictions; queries without any
    positive stay in the denominator, as in the benchmark.

    Args:
        path: a complete descriptor file (made by extract, combine or merge; not a lone shard).
        scale: ``"2"`` for one stored scale, ``"1+2+3"`` for the pyramid of several; None: the
            file's first scale.
        recalls: the N of Recall@N, integers >= 1, at most the number of database images.
        threshold: metres (UTM) within which a database image is a positive.
        block_rows: database rows searched at a time (None: about 256 MiB of rows).
        index: faiss factory string for approximate search (None: exact).
        nprobe: inverted lists visited per query by IVF indexes.
        test_method: the benchmark's test method (``vprkit.descriptors.views``); all but ``hard_resize``
            read a query view that ``vprkit extract --views`` stored.
        majority_weight: ``maj_voting``'s distance reduction per vote.
        bootstrap: resamples of the queries for the intervals of Recall@N (0: none).
        seed: seed of the resampling (the same seed gives the same intervals).
        thresholds: metres at which R@1 is also given (top-1 within t metres).
        drop_unmatched: leave queries without positives out of the precision-recall curve
            (default: counted there as wrong answers; Recall@N always counts them).
        device: where the search runs: ``auto`` (CUDA if available), ``cpu`` (faiss), ``cuda``,
            ``cuda:N`` (torch, or a faiss GPU build for ``index``); see ``vprkit.search.exact``.

    Returns:
        An ``EvaluationResult``: ``recalls`` maps each N to Recall@N in percent, with its
        bootstrap interval, the precision-recall summaries, R@1 at the thresholds, the per-query
        outcomes, the counts, dimension, model and dataset labels, kind of search and time taken,
        and each query's ranking (``vprkit.report.write_predictions`` and
        ``write_query_pictures`` write it as CSV and pictures).

    Raises:
        VprkitError: a missing, incomplete or damaged file, a shard, a scale the file lacks, no
            database or query rows, bad recalls, threshold, block size or nprobe, a test method
            whose view the file lacks (the message names the extract option that adds it).
    """
    started = time.perf_counter()
    check_search_options(threshold, block_rows, nprobe)
    check_method(test_method)
    check_bootstrap(bootstrap)
    check_seed(seed)
    if not math.isfinite(majority_weight):
        raise ParameterError(
            "majority_weight", f"majority_weight must be a finite number, got {majority_weight}"
        )
    recalls = tuple(recalls)
    if not recalls or min(recalls) < 1:
        raise VprkitError(f"bad recalls {recalls}: expected integers >= 1")
    with DescriptorFile(path) as store:
        refuse_shard(store)
        scales = parse_scale_spec(scale) if scale else (store.scales[0],)
        store.check_spec(scales)
        n_db, n_q = store.num("database"), store.num("queries")
        if n_db == 0 or n_q == 0:
            raise VprkitError(f"{path} has {n_db} database and {n_q} query rows; need both")
        k = max(recalls)
        if k > n_db:
            raise ParameterError(
                "recalls",
                f"Recall@{k} asks for more predictions than the "
                f"{n_db} database images of {path}; choose recalls up to {n_db}",
            )
        view = TEST_METHODS[test_method]
        store.check_view(scales, view)
        queries = query_rows_for(
            test_method, store.read_rows("queries", scales, 0, store.num_rows("queries", view), view)
        )
        block = block_rows or store.default_block_rows()
        if index:
            from vprkit.search.index import build_or_load, on_device, set_nprobe

            ann, _ = build_or_load(store, scales, index, block)
            set_nprobe(ann, nprobe)
            ann, where = on_device(ann, device, nprobe)
            distances, predictions = ann.search(queries, k)
            on_gpu = "" if where == "CPU" else f", {where}"
            search = f"approximate ({index}, nprobe {nprobe}{on_gpu})"
        else:
            distances, predictions = blocked_search(
                queries, store.iter_blocks("database", scales, block), k, device
            )
            search = "exact"
        distances, predictions = merge_results(test_method, distances, predictions, k, majority_weight)
        positives = positives_within(store.utm("database"), store.utm("queries"), threshold)
        values = recall_at_n(predictions, positives, recalls)
        outcomes = query_outcomes(
            predictions,
            distances,
            positives,
            store.utm("queries"),
            store.utm("database"),
            store.names("queries"),
        )
        curve = precision_recall(outcomes, drop_unmatched)
        result = EvaluationResult(
            file=str(path),
            scale=spec_name(scales),
            recalls={n: float(v) for n, v in zip(recalls, values, strict=True)},
            queries=n_q,
            database=n_db,
            dim=queries.shape[1],
            threshold=threshold,
            queries_without_positives=sum(1 for p in positives if len(p) == 0),
            seconds=0.0,
            model=model_label(store.model),
            dataset=f"{Path(store.dataset.get('root', '?')).name}/{store.dataset.get('split', '?')}",
            search=search,
            test_method=test_method,
            majority_weight=majority_weight if test_method == "maj_voting" else None,
            recall_ci=bootstrap_recalls(outcomes, recalls, bootstrap, seed),
            bootstrap={"resamples": bootstrap, "seed": seed, "level": DEFAULT_LEVEL} if bootstrap else None,
            auc_pr=None if math.isnan(curve.auc) else curve.auc,
            recall_at_full_precision=curve.recall_at_full_precision,
            unmatched=curve.unmatched,
            recall_at_thresholds=recall_at_thresholds(outcomes, thresholds),
            outcomes=outcomes,
            ranking=Ranking(predictions, distances, positives, scales),
        )
        result.seconds = time.perf_counter() - started
    return result


def model_label(model: dict) -> str:
    """``backbone+aggregation`` and where the weights came from, for tables."""
    if model.get("type") == "ensemble":
        parts = [
            f"{i['model'].get('aggregation', '?')}[{i['scale']}]"
            + (f"->PCA{i['pca']['dim']}" if i.get("pca") else "")
            for i in model["inputs"]
        ]
        weights = model.get("weights")
        return "ensemble " + " + ".join(parts) + (f" w={weights}" if weights else "")
    if model.get("checkpoint"):
        source = Path(model["checkpoint"]).name
    else:
        weights = str(model.get("weights", "?"))
        source = weights if weights in ("imagenet", "none") else Path(weights).name
    if model.get("model"):  # a zoo model
        return f"{model['model']} {source}"
    return f"{model.get('backbone', '?')}+{model.get('aggregation', '?')} {source}"
