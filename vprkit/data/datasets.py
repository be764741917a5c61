"""The benchmark dataset layout, UTM coordinates from file names, and ground truth.

Layout (Deep Visual Geo-localization Benchmark)::

    ROOT/images/{train,val,test}/{database,queries}/**/@UTM_east@UTM_north@zone@letter@lat@lon@...@.jpg

Only the first two ``@`` fields (UTM east and north, metres) are required.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from vprkit.choices import IMAGE_EXTENSIONS, ROLES
from vprkit.errors import VprkitError, shown

SPLITS = ("train", "val", "test")
EVAL_POSITIVE_RADIUS = 25.0
TRAIN_POSITIVE_RADIUS = 10.0


def parse_utm(name: str) -> tuple[float, float]:
    """UTM (east, north) in metres from a benchmark file name ``@east@north@...`` (plain
    numbers: no underscores, spaces or digits of other scripts, which ``float()`` accepts)."""
    from vprkit.numbers import parse_float

    fields = Path(name).name.split("@")
    try:
        east, north = (parse_float(fields[i], "UTM", finite=False, spaces=False) for i in (1, 2))
    except (IndexError, ValueError):
        raise VprkitError(
            f"cannot read UTM coordinates from file name {name!r}: expected "
            "'@UTM_east@UTM_north@zone@letter@lat@lon@...@.jpg'"
        ) from None
    if not (np.isfinite(east) and np.isfinite(north)):
        raise VprkitError(f"non-finite UTM coordinates in file name {name!r}")
    return east, north


def _image_problem(path: Path) -> str | None:
    """Why an entry with an image extension cannot be read as an image, or None."""
    if path.is_symlink() and not path.exists():
        return "is a broken symbolic link (its target does not exist)"
    if path.is_dir():
        return "has an image extension but is a folder"
    if not path.is_file():
        return "has an image extension but is not a regular file"
    return None


def list_images(folder: Path) -> list[str]:
    """Image paths under ``folder`` (recursively), relative to it, in sorted order.

    Refused with one line naming the entry (nothing is skipped silently): a name that is not
    valid UTF-8 (descriptor files store names as UTF-8), and an entry with an image extension
    that is not a readable file (a broken symbolic link, a folder, a device). Symbolic links to
    image files are listed like the files.
    """
    names, problems = [], []
    for path in folder.rglob("*"):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        name = path.relative_to(folder).as_posix()
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(
                (
                    name,
                    f"image name {shown(folder / name)} is not valid UTF-8; "
                    "rename it (descriptor files store names as UTF-8)",
                )
            )
            continue
        why = _image_problem(path)
        if why is not None:
            problems.append((name, f"{shown(folder / name)} {why}; fix or remove it"))
            continue
        names.append(name)
    if problems:
        problems.sort()
        more = f" (and {len(problems) - 1} more such entries)" if len(problems) > 1 else ""
        raise VprkitError(problems[0][1] + more)
    return sorted(names)


@dataclass
class ImageList:
    """The images of one role (database or queries) of a split, with their UTM coordinates."""

    folder: Path
    names: list[str]
    utm: np.ndarray  # (N, 2) float64
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def paths(self) -> list[Path]:
        return [self.folder / n for n in self.names]

    @classmethod
    def from_folder(cls, folder: Path, skip_unparsable: bool = False) -> ImageList:
        names, utm, skipped = [], [], []
        for name in list_images(folder):
            try:
                utm.append(parse_utm(name))
                names.append(name)
            except VprkitError as err:
                if not skip_unparsable:
                    raise VprkitError(f"{err} (in {shown(folder)})") from None
                skipped.append(name)
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} file(s) without coordinates in {folder}, e.g. {skipped[0]!r}",
                stacklevel=2,
            )
        utm_array = np.asarray(utm, dtype=np.float64).reshape(-1, 2)
        return cls(folder=folder, names=names, utm=utm_array, skipped=skipped)


@dataclass
class Split:
    """One split of a benchmark-layout dataset: a database and a query set."""

    root: Path
    name: str
    database: ImageList
    queries: ImageList

    @property
    def folder(self) -> Path:
        return self.root / "images" / self.name

    def role(self, role: str) -> ImageList:
        if role not in ROLES:
            raise VprkitError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        return getattr(self, role)

    def positives(self, radius: float = EVAL_POSITIVE_RADIUS) -> list[np.ndarray]:
        """For each query, the database indices within ``radius`` metres (sorted by distance)."""
        return positives_within(self.database.utm, self.queries.utm, radius)


def positives_within(database_utm: np.ndarray, queries_utm: np.ndarray, radius: float) -> list[np.ndarray]:
    """Database indices within ``radius`` metres of each query (inclusive), nearest first."""
    if len(database_utm) == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(len(queries_utm))]
    knn = NearestNeighbors(algorithm="auto").fit(database_utm)
    _, indices = knn.radius_neighbors(queries_utm, radius=radius, sort_results=True)
    return [np.asarray(i, dtype=np.int64) for i in indices]


def recorded_images(dataset: dict, role: str) -> Path:
    """The folder of ``role``'s images of the split that a descriptor file's ``dataset`` header
    records (``root/images/split/role``; it may have moved since). Its names are resolved
    inside it with ``image_inside``."""
    split = str(dataset.get("split", ""))
    if "/" in split or split in (".", "..") or "\x00" in split:
        raise VprkitError(f"recorded split {shown(repr(split))} is not a folder name")
    return Path(dataset.get("root", ".")) / "images" / split / role


def image_inside(folder: Path, name: str, file: object) -> Path:
    """``folder / name`` for an image name read from descriptor file ``file``; one clear line
    where the name is empty, absolute, holds NUL or a ``..`` component, so that a name never
    reaches a file outside ``folder`` by its spelling. Symbolic links inside the dataset are
    followed: they are the dataset's own (made by its owner, e.g. by ``dataset import``)."""
    from vprkit.store.checks import name_problem

    problem = name_problem(name)
    if problem:
        raise VprkitError(
            f"{file}: image name {shown(repr(name), 80)} {problem}: names are "
            f"relative to {shown(folder)}, inside it"
        )
    return folder / name


