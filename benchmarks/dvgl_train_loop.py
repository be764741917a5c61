"""The Deep Visual Geo-localization Benchmark's training loop, re-implemented for
``bench_train.py`` from a reading of the benchmark's ``train.py`` and ``datasets_ws.py`` (written
anew here; nothing of vprkit's trainer is used), as one cache refresh with partial mining runs:

- the triplet dataset: database and query paths found by ``glob`` and sorted, UTM coordinates
  parsed from the names, soft positives (25 m) and hard positives (10 m) found by scikit-learn's
  ``NearestNeighbors.radius_neighbors``, queries without a hard positive dropped; in inference
  mode item i is image i (database first, then queries) opened with PIL, ``ToTensor`` and the
  ImageNet ``Normalize``, then resized as a tensor; in training mode item i is triplet group i:
  the query and the database images resized with PIL first (``Resize``, then ``ToTensor`` and
  ``Normalize``), stacked, with the (negatives, 3) local indexes of its triplets;
- the collate: images concatenated, local indexes shifted by 2 + negatives per group;
- the cache: a ``DataLoader`` over a ``Subset`` of the sampled database images, the queries'
  positives and the queries, under ``torch.no_grad`` in evaluation mode, the rows kept one by one
  in a list (the benchmark's ``RAMEfficient2DMatrix``) and gathered with ``np.array`` on reading;
- the mining (``compute_triplets_partial``): per query, a faiss ``IndexFlatL2`` built over its
  positives' rows for the best positive, and one built over the sampled database images minus
  its soft positives for the hard negatives;
- the steps: a ``DataLoader`` of ``batch_size`` groups (``drop_last``), the model in training
  mode (wrapped in ``DataParallel``), one forward of all the images, the triplet margin loss
  (``TripletMarginLoss(reduction="sum")``) summed negative by negative and divided by
  batch size x negatives, then ``zero_grad``, ``backward``, ``step`` and ``loss.item()``;
- the network: the same backbone and weights as a vprkit model, with the benchmark's GeM
  (``avg_pool2d`` of the clamped power) or its NetVLAD forward (a Python loop over the clusters).
"""

from __future__ import annotations

import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from bench_extract import LoopNetVLAD
from PIL import Image
from sklearn.neighbors import NearestNeighbors
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from vprkit.models import NetVLAD, VPRModel
from vprkit.models.aggregations.gem import GeMPool

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _utm(paths: list[str]) -> np.ndarray:
    return np.array([(p.split("@")[1], p.split("@")[2]) for p in paths]).astype(np.float64)


class BenchmarkTriplets(Dataset):
    """The benchmark's triplet dataset (one split folder, partial mining, no augmentation)."""

    def __init__(self, split_folder: Path, resize: tuple[int, int], negatives: int):
        self.database_paths = sorted(str(p) for p in (split_folder / "database").glob("**/*.jpg"))
        queries = sorted(str(p) for p in (split_folder / "queries").glob("**/*.jpg"))
        self.resize, self.negatives = list(resize), negatives
        self.base = T.Compose([T.ToTensor(), T.Normalize(mean=MEAN, std=STD)])
        self.resized = T.Compose([T.Resize(self.resize), self.base])
        knn = NearestNeighbors(n_jobs=1).fit(_utm(self.database_paths))
        soft = knn.radius_neighbors(_utm(queries), radius=25, return_distance=False)
        hard = knn.radius_neighbors(_utm(queries), radius=10, return_distance=False)
        keep = [i for i, h in enumerate(hard) if len(h)]
        self.queries_paths = [queries[i] for i in keep]
        self.soft = [soft[i] for i in keep]
        self.hard = [hard[i] for i in keep]
        self.database_num, self.queries_num = len(self.database_paths), len(self.queries_paths)
        self.images_paths = self.database_paths + self.queries_paths
        self.inference = False
        self.triplets = torch.empty((0, 2 + negatives), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images_paths) if self.inference else len(self.triplets)

    def __getitem__(self, index: int):
        if self.inference:
            image = self.base(Image.open(self.images_paths[index]).convert("RGB"))
            return T.functional.resize(image, self.resize), index
        query, positive, *negatives = self.triplets[index].tolist()
        images = [
            self.resized(Image.open(self.queries_paths[query]).convert("RGB")),
            self.resized(Image.open(self.database_paths[positive]).convert("RGB")),
        ]
        images += [self.resized(Image.open(self.database_paths[n]).convert("RGB")) for n in negatives]
        local = torch.tensor([[0, 1, 2 + k] for k in range(self.negatives)])
        return torch.stack(images), local, self.triplets[index]


def collate(batch):
    """Images concatenated; each group's local triplet indexes shifted to its images."""
    images = torch.cat([b[0] for b in batch])
    local = torch.cat([b[1] + len(b[2]) * i for i, b in enumerate(batch)])
    return images, local, torch.stack([b[2] for b in batch])


