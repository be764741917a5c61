"""Sharded extraction launched by ``torchrun`` or by a Slurm job array, merged when complete.

``run_extraction``: ``extract`` in one process; under torchrun (``WORLD_SIZE`` > 1) every
process extracts shard RANK of WORLD_SIZE (the slices and file names of
``vprkit.extract.shards``), on ``cuda:LOCAL_RANK`` where it runs on CUDA. The processes then
agree that every shard succeeded (an all-reduce of a flag over gloo: CPU tensors only, and a
long timeout, since shards may finish far apart) and process 0 merges the shards into
``output``, equal row for row to a one-process extraction, then removes them unless
``keep_shards``. An error in any process stops all of them with one message naming it; the
shards keep their committed rows, so the same command resumes them. A complete ``output`` is
handled as ``extract`` handles it: nothing to do, or refused where it was made differently.

``extract_shard_task``: one shard by itself, e.g. a task of a Slurm job array (``slurm_shard``
reads its shard from ``SLURM_ARRAY_TASK_ID``, ``_MIN`` and ``_COUNT``). Such tasks share no
barrier: merge them with ``vprkit merge``, or with ``merge_when_complete`` the task that finds
every shard complete merges them (``merge_if_complete``: the check and the merge hold a file lock,
so that of tasks finishing together exactly one merges).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch

from vprkit.descriptors.views import parse_views
from vprkit.devices import resolve_device
from vprkit.errors import ParameterError, VprkitError, shown
from vprkit.extract.options import ExtractOptions
from vprkit.extract.shards import check_shard_count, merge, shard_path
from vprkit.extract.split import extract
from vprkit.extract.world import World, env_int
from vprkit.models import ModelConfig
from vprkit.numbers import NumberError
from vprkit.progress import ProgressCallback, progress_callback
from vprkit.store import DescriptorFile, parse_scales

WAIT = timedelta(hours=24)  # how long a process that finished waits for the others
RESUME = "; the shards keep their finished rows: rerun the same command to resume"
SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")
T = TypeVar("T")
logger = logging.getLogger(__name__)


class ProcessFailed(VprkitError):
    """Raised in every process of a torchrun extraction when any of them failed.

    Attributes:
        ranks: the processes that failed.
        reported: process 0 has written the message to stderr already (``announce_failure``).
    """

    def __init__(self, message: str, ranks: list[int], reported: bool):
        super().__init__(message)
        self.ranks, self.reported = ranks, reported


def process_device(device: str, local_rank: int) -> torch.device:
    """The device of one torchrun process: ``cuda:LOCAL_RANK`` for ``auto`` and ``cuda`` where
    CUDA is available, else the device ``device`` names (``cpu``, ``cuda:N``)."""
    resolved = resolve_device(device)
    if resolved.type != "cuda" or device not in ("auto", "cuda"):
        return resolved
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise VprkitError(f"process with LOCAL_RANK {local_rank} but this machine has {count} "
                          "GPU(s): start at most one process per GPU, or give --device cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def slurm_shard(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(index from 0, count) of this Slurm job array task: task ID minus the array's first ID
    (divided by its step); the array must be an evenly spaced range such as ``--array=1-8``."""
    env = os.environ if environ is None else environ
    missing = [name for name in SLURM if not env.get(name)]
    if missing:
        raise VprkitError(f"--shard slurm needs a task of a Slurm job array (sbatch --array=0-N): "
                          f"{', '.join(missing)} not set")

    def number(name: str, default: str | None = None) -> int:
        try:
            return env_int(env, name, default)
        except NumberError:
            raise VprkitError(f"the SLURM_ARRAY_TASK_* variables are not integers: {name}="
                              f"{shown(repr(env.get(name)), 40)} (digits 0-9 only)") from None

    task, count, first = (number(name) for name in SLURM)
    check_shard_count(count, f"--shard slurm: SLURM_ARRAY_TASK_COUNT={count} (one shard a task)")
    step = number("SLURM_ARRAY_TASK_STEP", "1")
    last = number("SLURM_ARRAY_TASK_MAX", str(first + (count - 1) * step))
    if count < 1 or step < 1 or last != first + (count - 1) * step or not first <= task <= last \
            or (task - first) % step:
        raise VprkitError(f"--shard slurm needs an array of evenly spaced task IDs such as "
                          f"--array=0-7 (task {task}: {count} tasks from {first} to {last}, step "
                          f"{step})")
    return (task - first) // step, count