def split_folder(root: Path | str, split: str) -> Path:
    """``ROOT/images/SPLIT``, or one clear error naming the splits that are there."""
    root = Path(root)
    if not root.is_dir():
        raise VprkitError(f"dataset root {root} does not exist or is not a folder")
    folder = root / "images" / split
    if not folder.is_dir():
        found = (
            sorted(p.name for p in (root / "images").glob("*") if p.is_dir())
            if (root / "images").is_dir()
            else []
        )
        hint = f" (found splits: {', '.join(found)})" if found else " (expected ROOT/images/SPLIT)"
        raise VprkitError(f"split folder {folder} does not exist{hint}")
    return folder


def load_split(
    root: Path | str,
    split: str = "test",
    skip_unparsable: bool = False,
    allow_empty: bool = False,
    queries_optional: bool = False,
) -> Split:
    """Read one split of a dataset in the benchmark layout; ``queries_optional``: a split
    without a queries folder (or with an empty one) has no queries instead of being an error
    (a database for ``vprkit locate``)."""
    folder = split_folder(root, split)
    lists = {}
    for role in ROLES:
        role_folder = folder / role
        if (
            role == "queries"
            and queries_optional
            and (not role_folder.is_dir() or not any(role_folder.iterdir()))
        ):
            lists[role] = ImageList(folder=role_folder, names=[], utm=np.zeros((0, 2)))
            continue
        if not role_folder.is_dir():
            raise VprkitError(f"folder {role_folder} does not exist")
        lists[role] = ImageList.from_folder(role_folder, skip_unparsable=skip_unparsable)
        if not allow_empty and len(lists[role]) == 0:
            raise VprkitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {role_folder}")
    return Split(root=Path(root), name=split, database=lists["database"], queries=lists["queries"])


def _upright_hw(im) -> tuple[int, int]:
    """(H, W) of an opened image as ``images.load_image`` decodes it (turned by its EXIF
    orientation, as that module's ``_exif_orientation`` reads it; repeated here so that
    ``dataset info`` does not import torch), without decoding the pixels: a PNG's EXIF is seen
    where its eXIf chunk comes before the pixel data (where Pillow writes it)."""
    orientation = 1
    late_png_exif = im.format == "PNG" and "exif" not in im.info  # (reading it would decode)
    if im.format != "TIFF" and not late_png_exif:  # (Pillow reports a TIFF's turned size)
        try:
            with warnings.catch_warnings():  # Pillow's "Corrupt EXIF data"
                warnings.simplefilter("ignore")
                orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block: the image as stored
            pass
    turned = isinstance(orientation, int) and orientation in (5, 6, 7, 8)
    return (im.width, im.height) if turned else (im.height, im.width)


def dataset_info(
    root: Path | str, radius: float = EVAL_POSITIVE_RADIUS, image_sizes: bool = True
) -> list[dict]:
    """Per split and role: image count, queries without positives, image sizes."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise VprkitError(f"dataset root {root} does not exist or is not a folder")
    splits = [s for s in SPLITS if (root / "images" / s).is_dir()]
    if not splits:
        raise VprkitError(f"no split folders in {root / 'images'} (expected train, val or test)")
    rows = []
    for split_name in splits:
        split = load_split(root, split_name, allow_empty=True)
        positives = split.positives(radius) if len(split.queries) else []
        without = sum(1 for p in positives if len(p) == 0)
        for role in ROLES:
            images = split.role(role)
            sizes: Counter = Counter()
            if image_sizes:
                for path in images.paths():
                    try:
                        with Image.open(path) as im:
                            height, width = _upright_hw(im)
                            sizes[f"{height}x{width}"] += 1  # H x W, as --resize
                    except Exception as err:
                        raise VprkitError(f"cannot read image {path}: {err}") from None
            rows.append(
                {
                    "split": split_name,
                    "role": role,
                    "images": len(images),
                    "queries_without_positives": without if role == "queries" else None,
                    "sizes": dict(sizes.most_common()),
                }
            )
    return rows
