"""The processes torchrun started, read from its environment variables (no torch needed).

``World.from_env()`` reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` as plain whole numbers
(``vprkit.numbers``), at most ``MAX_SHARDS`` processes; extraction and training both use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from vprkit.errors import VprkitError
from vprkit.extract.shards import check_shard_count
from vprkit.numbers import parse_int


@dataclass(frozen=True)
class World:
    """The processes torchrun started: this one's ``rank``, their ``size``, its ``local_rank``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> World:
        """From torchrun's ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; one process without them.

        Plain whole numbers only (``vprkit.numbers``), and at most ``MAX_SHARDS`` processes
        (each extracts a shard)."""
        env = os.environ if environ is None else environ
        size = env_int(env, "WORLD_SIZE", "1")
        if size <= 1:
            return cls()
        check_shard_count(size, f"WORLD_SIZE={size} (one shard a process)")
        if not env.get("RANK"):
            raise VprkitError("WORLD_SIZE > 1 needs integer RANK and LOCAL_RANK, as torchrun sets them")
        rank = env_int(env, "RANK")
        local_rank = env_int(env, "LOCAL_RANK", str(rank))
        if not 0 <= rank < size or local_rank < 0:
            raise VprkitError(f"RANK {rank} is not one of the WORLD_SIZE {size} processes")
        return cls(rank, size, local_rank)


def env_int(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    """The whole number in environment variable ``name`` (``default`` where unset or empty);
    one line naming the variable where it is anything else."""
    text = env.get(name) or default
    if text is None:
        raise VprkitError(f"{name} is not set")
    return parse_int(text, f"environment variable {name}")
