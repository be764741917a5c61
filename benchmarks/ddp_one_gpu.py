"""DistributedDataParallel on one GPU: two triplet steps of a vprkit network under DDP with
SyncBatchNorm (NCCL on CUDA, gloo on a CPU), which must equal the same steps without DDP.

``vprkit train`` with one process is a plain run (no process group), so this is the check of the
DDP path that one GPU allows: world size 1, the gradients all-reduced through the process group
(a communication hook counts the buckets), the weights after the steps compared with a copy
trained without DDP from the same seed. Run under torchrun::

    torchrun --standalone --nproc_per_node 1 benchmarks/ddp_one_gpu.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from vprkit.models import ModelConfig, build_model


def network(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18conv4", aggregation="gem", weights="none"))
    return model.to(device).train()


def step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor) -> float:
    """One triplet step on (anchor, positive, negative) thirds of ``images``, in one forward."""
    a, p, n = model(images).chunk(3)
    loss = F.triplet_margin_loss(a, p, n, margin=0.1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (gloo)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--groups", type=int, default=4, help="triplets per step")
    parser.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    args = parser.parse_args()
    if "WORLD_SIZE" not in os.environ:
        sys.exit("run under torchrun: torchrun --standalone --nproc_per_node 1 " + sys.argv[0])
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        probe = torch.ones(1, device=device)
        dist.all_reduce(probe)
        plain = network(device)
        wrapped = network(device)
        if device.type == "cuda":  # SyncBatchNorm runs on GPUs only
            wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
        ddp = DistributedDataParallel(
            wrapped, device_ids=[device.index] if device.index is not None else None
        )
        buckets = [0]

        def counting_allreduce(state, bucket):
            buckets[0] += 1
            return default_hooks.allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting_allreduce)
        opt_plain = torch.optim.SGD(plain.parameters(), lr=0.05)
        opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(args.steps):
            images = torch.rand((3 * args.groups, 3, *args.size), generator=gen).to(device)
            losses.append((step(plain, opt_plain, images), step(ddp, opt_ddp, images)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        diff = max(
            float((a - b).abs().max())
            for a, b in zip(plain.state_dict().values(), ddp.module.state_dict().values(), strict=True)
            if a.is_floating_point()
        )
        moved = max(
            float((a - b).abs().max())
            for a, b in zip(network(device).state_dict().values(), plain.state_dict().values(), strict=True)
            if a.is_floating_point()
        )
        ok = probe.item() == dist.get_world_size() and buckets[0] > 0 and diff <= 1e-5 and moved > 0
        print(
            f"DDP on one {device.type} device ({dist.get_backend()}, world size "
            f"{dist.get_world_size()}, {device}): {args.steps} steps, losses plain/DDP "
            f"{', '.join(f'{a:.4f}/{b:.4f}' for a, b in losses)}; {buckets[0]} all-reduced "
            f"gradient buckets; weights moved by up to {moved:.3g}; max |DDP - plain| "
            f"{diff:.3g}: {'ok' if ok else 'MISMATCH'}"
        )
        return 0 if ok else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
