"""Pipeline step: Recall@N of a stored descriptor file, for any scale or pyramid.

Recall@N is the percentage of queries with at least one database image within ``threshold``
metres (UTM) among their first N predictions, exactly as the Deep Visual Geo-localization
Benchmark computes it: queries without any positive stay in the denominator.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .datasets import EVAL_POSITIVE_RADIUS, image_inside, positives_within, recorded_images
from .errors import VprkitError
from .files import atomic_output
from .search import blocked_search
from .shards import refuse_shard
from .statistics import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLDS,
    QueryOutcomes,
    bootstrap_recalls,
    check_bootstrap,
    check_seed,
    precision_recall,
    query_outcomes,
    recall_at_thresholds,
    threshold_label,
)
from .store import DescriptorFile, parse_scale_spec, spec_name
from .views import (
    DEFAULT_MAJORITY_WEIGHT,
    HARD_RESIZE,
    TEST_METHODS,
    check_method,
    merge_results,
    query_rows_for,
)

DEFAULT_RECALLS = (1, 5, 10, 20)


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
        test_method: how queries were searched (``vprkit.views``: ``hard_resize``, ...,
            ``maj_voting``).
        majority_weight: ``maj_voting``'s weight (None for the other methods).
        recall_ci: ``{N: (low, high)}``, the bootstrap interval of Recall@N (``vprkit.statistics``);
            empty when the bootstrap was skipped.
        bootstrap: how the intervals were drawn: ``{"resamples", "seed", "level"}``.
        auc_pr: area under the precision-recall curve of the top-1 answers scored by their
            distance (None where no answer is right).
        recall_at_full_precision: percent of the right top-1 answers accepted before the first
            wrong one.
        unmatched: queries without positives on that curve: ``"counted"`` or ``"dropped"``.
        recall_at_thresholds: ``{t: percent of queries with their top-1 within t metres}``.
        outcomes: one row per query (``vprkit.statistics.QueryOutcomes``), for paired
            comparisons (``vprkit compare``) and the report's curves.

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

    def to_dict(self) -> dict:
        out = asdict(replace(self, outcomes=None))
        out.pop("outcomes")
        out["recalls"] = {str(n): r for n, r in self.recalls.items()}
        out["recall_ci"] = {str(n): list(ci) for n, ci in self.recall_ci.items()}
        out["recall_at_thresholds"] = {threshold_label(t): r
                                       for t, r in self.recall_at_thresholds.items()}
        out["per_query"] = self.outcomes.to_dict() if self.outcomes is not None else None
        return out


def parse_recalls(text: str) -> tuple[int, ...]:
    """``"1,5,10,20"`` -> (1, 5, 10, 20): the N of Recall@N, increasing integers >= 1."""
    if not re.fullmatch(r"\s*[0-9]{1,9}(\s*,\s*[0-9]{1,9})*\s*", str(text)):
        raise VprkitError(f"bad recall list {str(text)!r}: expected increasing integers "
                          "separated by commas, like 1,5,10,20")
    values = tuple(int(v) for v in str(text).split(","))
    if min(values) < 1 or list(values) != sorted(set(values)):
        raise VprkitError(f"bad recall list {str(text)!r}: expected increasing integers >= 1")
    return values


def check_search_options(threshold: float, block_rows: int | None, nprobe: int) -> None:
    """One clear line for a threshold, block size or nprobe that would give a wrong number."""
    if not math.isfinite(threshold) or threshold <= 0:
        raise VprkitError(f"--threshold must be a positive number of metres, got {threshold}")
    if block_rows is not None and block_rows < 1:
        raise VprkitError(f"--block-rows must be at least 1, got {block_rows}")
    if nprobe < 1:
        raise VprkitError(f"--nprobe must be at least 1, got {nprobe}")


def recall_at_n(predictions: np.ndarray, positives: Sequence[np.ndarray],
                ns: Sequence[int]) -> np.ndarray:
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
    predictions_path: str | Path | None = None,
    index: str | None = None,
    nprobe: int = 16,
    test_method: str = HARD_RESIZE,
    majority_weight: float = DEFAULT_MAJORITY_WEIGHT,
    pictures: str | Path | None = None,
    only_wrong: bool = False,
    pictures_limit: int | None = None,
    pictures_top_k: int = 5,
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    drop_unmatched: bool = False,
    device: str = "auto",
) -> EvaluationResult:
    """Recall@N of one scale (``"2"``) or pyramid (``"1+2+3"``) of a descriptor file.

    Exact search by default; ``index`` (a faiss factory string such as ``"IVF1024,PQ32"``) uses an
    approximate index built once and stored next to the file (see ``vprkit.index``).

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
        predictions_path: if given, each query's top ``max(recalls)`` are written there as CSV
            (query, rank, database, distance, metres, positive).
        index: faiss factory string for approximate search (None: exact).
        nprobe: inverted lists visited per query by IVF indexes.
        test_method: the benchmark's test method (``vprkit.views``); all but ``hard_resize``
            read a query view that ``vprkit extract --views`` stored.
        majority_weight: ``maj_voting``'s distance reduction per vote.
        pictures: a folder to write a PNG per query (the query and its first
            ``pictures_top_k`` predictions framed green where positive, red where not) and an
            ``index.html`` gallery of them (``vprkit.pictures``); the images are read from the
            dataset root recorded in the file.
        only_wrong: pictures of the queries whose first prediction is not a positive only.
        pictures_limit: at most this many pictures (after ``only_wrong``).
        pictures_top_k: predictions shown per picture.
        bootstrap: resamples of the queries for the intervals of Recall@N (0: none).
        seed: seed of the resampling (the same seed gives the same intervals).
        thresholds: metres at which R@1 is also given (top-1 within t metres).
        drop_unmatched: leave queries without positives out of the precision-recall curve
            (default: counted there as wrong answers; Recall@N always counts them).
        device: where the search runs: ``auto`` (CUDA if available), ``cpu`` (faiss), ``cuda``,
            ``cuda:N`` (torch, or a faiss GPU build for ``index``); see ``vprkit.search``.

    Returns:
        An ``EvaluationResult``: ``recalls`` maps each N to Recall@N in percent, with its
        bootstrap interval, the precision-recall summaries, R@1 at the thresholds, the per-query
        outcomes, the counts, dimension, model and dataset labels, kind of search and time taken.

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
        raise VprkitError(f"--majority-weight must be a finite number, got {majority_weight}")
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
            raise VprkitError(f"Recall@{k} asks for more predictions than the {n_db} database "
                              f"images of {path}; choose --recalls up to {n_db}")
        view = TEST_METHODS[test_method]
        store.check_view(scales, view)
        queries = query_rows_for(test_method, store.read_rows(
            "queries", scales, 0, store.num_rows("queries", view), view))
        block = block_rows or store.default_block_rows()
        if index:
            from .index import build_or_load, on_device, set_nprobe

            ann, _ = build_or_load(store, scales, index, block)
            set_nprobe(ann, nprobe)
            ann, where = on_device(ann, device, nprobe)
            distances, predictions = ann.search(queries, k)
            on_gpu = "" if where == "CPU" else f", {where}"
            search = f"approximate ({index}, nprobe {nprobe}{on_gpu})"
        else:
            distances, predictions = blocked_search(
                queries, store.iter_blocks("database", scales, block), k, device)
            search = "exact"
        distances, predictions = merge_results(test_method, distances, predictions, k,
                                               majority_weight)
        positives = positives_within(store.utm("database"), store.utm("queries"), threshold)
        values = recall_at_n(predictions, positives, recalls)
        outcomes = query_outcomes(predictions, distances, positives, store.utm("queries"),
                                  store.utm("database"), store.names("queries"))
        curve = precision_recall(outcomes, drop_unmatched)
        if predictions_path:
            write_predictions(predictions_path, store, predictions, distances, positives,
                              test_method)
        if pictures is not None:
            write_query_pictures(pictures, store, predictions[:, :pictures_top_k],
                                 distances[:, :pictures_top_k], positives, only_wrong,
                                 pictures_limit, f"{Path(path).name} at scale "
                                 f"{spec_name(scales)}, {test_method}")
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
            bootstrap={"resamples": bootstrap, "seed": seed, "level": DEFAULT_LEVEL}
            if bootstrap else None,
            auc_pr=None if math.isnan(curve.auc) else curve.auc,
            recall_at_full_precision=curve.recall_at_full_precision,
            unmatched=curve.unmatched,
            recall_at_thresholds=recall_at_thresholds(outcomes, thresholds),
            outcomes=outcomes,
        )
        result.seconds = time.perf_counter() - started
    return result