def complete_output(root: str | Path, output: str | Path, model_config: ModelConfig,
                    options: ExtractOptions, progress: ProgressCallback | None = None) -> bool:
    """Whether a complete ``output`` holds the extraction already (True: nothing to do); False
    where there is none (or ``options.overwrite``). One made differently is refused as
    ``extract`` refuses it, and one without some asked scales or views too (sharded runs do not
    extend a file: one process does)."""
    progress = progress_callback(progress)
    output = Path(output)
    if options.overwrite or not output.exists():
        return False
    with DescriptorFile(output) as f:
        have = {s: set(f.views((s,))) for s in f.scales}
    scales = parse_scales(",".join(map(str, options.scales)))
    views = parse_views(",".join(options.views))
    lacking = [f"scale {s}" for s in scales if s not in have]
    lacking += [f"view(s) {', '.join(v for v in views if v not in have[s])} at scale {s}"
                for s in scales if s in have and not set(views) <= have[s]]
    if lacking:
        raise ParameterError("overwrite", f"{output} exists without {'; '.join(lacking)}: add "
                             "them with one process (vprkit extract without --shard or torchrun "
                             "extends a file of the same model), choose another output, or pass "
                             "overwrite")
    # extract itself checks it was made the same way ("nothing to do") or refuses it
    extract(root, output, model_config, replace(options, shard=None), progress)
    return True


def merge_shards(output: str | Path, count: int, overwrite: bool = False,
                 keep_shards: bool = False, progress: ProgressCallback | None = None) -> Path:
    """Merge the ``count`` shards of ``output`` into it; then remove them unless ``keep_shards``."""
    progress = progress_callback(progress)
    output = Path(output)
    shards: list[str | Path] = [shard_path(output, i, count) for i in range(count)]
    unseen = [str(p) for p in shards if not Path(p).is_file()]
    if unseen:
        raise VprkitError(f"cannot merge into {output}: {', '.join(unseen)} not found here (on "
                          f"{socket.gethostname()}); every process must write to one shared folder")
    path = merge(shards, output, overwrite=overwrite, progress=progress)
    if not keep_shards:
        for shard in shards:
            Path(shard).unlink()
        logger.info(f"removed the {count} shard files (--keep-shards keeps them)")
    return path


class _Group:
    """The gloo process group through which the processes agree (CPU tensors: no GPU memory)."""

    def __init__(self, world: World, timeout: timedelta, announce: bool):
        import torch.distributed as dist

        if not dist.is_available():
            raise VprkitError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        self.dist, self.world, self.announce = dist, world, announce
        self.owned = not dist.is_initialized()
        self.group: Any = None  # None: the default group
        if self.owned:
            try:
                dist.init_process_group("gloo", timeout=timeout)
            except (RuntimeError, ValueError) as err:  # no MASTER_ADDR, an unreachable host...
                raise VprkitError(f"cannot start the process group (gloo): {err}") from None
        elif dist.get_world_size() != world.size or dist.get_rank() != world.rank:
            raise VprkitError(f"the process group has {dist.get_world_size()} processes, the "
                              f"environment says {world.size}")
        else:
            self.group = dist.new_group(backend="gloo", timeout=timeout)

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()

    def run(self, fn: Callable[[], T], only_main: bool = False, hint: str = "") -> T | None:
        """fn() in every process (process 0 only with ``only_main``); any error stops them all."""
        value, error = None, None
        if self.world.rank == 0 or not only_main:
            try:
                value = fn()
            except Exception as err:  # every kind: the others must not wait for this process
                error = err
        flag = torch.tensor([int(error is not None)])
        self.dist.all_reduce(flag, group=self.group)
        if int(flag):
            self._fail(error, only_main, hint)
        return value

    def broadcast(self, value: T) -> T:
        box = [value]
        self.dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def _fail(self, error: Exception | None, only_main: bool, hint: str) -> NoReturn:
        reports: list[Any] = [None] * self.world.size
        why = None if error is None else _reason(error)
        self.dist.all_gather_object(reports, (socket.gethostname(), why), group=self.group)
        message, ranks = _failure_message(reports, only_main, hint)
        if self.announce and self.world.rank == 0:
            logger.error(f"Error: {message}", extra={"error": error})  # (the CLI's line)
        # the line is written before any process exits (torchrun then stops the others)
        self.dist.barrier(group=self.group)
        raise ProcessFailed(message, ranks, self.announce) from error


