"""What checking the images of a resumed or extended extraction costs (vprkit.extract.split).

A descriptor file keeps the SHA-256 of every image file; a resumed or extended extraction hashes
the images again and compares. This script writes N JPEG images of H x W (default 10,000 at
480 x 640, the benchmark's size), then times, in a fresh page cache where possible:

- the check as extract runs it (``_changed_image``: every file read and hashed, 8 threads);
- a stat-only check (size and modification time of every file), the cheaper alternative that a
  copy without ``-p`` defeats and an edit that keeps size and time does not notice;
- the hash inside extraction (``read_image`` against ``load_image`` on a sample): the cost that
  every extraction pays to store the hashes;
- decoding and preprocessing a sample, to put the figures beside the extraction itself.

    python benchmarks/bench_image_check.py [--images 10000] [--size 480 640] [--folder DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vprkit.data.datasets import load_split
from vprkit.data.image_check import changed_image as _changed_image
from vprkit.data.images import load_image, preprocess, read_image
from vprkit.data.synthetic import _panorama


def write_images(root: Path, n: int, size: tuple[int, int]) -> Path:
    """n JPEG crops of a textured panorama with noise (about 60-120 KB each at 480 x 640)."""
    folder = root / "images" / "test" / "database"
    (root / "images" / "test" / "queries").mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) >= n:
        return root
    rng = np.random.default_rng(0)
    h, w = size
    pano = _panorama(h, w * 8, rng)
    for i in range(n):
        x = int(rng.integers(0, pano.shape[1] - w))
        crop = np.clip(pano[:, x : x + w] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(crop).save(folder / f"@{i:.2f}@0@33@T@@@@@@@@@img{i:06d}@.jpg", quality=90)
    Image.fromarray(crop).save(root / "images/test/queries/@0.00@5@33@T@@@@@@@@@q@.jpg")
    return root


class _Stored:
    """What a descriptor file holds for the check: the path and the hashes."""

    def __init__(self, path: Path, hashes: dict[str, np.ndarray]):
        self.path = path
        self._hashes = hashes

    def hashes(self, role: str) -> np.ndarray:
        return self._hashes[role]


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--folder", type=Path, default=None, help="where the images are written")
    parser.add_argument("--sample", type=int, default=200, help="images decoded for the reference")
    args = parser.parse_args()
    root = write_images(
        args.folder or Path(tempfile.mkdtemp(prefix="vprkit_bench_")), args.images, tuple(args.size)
    )
    split = load_split(root, "test")
    paths = split.database.paths()
    mbytes = sum(p.stat().st_size for p in paths) / 1e6
    hashes = {
        role: np.stack([np.frombuffer(read_image(p)[1], np.uint8) for p in split.role(role).paths()])
        for role in ("database", "queries")
    }
    stored = _Stored(root / "x.h5", hashes)
    rows = {role: len(split.role(role)) for role in ("database", "queries")}
    rows_out = []
    for cache in ("cold", "warm"):
        if cache == "cold" and not drop_caches():
            continue
        start = time.perf_counter()
        problem = _changed_image(stored, split, rows, progress=False)
        rows_out.append((f"SHA-256 of every file, 8 threads ({cache} cache)", time.perf_counter() - start))
        assert problem is None, problem
    start = time.perf_counter()
    for p in paths:
        st = p.stat()
        _ = (st.st_size, st.st_mtime_ns)
    rows_out.append(("stat of every file (size, mtime)", time.perf_counter() - start))
    sample = paths[: args.sample]
    start = time.perf_counter()
    for p in sample:
        load_image(p)
    plain = (time.perf_counter() - start) / len(sample)
    start = time.perf_counter()
    for p in sample:
        read_image(p)
    hashed = (time.perf_counter() - start) / len(sample)
    start = time.perf_counter()
    for p in sample:
        preprocess(load_image(p), tuple(args.size), (1,))
    decode = (time.perf_counter() - start) / len(sample)
    print(
        f"{len(paths)} images of {args.size[0]}x{args.size[1]}, {mbytes:.0f} MB "
        f"({mbytes / len(paths) * 1000:.0f} KB each), in {root}"
    )
    print(f"{'what':<52} {'seconds':>9} {'ms/image':>9}")
    for label, seconds in rows_out:
        print(f"{label:<52} {seconds:>9.2f} {seconds / len(paths) * 1000:>9.3f}")
    print(f"{'decode only (load_image), per image':<52} {'':>9} {plain * 1000:>9.3f}")
    print(f"{'decode + SHA-256 (read_image, extract), per image':<52} {'':>9} {hashed * 1000:>9.3f}")
    print(f"{'decode + preprocess (no network), per image':<52} {'':>9} {decode * 1000:>9.3f}")


if __name__ == "__main__":
    main()
