"""A small generated place-recognition dataset in the benchmark layout (demo and tests).

A textured "street" panorama is generated; each database image is a window of it at 10 m
intervals, each query a window near a database place with a small shift, a change of brightness
and contrast, and noise. The last queries lie past the end of the mapped street, so they have
no positive within 25 m (they count in the Recall@N denominator, as in the benchmark).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

EAST0, NORTH0 = 500000.0, 4000000.0
STEP_M = 10.0


def _panorama(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency colour noise with random shapes: locally distinctive texture."""
    small = rng.random((max(2, height // 16), max(2, width // 16), 3))
    base = Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(width // 6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(4, height // 2)), int(rng.integers(4, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle([x, y, x + w, y + h], fill=colour)
        else:
            draw.ellipse([x, y, x + w, y + h], fill=colour)
    return np.asarray(base, dtype=np.float32)


def _name(east: float, north: float, tag: str) -> str:
    return f"@{east:.2f}@{north:.2f}@33@T@@@@@@@@@{tag}@.jpg"


def generate_split(
    folder: Path,
    n_database: int,
    n_queries: int,
    size: tuple[int, int],
    rng: np.random.Generator,
    unmapped_queries: int = 2,
) -> None:
    """One split's database (a window every 10 m of a panorama) and queries (shifted, relit)."""
    height, width = size
    stride = max(4, width // 3)  # pixels between neighbouring places (10 m)
    extra = unmapped_queries + 2
    pano = _panorama(height, (n_database + extra) * stride + width, rng)
    (folder / "database").mkdir(parents=True, exist_ok=True)
    (folder / "queries").mkdir(parents=True, exist_ok=True)
    for i in range(n_database):
        crop = pano[:, i * stride : i * stride + width]
        Image.fromarray(crop.astype(np.uint8)).save(
            folder / "database" / _name(EAST0, NORTH0 + i * STEP_M, f"db{i:05d}"), quality=95
        )
    mapped = n_queries - unmapped_queries
    places = np.sort(rng.choice(n_database, size=min(mapped, n_database), replace=mapped > n_database))
    places = np.concatenate([places, n_database + 2 + np.arange(unmapped_queries)])
    for j, place in enumerate(places):
        shift = int(rng.integers(-stride // 4, stride // 4 + 1))
        x0 = int(np.clip(place * stride + shift, 0, pano.shape[1] - width))
        crop = pano[:, x0 : x0 + width]
        gain, bias = rng.uniform(0.6, 1.2), rng.uniform(-30, 30)
        noisy = crop * gain + bias + rng.normal(0, 8, crop.shape)
        metres = x0 / stride * STEP_M
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            folder / "queries" / _name(EAST0, NORTH0 + metres, f"q{j:05d}"), quality=90
        )


def generate_dataset(
    root: str | Path,
    splits: dict[str, tuple[int, int]] | None = None,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> Path:
    """Write ``root/images/<split>/{database,queries}``; ``splits`` maps split -> (db, queries)."""
    root = Path(root)
    splits = splits or {"test": (60, 30)}
    rng = np.random.default_rng(seed)
    for split, (n_db, n_q) in splits.items():
        generate_split(root / "images" / split, n_db, n_q, size, rng)
    return root