def _reason(err: Exception) -> str:
    if isinstance(err, VprkitError):
        return str(err)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f" ({err.filename})" if err.filename else "")
    return f"{type(err).__name__}: {err}"


def _failure_message(reports: list[tuple[str, str | None]], only_main: bool,
                     hint: str) -> tuple[str, list[int]]:
    """One line from every process's (host, reason or None); the ranks that failed."""
    failed = [(rank, host, why) for rank, (host, why) in enumerate(reports) if why is not None]
    ranks = [rank for rank, _, _ in failed]
    rank, host, why = failed[0]
    if only_main or (len(failed) == len(reports) and len({w for _, _, w in failed}) == 1):
        return why, ranks  # process 0's own step, or the same error everywhere (an option)
    where = f" (on {host})" if len({h for h, _ in reports}) > 1 else ""
    others = f" (process(es) {', '.join(map(str, ranks[1:]))} too)" if len(failed) > 1 else ""
    return f"process {rank}{where} of {len(reports)} failed: {why}{others}{hint}", ranks


def run_extraction(root: str | Path, output: str | Path, model_config: ModelConfig,
                   options: ExtractOptions | None = None, *, keep_shards: bool = False,
                   progress: ProgressCallback | None = None, timeout: timedelta = WAIT,
                   announce_failure: bool = False) -> Path:
    """Extract in this process (``extract``), or in the processes torchrun started, then merge.

    Every process calls this with the same arguments (``options.shard`` must be None: the
    shard is the rank) and gets ``output``. Process 0 reports progress (of its own shard) to
    ``progress`` (None: silent), checks an existing ``output`` first (``complete_output``) and
    merges. With ``announce_failure`` process 0 logs the failure's line (``vprkit`` logger,
    ERROR) before any process raises.

    Raises:
        ProcessFailed: in every process, where any failed; with ``announce_failure`` process 0
            has logged its one line (``Error: ...``) before any process raises.
        VprkitError: as ``extract``, before the processes meet (a bad environment).
    """
    progress = progress_callback(progress)
    options = options or ExtractOptions()
    world = World.from_env()
    if world.size == 1:
        return extract(root, output, model_config, options, progress)
    if options.shard is not None:
        raise VprkitError("under torchrun every process extracts the shard of its rank: give no "
                          "--shard")
    root, output = Path(root), Path(output)
    main = world.rank == 0
    group = _Group(world, timeout, announce_failure)
    try:
        device = group.run(lambda: process_device(options.device, world.local_rank))
        mine = replace(options, device=str(device), shard=(world.rank, world.size))
        done = group.run(lambda: complete_output(root, output, model_config, mine, progress),
                         only_main=True)
        if group.broadcast(done):
            return output
        group.run(lambda: extract(root, output, model_config, mine, progress if main else None),
                  hint=RESUME)
        group.run(lambda: merge_shards(output, world.size, options.overwrite, keep_shards,
                                       progress), only_main=True)
        return output
    finally:
        group.close()


