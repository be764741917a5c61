"""The embedded demo: generated data -> extract (GeM, NetVLAD, scales 1,2,3) -> evaluate."""

from __future__ import annotations

from pathlib import Path

from .evaluate import EvaluationResult, evaluate_file
from .extract import ExtractOptions, extract
from .models import ModelConfig
from .progress import console
from .store import parse_scales, spec_name
from .synthetic import generate_dataset

DEMO_SIZE = (120, 160)
DEMO_SPLIT = {"test": (150, 75)}


def run_demo(out: str | Path = "vprkit_demo", backbone: str = "resnet18conv4",
             weights: str = "none", scales: str = "1,2,3",
             progress: bool = True) -> list[EvaluationResult]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = out / "dataset"
    if not (root / "images" / "test").is_dir():
        console.print(f"generating a dataset in {root}")
        generate_dataset(root, DEMO_SPLIT, size=DEMO_SIZE, seed=0)
    scale_list = parse_scales(scales)
    results = []
    for aggregation in ("gem", "netvlad"):
        path = out / f"{aggregation}.h5"
        options = ExtractOptions(scales=scale_list, resize=DEMO_SIZE, batch_size=16, workers=1)
        config = ModelConfig(backbone=backbone, aggregation=aggregation, weights=weights)
        extract(root, path, config, options, progress=progress)
        specs = [(s,) for s in scale_list] + ([scale_list] if len(scale_list) > 1 else [])
        for spec in specs:
            results.append(evaluate_file(path, spec_name(spec)))
    return results
