"""Training throughput of vprkit's training path against the benchmark's own training loop.

Generates a train split with ``vprkit.data.synthetic.generate_dataset`` (``--size`` images) in a
temporary folder and times one cache refresh of partial mining, side by side in one process:

- ``benchmark``: the Deep Visual Geo-localization Benchmark's ``train.py`` loop, re-implemented
  in ``benchmarks/dvgl_train_loop.py`` (its triplet dataset, cache, faiss mining per query,
  collate, steps and loss; NCHW float32, its GeM / looped NetVLAD forward);
- ``vprkit``: vprkit's own training path, the functions the trainer runs at each refresh
  (``vprkit.train.caches.cache_features``, ``vprkit.train.mining.mine``, the steps of
  ``vprkit.train.steps``), with its defaults (channels-last) and with ``--no-channels-last``;
  with ``--amp`` also ``vprkit --amp`` (bfloat16 on a CPU: not float32, shown apart).

Every loop starts from the same weights (ResNet-18 conv4 from random weights, NetVLAD clusters
by k-means once, untimed) and mines the same ``--queries`` queries among the same
``--neg-samples`` database images (the same random draws), then trains on them in batches of
``--batch-size`` groups of 1 query + 1 positive + ``--negatives`` negatives. Rounds alternate the
loops (``--rounds``, the fastest of each is shown); triplets/s counts the query x negative
triplets of the refresh over its whole time (cache + mining + steps). The table also shows where
the time goes and whether vprkit mined the benchmark's triplets.

``--steps N`` instead times N optimiser steps on a fixed random batch (no data loading, no
mining): the network's training cost alone, NCHW and channels-last in float32 (with ``--amp``
also under autocast; ``--profile``: the operators of a step). ``--mining N`` times the partial
mining of N queries alone, from random unit descriptors of ``--dim`` dimensions (3000 database
rows, ``--neg-samples`` candidates, 3 positives per query): vprkit's ``mine`` against the
benchmark's per-query faiss indexes over its row cache.

Examples::

    python benchmarks/bench_train.py --size 240 320 --queries 8 --neg-samples 40 --rounds 2 --amp
    python benchmarks/bench_train.py --size 480 640 --aggregation gem --amp
    python benchmarks/bench_train.py --size 480 640 --steps 2 --aggregation gem --amp --profile
    python benchmarks/bench_train.py --mining 1000 --neg-samples 1000 --dim 16384
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dvgl_train_loop import (
    BenchmarkNetwork,
    BenchmarkTriplets,
    RowCache,
    mine_partial,
    partial_triplets,
    train_steps,
)
from rich.console import Console
from rich.table import Table

from vprkit.data.datasets import load_split
from vprkit.data.synthetic import generate_dataset
from vprkit.extract.inference import InferenceOptions, sample_local_features
from vprkit.models import ModelConfig, NetVLAD, VPRModel
from vprkit.train import TrainConfig, TripletSource, mine, triplet_loss
from vprkit.train.caches import cache_features
from vprkit.train.steps import Precision, _train_groups, build_optimizer

console = Console(width=None if sys.stdout.isatty() else 150)


def initial_model(args, aggregation: str, root: Path, split) -> dict:
    """The weights every loop starts from (NetVLAD: k-means on the database, untimed)."""
    torch.manual_seed(0)
    model = VPRModel(ModelConfig(aggregation=aggregation, clusters=args.clusters, weights="none"))
    if isinstance(model.aggregation, NetVLAD):
        options = InferenceOptions(
            resize=tuple(args.size),
            batch_size=args.infer_batch_size,
            workers=0,
            cluster_images=len(split.database),
        )
        model.eval()
        feats = sample_local_features(model, split.database.paths(), options, torch.device("cpu"))
        model.aggregation.init_from_descriptors(feats, seed=0)
    return {k: v.clone() for k, v in model.state_dict().items()}


def fresh_model(args, aggregation: str, state: dict, device: torch.device) -> VPRModel:
    model = VPRModel(ModelConfig(aggregation=aggregation, clusters=args.clusters, weights="none"))
    model.load_state_dict(state)
    return model.to(device)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loaders' workers)."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_benchmark(args, aggregation, state, data, positions, rng, device) -> dict:
    model = fresh_model(args, aggregation, state, device)
    net = torch.nn.DataParallel(BenchmarkNetwork(model))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)
    sampled = rng.choice(data.database_num, size=args.neg_samples, replace=False)
    times: dict = {}
    start = time.perf_counter()
    mine_partial(
        net, data, positions, sampled, model.output_dim, args.infer_batch_size, args.workers, device, times
    )
    mined = time.perf_counter()
    train_steps(net, optimizer, data, args.batch_size, 0.1, args.workers, device)
    end = time.perf_counter()
    groups = data.triplets.numpy().astype(np.int64)
    return {
        "cache": times["cache"],
        "mining": mined - start - times["cache"],
        "steps": end - mined,
        "groups": groups,
    }


def run_vprkit(args, aggregation, state, source, root, query_ids, rng, device, **kw) -> dict:
    config = TrainConfig(
        root=str(root),
        model=ModelConfig(aggregation=aggregation, clusters=args.clusters, weights="none"),
        resize=tuple(args.size),
        negatives=args.negatives,
        neg_samples=args.neg_samples,
        queries_per_epoch=len(query_ids),
        cache_refresh=len(query_ids),
        batch_size=args.batch_size,
        infer_batch_size=args.infer_batch_size,
        workers=args.workers,
        device=str(device),
        **kw,
    )
    precision = Precision.of(config, device)
    model = precision.prepare(fresh_model(args, aggregation, state, device))
    optimizer = build_optimizer(model, config)
    features = cache_features(model, source, config, device)
    spent = {"cache": 0.0}

    def timed(db_idx, q_idx):
        start = time.perf_counter()
        out = features(db_idx, q_idx)
        spent["cache"] += time.perf_counter() - start
        return out

    start = time.perf_counter()
    groups = mine(
        source, query_ids, timed, "partial", args.negatives, args.neg_samples, rng, {}, device=device
    )
    mined = time.perf_counter()
    _train_groups(model, optimizer, source, groups, config, None, device, False, "", precision=precision)
    end = time.perf_counter()
    return {
        "cache": spent["cache"],
        "mining": mined - start - spent["cache"],
        "steps": end - mined,
        "groups": groups,
    }


def compare(args) -> None:
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        root = generate_dataset(
            tmp, {"train": (args.database, args.queries + 4)}, size=tuple(args.size), seed=0
        )
        split = load_split(root, "train")
        source = TripletSource.from_split(split)
        data = BenchmarkTriplets(root / "images" / "train", tuple(args.size), args.negatives)
        if data.queries_num != len(source.queries) or data.database_paths != [
            str(p) for p in split.database.paths()
        ]:
            raise SystemExit("the benchmark's dataset and vprkit's differ: cannot compare")
        loops = [
            ("benchmark loop", "benchmark", {}),
            ("vprkit", "vprkit", {"channels_last": True}),
            ("vprkit --no-channels-last", "vprkit", {"channels_last": False}),
        ]
        if args.amp:
            loops.append(
                (
                    "vprkit --amp (bfloat16)" if device.type == "cpu" else "vprkit --amp (float16)",
                    "vprkit",
                    {"amp": True},
                )
            )
        rows = []
        for aggregation in args.aggregation:
            state = initial_model(args, aggregation, root, split)
            best: dict[str, dict] = {}
            first: dict[str, np.ndarray] = {}
            for r in range(args.rounds):
                for label, kind, kw in loops:
                    rng = np.random.default_rng(100 + r)  # the same draws for every loop
                    positions = rng.choice(len(source.queries), size=args.queries, replace=False)
                    cpu = cpu_seconds()
                    if kind == "benchmark":
                        got = run_benchmark(args, aggregation, state, data, positions, rng, device)
                    else:
                        got = run_vprkit(
                            args,
                            aggregation,
                            state,
                            source,
                            root,
                            source.queries[positions],
                            rng,
                            device,
                            **kw,
                        )
                        got["groups"][:, 0] = np.searchsorted(source.queries, got["groups"][:, 0])
                    got["cpu"] = cpu_seconds() - cpu
                    got["total"] = got["cache"] + got["mining"] + got["steps"]
                    console.print(
                        f"{aggregation} round {r + 1}: {label}: {got['total']:.1f} s, {got['cpu']:.1f} CPU s"
                    )
                    first.setdefault(label, got["groups"])
                    if label not in best or got["total"] < best[label]["total"]:  # wall time
                        best[label] = got
            for label, groups in first.items():
                if label != loops[0][0]:
                    best[label]["equal"] = int((groups == first[loops[0][0]]).all(1).sum())
            rows.append((aggregation, best))
        show(args, rows, loops)
    finally:
        if args.keep:
            console.print(f"dataset kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def show(args, rows, loops) -> None:
    h, w = args.size
    table = Table(
        title=f"one cache refresh + its training: {args.queries} queries, "
        f"{args.neg_samples} sampled database images, {h}x{w}, batches of "
        f"{args.batch_size} x (2 + {args.negatives}) images, {args.device}, "
        f"{torch.get_num_threads()} threads, {args.workers} workers, fastest of "
        f"{args.rounds}"
    )
    for col in (
        "aggregation",
        "loop",
        "cache s",
        "mining s",
        "steps s",
        "total s",
        "triplets/s",
        "vs benchmark",
        "CPU s",
        "vs benchmark (CPU)",
        "same triplets",
    ):
        table.add_column(col, justify="left" if col == "loop" else "right")
    triplets = args.queries * args.negatives
    for aggregation, best in rows:
        base = best[loops[0][0]]
        for label, _, _ in loops:
            got = best[label]
            same = f"{got['equal']}/{args.queries}" if "equal" in got else ""
            table.add_row(
                aggregation,
                label,
                f"{got['cache']:.1f}",
                f"{got['mining']:.2f}",
                f"{got['steps']:.1f}",
                f"{got['total']:.1f}",
                f"{triplets / got['total']:.2f}",
                f"{base['total'] / got['total']:.2f}x",
                f"{got['cpu']:.1f}",
                f"{base['cpu'] / got['cpu']:.2f}x",
                same,
            )
    console.print(table)
    console.print(
        "vprkit is run in float32 with its defaults (channels-last memory format) and "
        "with --no-channels-last; same triplets: groups of the first round identical to "
        "the benchmark loop's (same weights and draws; rounding can swap near ties)"
    )


def network_only(args) -> None:
    """--steps: optimiser steps on a fixed random batch (the network's cost alone), NCHW and
    channels-last in float32 (and channels-last under bfloat16 / float16 autocast with --amp);
    with --profile, the operators of one channels-last float32 step."""
    device = torch.device(args.device)
    table = Table(
        title=f"training steps on a fixed batch, resnet18conv4, {args.size[0]}x"
        f"{args.size[1]}, {args.batch_size} groups of {2 + args.negatives} "
        f"images, {args.device}, {torch.get_num_threads()} threads, mean of "
        f"{args.steps} after a warm-up"
    )
    for col in (
        "aggregation",
        "layout, precision",
        "s/step",
        "CPU s/step",
        "triplets/s",
        "vs NCHW float32",
        "peak RSS MiB",
    ):
        table.add_column(col, justify="right")
    variants = [("NCHW, float32", False, False), ("channels-last, float32", True, False)]
    if args.amp:
        variants.append(("channels-last, autocast", True, True))
    for aggregation in args.aggregation:
        base = None
        for label, channels_last, amp in variants:
            torch.manual_seed(0)
            precision = Precision(device, amp=amp, channels_last=channels_last)
            model = precision.prepare(
                VPRModel(ModelConfig(aggregation=aggregation, weights="none")).to(device)
            )
            optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            images = precision.inputs(
                torch.randn(args.batch_size * (2 + args.negatives), 3, *args.size, device=device)
            )
            model.train()

            def step(model=model, optimizer=optimizer, images=images, precision=precision):
                with precision.autocast():
                    features = model(images).float()
                precision.step(triplet_loss(features, args.batch_size, args.negatives, 0.1), optimizer)

            step()  # warm-up
            if args.profile and channels_last and not amp:
                from torch.profiler import profile

                with profile() as prof:
                    step()
                console.print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.perf_counter() - start) / args.steps
            cpu_step = (time.process_time() - cpu) / args.steps
            base = base or cpu_step
            table.add_row(
                aggregation,
                label,
                f"{per_step:.2f}",
                f"{cpu_step:.2f}",
                f"{args.batch_size * args.negatives / per_step:.1f}",
                f"{base / cpu_step:.2f}x (CPU)",
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
            )
    console.print(table)


def mining_only(args) -> None:
    """--mining: the mining of a refresh alone, on random unit descriptors."""
    from types import SimpleNamespace

    n_db, n_q, dim = 3000, args.mining, args.dim
    rng = np.random.default_rng(0)
    hard = [np.sort(rng.choice(n_db, 3, replace=False)) for _ in range(n_q)]
    soft = [np.union1d(h, rng.choice(n_db, 4, replace=False)) for h in hard]
    names = SimpleNamespace(names=[f"q{i}" for i in range(n_q)])
    source = TripletSource(
        SimpleNamespace(database=range(n_db), queries=names),  # type: ignore[arg-type]
        np.arange(n_q),
        hard,
        soft,
    )
    db, q = (rng.standard_normal((n, dim)).astype(np.float32) for n in (n_db, n_q))
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    cache = RowCache(n_db + n_q)
    cache[np.arange(n_db + n_q)] = np.concatenate([db, q])
    table = Table(
        title=f"partial mining of {n_q} queries among {args.neg_samples} sampled "
        f"database images, {dim} dimensions, {torch.get_num_threads()} threads"
    )
    for col in ("mining", "s", "CPU s", "same triplets"):
        table.add_column(col, justify="right")
    sampled = np.random.default_rng(1).choice(n_db, size=args.neg_samples, replace=False)
    start, cpu = time.perf_counter(), time.process_time()
    ours = mine(
        source,
        np.arange(n_q),
        lambda a, b: (db[a], q[b]),
        "partial",
        args.negatives,
        args.neg_samples,
        np.random.default_rng(1),
    )
    table.add_row("vprkit", f"{time.perf_counter() - start:.2f}", f"{time.process_time() - cpu:.2f}", "")
    start, cpu = time.perf_counter(), time.process_time()
    theirs = np.array(
        partial_triplets(cache, hard, soft, n_db, np.arange(n_q), sampled, dim, args.negatives),
        dtype=np.int64,
    )
    table.add_row(
        "benchmark loop",
        f"{time.perf_counter() - start:.2f}",
        f"{time.process_time() - cpu:.2f}",
        f"{int((ours == theirs).all(1).sum())}/{n_q}",
    )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--aggregation", nargs="+", default=["gem", "netvlad"], choices=["gem", "netvlad"])
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--database", type=int, default=150, help="train database images")
    parser.add_argument("--queries", type=int, default=8, help="queries mined and trained on")
    parser.add_argument(
        "--neg-samples", type=int, default=40, help="database images sampled as negative candidates"
    )
    parser.add_argument("--negatives", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4, help="triplet groups per step")
    parser.add_argument("--infer-batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds, fastest shown")
    parser.add_argument("--amp", action="store_true", help="also time vprkit --amp")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset")
    parser.add_argument(
        "--steps", type=int, default=None, help="time N steps on a fixed random batch instead"
    )
    parser.add_argument(
        "--profile", action="store_true", help="with --steps: the operators of one channels-last step"
    )
    parser.add_argument(
        "--mining", type=int, default=None, metavar="N", help="time the mining of N queries alone instead"
    )
    parser.add_argument("--dim", type=int, default=16384, help="descriptor size for --mining")
    args = parser.parse_args()
    if args.mining is not None:
        mining_only(args)
    elif args.steps is not None:
        network_only(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
