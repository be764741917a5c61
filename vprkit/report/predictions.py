"""Writers of an evaluation's predictions: a CSV of each query's top-K, and pictures of them."""

from __future__ import annotations

import csv
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from vprkit.data.datasets import image_inside, recorded_images
from vprkit.evaluate.results import EvaluationResult, Ranking
from vprkit.files import atomic_output
from vprkit.progress import ProgressCallback
from vprkit.report import pictures
from vprkit.store import DescriptorFile, spec_name


def _ranking(result: EvaluationResult) -> Ranking:
    if result.ranking is None:
        raise ValueError(
            "result: an EvaluationResult without its ranking (read back from JSON?); "
            "evaluate the file again to write predictions or pictures"
        )
    return result.ranking


def write_predictions(result: EvaluationResult, path: str | Path) -> Path:
    """CSV of ``result``'s ranking: query, rank, database image, squared L2 distance
    (``maj_voting``: after the vote), metres apart, positive or not, test method, and the query's
    top-1 error in metres (the metres of its rank-1 row, on every row of the query); ``path``
    ``"-"`` writes it to stdout. The names and positions are read from ``result.file``."""
    ranking = _ranking(result)
    with DescriptorFile(result.file) as store:
        q_names, db_names = store.names("queries"), store.names("database")
        q_utm, db_utm = store.utm("queries"), store.utm("database")
    target = (
        nullcontext(sys.stdout)
        if str(path) == "-"
        else atomic_output(path, "w", newline="", encoding="utf-8")
    )
    with target as handle:
        out = csv.writer(handle)
        out.writerow(["query", "rank", "database", "distance", "metres", "positive", "method", "top1_metres"])
        for qi, (pred, dist) in enumerate(zip(ranking.predictions, ranking.distances, strict=True)):
            pos = set(ranking.positives[qi].tolist())
            top1 = f"{float(np.linalg.norm(q_utm[qi] - db_utm[pred[0]])):.1f}"
            for rank, (di, d) in enumerate(zip(pred, dist, strict=True), start=1):
                if di < 0:
                    break
                metres = float(np.linalg.norm(q_utm[qi] - db_utm[di]))
                out.writerow(
                    [
                        q_names[qi],
                        rank,
                        db_names[di],
                        f"{d:.6g}",
                        f"{metres:.1f}",
                        int(di in pos),
                        result.test_method,
                        top1,
                    ]
                )
    return Path(path)


def write_query_pictures(
    result: EvaluationResult,
    folder: str | Path,
    only_wrong: bool = False,
    limit: int | None = None,
    top_k: int = 5,
    progress: ProgressCallback | None = None,
) -> Path:
    """A PNG per query of ``result`` (the query and its first ``top_k`` predictions, framed green
    where positive, red where not) and an ``index.html`` gallery (``vprkit.report.pictures``);
    the images are read from the dataset root recorded in ``result.file``. ``only_wrong``: the
    queries whose first prediction is not a positive only; ``limit``: at most this many;
    ``progress``: called as the pictures are drawn (``vprkit.progress``; None: silent).
    Returns the gallery's ``index.html``."""
    ranking = _ranking(result)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    title = f"{Path(result.file).name} at scale {spec_name(ranking.scales)}, {result.test_method}"
    with DescriptorFile(result.file) as store:
        db_folder, q_folder = (recorded_images(store.dataset, r) for r in ("database", "queries"))
        q_names, db_names = store.names("queries"), store.names("database")  # (refused if outside)
        q_utm, db_utm = store.utm("queries"), store.utm("database")
        queries = []
        rows = zip(ranking.predictions[:, :top_k], ranking.distances[:, :top_k], strict=True)
        for qi, (pred, dist) in enumerate(rows):
            pos = set(ranking.positives[qi].tolist())
            matches = [
                pictures.Match(
                    path=image_inside(db_folder, db_names[di], store.path),
                    name=db_names[di],
                    rank=r + 1,
                    distance=float(d),
                    metres=float(np.linalg.norm(q_utm[qi] - db_utm[di])),
                    positive=int(di) in pos,
                )
                for r, (di, d) in enumerate(zip(pred, dist, strict=True))
                if di >= 0
            ]
            query_path = image_inside(q_folder, q_names[qi], store.path)
            queries.append(
                pictures.QueryPicture(
                    query_path=query_path,
                    query_name=q_names[qi],
                    matches=matches,
                    caption=f"{len(pos)} positives in the database",
                )
            )
    return pictures.write_pictures(
        Path(folder), pictures.select(queries, only_wrong, limit), title, progress=progress
    )
