"""Training throughput: triplet groups (1 query, 1 positive, N negatives) per second and peak
memory, for one optimiser step after another on a fixed random batch (no data loading), so the
figure is the network's training cost alone.

Example::

    python benchmarks/bench_train.py --size 480 640 --steps 5
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from rich.console import Console
from rich.table import Table

from vprkit.models import ModelConfig, VPRModel
from vprkit.train import triplet_loss


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18conv4")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=4, help="triplet groups per step")
    parser.add_argument("--negatives", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 1 warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    console = Console()
    table = Table(title=f"training, {args.backbone}, {args.size[0]}x{args.size[1]}, batch "
                        f"{args.batch_size} groups of {2 + args.negatives} images, {args.device}, "
                        f"{torch.get_num_threads()} threads")
    for col in ("aggregation", "s/step", "groups/s", "triplets/s", "images/s", "peak RSS MiB"):
        table.add_column(col, justify="right")
    for aggregation in ("gem", "netvlad"):
        torch.manual_seed(0)
        model = VPRModel(ModelConfig(backbone=args.backbone, aggregation=aggregation,
                                     weights="none")).to(args.device).train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        n_images = args.batch_size * (2 + args.negatives)
        images = torch.randn(n_images, 3, *args.size, device=args.device)

        def step(model=model, optimizer=optimizer, images=images):
            loss = triplet_loss(model(images), args.batch_size, args.negatives, 0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - start) / args.steps
        groups = args.batch_size / per_step
        table.add_row(aggregation, f"{per_step:.2f}", f"{groups:.2f}",
                      f"{groups * args.negatives:.1f}", f"{n_images / per_step:.1f}",
                      f"{peak_rss_mib():.0f}")
    console.print(table)
    console.print("peak RSS is the process high-water mark so far (the NetVLAD row includes GeM's)")


if __name__ == "__main__":
    main()