def extract_distributed(*args: Any, **kwargs: Any) -> Path:
    """Deprecated name of ``run_extraction`` (removed in the release after next)."""
    warnings.warn("vprkit.extract.distributed.extract_distributed is deprecated; use "
                  "run_extraction", DeprecationWarning, stacklevel=2)
    return run_extraction(*args, **kwargs)


@contextmanager
def _waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on file ``path``, waiting for the process holding it."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o666)
        except OSError as err:
            raise VprkitError(f"cannot lock {path}: {err.strerror} (a link there is refused)") \
                from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise VprkitError(f"{path} is not a regular file; remove it")
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.lexists(path) and os.fstat(fd).st_ino == os.lstat(path).st_ino:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed that file meanwhile: lock the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _holds(path: Path, count: int, scales: tuple[int, ...], views: tuple[str, ...]) -> bool:
    if not path.is_file():
        return False
    with DescriptorFile(path) as f:
        return (f.dataset.get("shard", {}).get("count") == count
                and all(s in f.scales and set(views) <= set(f.views((s,))) for s in scales))


def merge_if_complete(output: str | Path, count: int, options: ExtractOptions,
                      keep_shards: bool = False,
                      progress: ProgressCallback | None = None) -> Path | None:
    """Merge the ``count`` shards of ``output`` if each holds ``options``' scales and views and
    nobody merged them yet: ``output``, or None while shards are unfinished. The check and the
    merge hold ``<output>.merge.lock``, so that of tasks finishing together exactly one merges
    (the file system's locks must work across machines, as vprkit's writer lock needs)."""
    progress = progress_callback(progress)
    output = Path(output)
    scales = parse_scales(",".join(map(str, options.scales)))
    views = parse_views(",".join(options.views))
    check_shard_count(count, f"cannot merge {count} shards into {output}")
    with _waiting_lock(output.with_name(output.name + ".merge.lock")):
        if output.exists():
            return output  # another task merged them
        unfinished = next((i for i in range(count)  # the first one is enough to wait
                           if not _holds(shard_path(output, i, count), count, scales, views)), None)
        if unfinished is not None:
            logger.info(f"shard {unfinished} of {count} (at least) unfinished: the task that "
                        "finishes the last one merges")
            return None
        return merge_shards(output, count, keep_shards=keep_shards, progress=progress)


def extract_shard_task(root: str | Path, output: str | Path, model_config: ModelConfig,
                       options: ExtractOptions, *, merge_when_complete: bool = False,
                       keep_shards: bool = False,
                       progress: ProgressCallback | None = None) -> Path:
    """Shard ``options.shard`` as one task of a job array (or a process started by hand): the
    shard's path, or ``output`` where it holds the extraction already or this task merged it.

    A complete ``output`` is handled first (``complete_output``). With ``merge_when_complete``
    the task that finds every shard complete merges them (``merge_if_complete``); this cannot
    tell shards of an earlier run from this run's under ``options.overwrite``, so it refuses it.
    """
    if options.shard is None:
        raise VprkitError("extract_shard_task needs options.shard = (index, count)")
    if merge_when_complete and options.overwrite:
        raise ParameterError("merge_when_complete", "merge_when_complete cannot tell the shards "
                             "of an earlier run from this run's under overwrite: remove the old "
                             "output and shards instead", "overwrite")
    progress = progress_callback(progress)
    output = Path(output)
    if complete_output(root, output, model_config, options, progress):
        return output
    path = extract(root, output, model_config, options, progress)
    index, count = options.shard
    if merge_when_complete:
        return merge_if_complete(output, count, options, keep_shards, progress) or path
    logger.info(f"shard {index} of {count} done; once all are: vprkit merge "
                f"{shard_path(output, 0, count).name.replace('shard0', 'shard*')} -o {output}")
    return path