def model_label(model: dict) -> str:
    """``backbone+aggregation`` and where the weights came from, for tables."""
    if model.get("type") == "ensemble":
        parts = [f"{i['model'].get('aggregation', '?')}[{i['scale']}]"
                 + (f"->PCA{i['pca']['dim']}" if i.get("pca") else "") for i in model["inputs"]]
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


def write_predictions(path: str | Path, store: DescriptorFile, predictions: np.ndarray,
                      distances: np.ndarray, positives: Sequence[np.ndarray],
                      test_method: str = HARD_RESIZE) -> Path:
    """CSV: query, rank, database image, squared L2 distance (``maj_voting``: after the vote),
    metres apart, positive or not, test method, and the query's top-1 error in metres (the
    metres of its rank-1 row, on every row of the query); ``path`` ``"-"`` writes it to stdout."""
    q_names, db_names = store.names("queries"), store.names("database")
    q_utm, db_utm = store.utm("queries"), store.utm("database")
    target = nullcontext(sys.stdout) if str(path) == "-" else \
        atomic_output(path, "w", newline="", encoding="utf-8")
    with target as handle:
        out = csv.writer(handle)
        out.writerow(["query", "rank", "database", "distance", "metres", "positive", "method",
                      "top1_metres"])
        for qi, (pred, dist) in enumerate(zip(predictions, distances, strict=True)):
            pos = set(positives[qi].tolist())
            top1 = f"{float(np.linalg.norm(q_utm[qi] - db_utm[pred[0]])):.1f}"
            for rank, (di, d) in enumerate(zip(pred, dist, strict=True), start=1):
                if di < 0:
                    break
                metres = float(np.linalg.norm(q_utm[qi] - db_utm[di]))
                out.writerow([q_names[qi], rank, db_names[di], f"{d:.6g}", f"{metres:.1f}",
                              int(di in pos), test_method, top1])
    return Path(path)


