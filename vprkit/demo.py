"""The embedded demo: the whole pipeline on a generated dataset, 41 s on two idle CPU cores.

generate (train/val/test) -> train GeM a little -> extract GeM (untrained and trained) and
NetVLAD at scales 1,2,3 -> combine (concat and PCA) -> evaluate everything in one table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vprkit.choices import DEFAULT_BACKBONE
from vprkit.data.synthetic import generate_dataset
from vprkit.ensemble.combining import combine
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.evaluate.results import EvaluationResult
from vprkit.extract.split import ExtractOptions, extract
from vprkit.models import ModelConfig
from vprkit.progress import ProgressCallback, progress_callback
from vprkit.store import parse_scales, spec_name

DEMO_SIZE = (120, 160)
DEMO_SPLITS = {"train": (150, 75), "val": (60, 30), "test": (150, 75)}
DEMO_PCA = 128
DEMO_TRAIN_QUERIES = 70  # of the 73 training queries with a positive within 10 m: nothing clipped
logger = logging.getLogger(__name__)


def run_demo(
    out: str | Path = "vprkit_demo",
    backbone: str = DEFAULT_BACKBONE,
    weights: str = "none",
    scales: str = "1,2,3",
    train: bool = True,
    progress: ProgressCallback | None = None,
) -> list[EvaluationResult]:
    """The whole pipeline on a generated dataset in ``out``; its Recall@N rows (one table).

    Args:
        out: the folder of the dataset, the run and the descriptor files.
        backbone: the backbone of every network.
        weights: its weights (``"none"``: random).
        scales: the scales to extract (a pyramid of them is evaluated too).
        train: train GeM for one epoch and evaluate it too.
        progress: called as the work goes (``vprkit.progress``); None: silent. What the demo
            does is logged (``logging``, ``vprkit`` logger).

    Returns:
        One ``EvaluationResult`` per file and scale or pyramid.
    """
    progress = progress_callback(progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = out / "dataset"
    if not all((root / "images" / s).is_dir() for s in DEMO_SPLITS):
        logger.info(f"generating a dataset in {root}")
        generate_dataset(root, DEMO_SPLITS, size=DEMO_SIZE, seed=0)
    scale_list = parse_scales(scales)
    pyramid = [spec_name(scale_list)] if len(scale_list) > 1 else []
    options = ExtractOptions(scales=scale_list, resize=DEMO_SIZE, batch_size=16, workers=1)
    models = {
        "gem": ModelConfig(backbone=backbone, aggregation="gem", weights=weights),
        "netvlad": ModelConfig(backbone=backbone, aggregation="netvlad", weights=weights),
    }
    if train:
        from vprkit.train import TrainConfig
        from vprkit.train import train as run_train

        run = out / "runs" / "gem"
        if not (run / "best.pth").exists():
            if run.exists():
                for f in run.iterdir():
                    f.unlink()
            logger.info(f"training GeM for one epoch in {run}")
            run_train(
                TrainConfig(
                    root=str(root.resolve()),
                    model=models["gem"],
                    resize=DEMO_SIZE,
                    queries_per_epoch=DEMO_TRAIN_QUERIES,
                    cache_refresh=DEMO_TRAIN_QUERIES,
                    neg_samples=150,
                    epochs=1,
                    lr=1e-4,
                    workers=1,
                ),
                run,
                progress=progress,
            )
        models["gem_trained"] = ModelConfig(checkpoint=str(run / "best.pth"))
    results = []
    files = {}
    for name, config in models.items():
        files[name] = extract(root, out / f"{name}.h5", config, options, progress=progress)
        for spec in [str(scale_list[0]), *pyramid]:
            results.append(evaluate_file(files[name], spec))
    gem = files.get("gem_trained", files["gem"])
    for name, pca in (("concat", None), ("pca", DEMO_PCA)):
        path = combine([gem, files["netvlad"]], out / f"{name}.h5", pca=pca, overwrite=True)
        results.append(evaluate_file(path))
    return results


def next_steps(out: str | Path, results: list[EvaluationResult]) -> list[str]:
    """Where the demo's files are and what to try next (printed after its table)."""
    out = Path(out)
    files = sorted({Path(r.file).name for r in results})
    netvlad = out / "netvlad.h5"
    lines = [
        f"The demo's files are in {out}/: the generated dataset (dataset/), "
        + ("the training run (runs/gem/), " if (out / "runs" / "gem").is_dir() else "")
        + f"and the descriptor files {', '.join(files)}.",
        "Try next:",
        f"  vprkit info {netvlad}                          # what a descriptor file holds",
        f"  vprkit evaluate {netvlad} --scale 1+3          # any pyramid of the stored scales",
        f"  vprkit combine {out / 'gem.h5'} {netvlad} --pca 64 -o {out / 'ens64.h5'}",
        f"  vprkit extract {out / 'dataset'} -o {out / 'mine.h5'} --weights none --resize 120 160",
        "  vprkit --help                                   # every command",
    ]
    return lines
