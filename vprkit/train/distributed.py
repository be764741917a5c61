"""Training in several processes (``torchrun``): the process group, the split of the work, and
errors that stop every process instead of leaving the others waiting.

``Processes.from_env()`` reads torchrun's ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with one
process (a plain ``vprkit train``) every method is a no-op or a direct call, so a single-process
run executes exactly the code it ran before multi-process training existed.

One default process group carries everything: ``gloo`` on a machine without CUDA, and
``cpu:gloo,cuda:nccl`` where CUDA is available, so that the collectives on GPU tensors (DDP's
gradient all-reduce, SyncBatchNorm) use NCCL and the small ones on CPU tensors (error flags,
gathered descriptors, checkpoint payloads) use gloo.

BatchNorm layers in training mode normalise with the statistics of the images they see. For the
processes together to compute what one process computes on the whole batch, they are made to
use the statistics of the whole batch: ``torch.nn.SyncBatchNorm`` on GPUs, and on CPUs (where
SyncBatchNorm refuses to run) ``GlobalBatchNorm2d``, the same computation in plain torch
operations with a differentiable all-reduce.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vprkit.errors import VprkitError
from vprkit.extract.world import World

TIMEOUT = timedelta(minutes=30)  # a process that stops answering fails the others after this

_END = object()


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduce (sum) of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics (and running-statistics update) are those of
    the images of all processes together; evaluation mode is plain BatchNorm2d. Sums are taken in
    float64. The state dict is BatchNorm2d's."""

    group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels = x.shape[1]
        dims = (0, 2, 3)
        local = torch.cat(
            [
                x.sum(dims, dtype=torch.float64),
                torch.tensor([x.numel() // channels], dtype=torch.float64, device=x.device),
            ]
        )
        total = _SumOverProcesses.apply(local, self.group)
        count = float(total[-1].detach())
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {count:g}")
        mean = total[:channels] / count
        centred = x - mean.to(x.dtype).view(1, -1, 1, 1)
        var = _SumOverProcesses.apply((centred * centred).sum(dims, dtype=torch.float64), self.group) / count
        out = centred * torch.rsqrt(var + self.eps).to(x.dtype).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            assert (
                self.num_batches_tracked is not None
                and self.running_mean is not None
                and self.running_var is not None
            )
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                unbiased = var * (count / (count - 1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return out


def _to_global_batchnorm(module: nn.Module, group) -> nn.Module:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                new.weight, new.bias = child.weight, child.bias  # the same Parameter objects
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.group = group
            new.train(child.training)
            setattr(module, name, new)
        else:
            _to_global_batchnorm(child, group)
    return module


def _share(items, parts: int, index: int):
    """Contiguous share ``index`` of ``parts`` (the first shares get one more when uneven)."""
    n = len(items)
    size, extra = divmod(n, parts)
    start = index * size + min(index, extra)
    return items[start : start + size + (index < extra)]


class Processes:
    """The processes of a run; ``Processes()`` is the single process of a plain run."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, owns_group: bool = False):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.owns_group = owns_group

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Processes:
        """The processes torchrun started (``WORLD_SIZE`` > 1), with the process group set up;
        otherwise the single process."""
        env = World.from_env()  # plain whole numbers, checked, as extraction reads them
        world, rank, local_rank = env.size, env.rank, env.local_rank
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise VprkitError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        owns = not dist.is_initialized()
        if owns:
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend, timeout=TIMEOUT)
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise VprkitError(
                f"the process group has {dist.get_world_size()} processes (rank "
                f"{dist.get_rank()}), the environment says {world} (rank {rank})"
            )
        return cls(rank, world, local_rank, owns)

    def close(self) -> None:
        if self.world > 1 and self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    # ---------------------------------------------------------------- devices and the model
    def pin(self, device: torch.device) -> torch.device:
        """The device of this process: cuda:LOCAL_RANK when training on GPUs."""
        if self.world == 1 or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise VprkitError(
                f"process with LOCAL_RANK {self.local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPU(s): start at most one process per GPU"
            )
        device = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(device)
        return device

    def synchronize_batchnorm(self, model: nn.Module, device: torch.device) -> nn.Module:
        """BatchNorm over the whole batch of all processes (in place; parameters kept)."""
        if self.world == 1:
            return model
        if device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return _to_global_batchnorm(model, dist.new_group(backend="gloo"))

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around the model (which it syncs to process 0's weights)."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)

    # ---------------------------------------------------------------- splitting the work
    def share(self, items):
        """This process's contiguous share of a sequence (all of it for a single process)."""
        return items if self.world == 1 else _share(items, self.world, self.rank)

    def batch_slice(self, n: int, batch_size: int) -> tuple[int, int]:
        """Rows [start, stop) of n for this process, in whole batches of ``batch_size``, so that
        each batch is the one a single process forms."""
        batches = _share(range(-(-n // batch_size)), self.world, self.rank)
        if len(batches) == 0:
            return n, n
        return batches[0] * batch_size, min((batches[-1] + 1) * batch_size, n)

    def gather_rows(
        self, local: np.ndarray, n: int, batch_size: int, to_all: bool = True
    ) -> np.ndarray | None:
        """Concatenate the processes' ``batch_slice`` rows in order (None on processes other
        than 0 when not ``to_all``)."""
        slices = [Processes(r, self.world).batch_slice(n, batch_size) for r in range(self.world)]
        counts = [stop - start for start, stop in slices]
        most = max(counts)
        buf = torch.zeros((most, local.shape[1]), dtype=torch.float32)
        buf[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32))
        if to_all:
            parts = [torch.empty_like(buf) for _ in range(self.world)]
            dist.all_gather(parts, buf)
        else:
            gathered = [torch.empty_like(buf) for _ in range(self.world)] if self.main else None
            dist.gather(buf, gathered, dst=0)
            if gathered is None:
                return None
            parts = gathered
        return np.concatenate([p[:c].numpy() for p, c in zip(parts, counts, strict=True)])

    # ---------------------------------------------------------------- agreement
    def agree(self, error: BaseException | None) -> None:
        """Every process learns whether any met an error: the one that did re-raises it, the
        others raise a VprkitError that names it, so none waits for the others forever."""
        if self.world == 1:
            if error is not None:
                raise error
            return
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int64)
        dist.all_reduce(flag)
        if int(flag) == 0:
            return
        messages: list = [None] * self.world
        dist.all_gather_object(messages, None if error is None else str(error) or repr(error))
        if error is not None:
            raise error
        rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
        raise VprkitError(f"process {rank} of {self.world} stopped: {message}")

    def each(self, fn):
        """fn() on every process, which then agree on errors."""
        if self.world == 1:
            return fn()
        try:
            value, error = fn(), None
        except Exception as err:  # every kind: the others must not wait for this process
            value, error = None, err
        self.agree(error)
        return value

    def on_main(self, fn):
        """fn() on process 0 only; its result (or its error) reaches every process."""
        if self.world == 1:
            return fn()
        value, error = None, None
        if self.main:
            try:
                value = fn()
            except Exception as err:
                error = err
        self.agree(error)
        return self.broadcast(value)

    def guarded(self, iterable):
        """Iterate in step; an error in one process's iteration stops all of them."""
        if self.world == 1:
            yield from iterable
            return
        iterator = iter(iterable)
        while True:
            error = None
            try:
                item = next(iterator, _END)
            except Exception as err:
                item, error = None, err
            self.agree(error)
            if item is _END:
                return
            yield item

    # ---------------------------------------------------------------- communication
    def broadcast(self, value):
        """Process 0's value on every process."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list | None:
        """The values of every process, on process 0 (None elsewhere)."""
        if self.world == 1:
            return [value]
        out = [None] * self.world if self.main else None
        dist.gather_object(value, out, dst=0)
        return out

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(total)
        return float(total)