def write_query_pictures(folder: str | Path, store: DescriptorFile, predictions: np.ndarray,
                         distances: np.ndarray, positives: Sequence[np.ndarray],
                         only_wrong: bool, limit: int | None, title: str) -> Path:
    """``vprkit.pictures`` of each query's predictions; returns the gallery's index.html."""
    from .pictures import Match, QueryPicture, select, write_pictures

    db_folder, q_folder = (recorded_images(store.dataset, r) for r in ("database", "queries"))
    q_names, db_names = store.names("queries"), store.names("database")  # (refused if outside)
    q_utm, db_utm = store.utm("queries"), store.utm("database")
    queries = []
    for qi, (pred, dist) in enumerate(zip(predictions, distances, strict=True)):
        pos = set(positives[qi].tolist())
        matches = [Match(path=image_inside(db_folder, db_names[di], store.path), name=db_names[di],
                         rank=r + 1, distance=float(d),
                         metres=float(np.linalg.norm(q_utm[qi] - db_utm[di])),
                         positive=int(di) in pos)
                   for r, (di, d) in enumerate(zip(pred, dist, strict=True)) if di >= 0]
        queries.append(QueryPicture(query_path=image_inside(q_folder, q_names[qi], store.path),
                                    query_name=q_names[qi], matches=matches,
                                    caption=f"{len(pos)} positives in the database"))
    return write_pictures(Path(folder), select(queries, only_wrong, limit), title)


def results_json(results: Sequence[EvaluationResult]) -> str:
    """The rows as the JSON that ``vprkit evaluate --json`` writes (and ``vprkit report`` reads)."""
    return json.dumps([r.to_dict() for r in results], indent=2)