class RowCache:
    """Rows stored one by one (the benchmark's RAM-efficient cache), gathered on reading."""

    def __init__(self, n: int):
        self.rows: list[np.ndarray | None] = [None] * n

    def __setitem__(self, indexes: np.ndarray, values: np.ndarray) -> None:
        for i, v in zip(indexes, values, strict=True):
            self.rows[i] = v

    def __getitem__(self, index):
        if hasattr(index, "__len__"):
            return np.array([self.rows[i] for i in index])
        return self.rows[index]


def compute_cache(
    model, data: BenchmarkTriplets, indexes: list[int], batch_size: int, workers: int, device: torch.device
) -> RowCache:
    data.inference = True
    loader = DataLoader(
        Subset(data, indexes),
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    model.eval()
    cache = RowCache(len(data))
    with torch.no_grad():
        for images, idx in loader:
            cache[idx.numpy()] = model(images.to(device)).cpu().numpy()
    data.inference = False
    return cache


def mine_partial(
    model,
    data: BenchmarkTriplets,
    queries: np.ndarray,
    sampled: np.ndarray,
    dim: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    timings: dict | None = None,
) -> None:
    """Partial mining of ``queries`` among the ``sampled`` database images: sets
    ``data.triplets`` (``timings["cache"]``: the seconds the cache took)."""
    positives = [p for q in queries for p in data.hard[q]]
    database = list(np.unique(list(sampled) + positives))
    start = time.perf_counter()
    cache = compute_cache(
        model, data, database + list(queries + data.database_num), batch_size, workers, device
    )
    if timings is not None:
        timings["cache"] = time.perf_counter() - start
    data.triplets = torch.tensor(
        partial_triplets(
            cache, data.hard, data.soft, data.database_num, queries, sampled, dim, data.negatives
        )
    )


def partial_triplets(
    cache: RowCache,
    hard,
    soft,
    database_num: int,
    queries: np.ndarray,
    sampled: np.ndarray,
    dim: int,
    negatives: int,
) -> list[tuple]:
    """The per-query loop of the benchmark's partial mining, from a filled cache (database rows
    first, then queries): a faiss ``IndexFlatL2`` over the query's positives for the best one,
    and one over the sampled images that are not soft positives for the hard negatives."""
    triplets = []
    for q in queries:
        query = cache[q + database_num].reshape(1, -1)
        index = faiss.IndexFlatL2(dim)
        index.add(cache[hard[q]])
        _, best = index.search(query, 1)
        positive = hard[q][best[0]].item()
        candidates = np.setdiff1d(sampled, soft[q], assume_unique=True)
        index = faiss.IndexFlatL2(dim)
        index.add(cache[candidates])
        _, nearest = index.search(query, negatives)
        triplets.append((q, positive, *candidates[nearest.reshape(-1)].astype(np.int32)))
    return triplets


def train_steps(
    model,
    optimizer,
    data: BenchmarkTriplets,
    batch_size: int,
    margin: float,
    workers: int,
    device: torch.device,
) -> float:
    """The steps over ``data.triplets``; the mean loss."""
    loader = DataLoader(
        data,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    criterion = nn.TripletMarginLoss(margin=margin, p=2, reduction="sum")
    model = model.train()
    losses = []
    for images, local, _ in loader:
        features = model(images.to(device))
        loss = torch.zeros(())
        for triplets in local.view(batch_size, data.negatives, 3).transpose(1, 0):
            q, p, n = triplets.T
            loss += criterion(features[q], features[p], features[n])
        del features
        loss /= batch_size * data.negatives
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


class BenchmarkGeM(nn.Module):
    """L2 normalisation, then ``avg_pool2d`` of the clamped power, then the root (shares p)."""

    def __init__(self, p: nn.Parameter, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, p=2, dim=1)
        pooled = F.avg_pool2d(x.clamp(min=self.eps).pow(self.p), (x.size(-2), x.size(-1)))
        return pooled.pow(1.0 / self.p).flatten(1)


class BenchmarkNetwork(nn.Module):
    """A vprkit model's backbone (and weights) with the benchmark's aggregation forward."""

    def __init__(self, model: VPRModel):
        super().__init__()
        self.backbone = model.backbone
        agg = model.aggregation
        pool = getattr(agg, "pool", None)
        if isinstance(agg, NetVLAD):
            self.aggregation: nn.Module = LoopNetVLAD(agg)
        elif isinstance(pool, GeMPool) and getattr(agg, "l2", None) == "before_pool":
            self.aggregation = BenchmarkGeM(pool.p, pool.eps)
        else:
            raise ValueError("bench_train compares GeM (L2 before pooling) or NetVLAD")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone(x))
