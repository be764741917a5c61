"""What a run writes as it goes: ``train.log`` and ``metrics.jsonl`` (process 0), appended line
by line, and nothing on the other processes."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from vprkit.files import open_append, refuse_link

logger = logging.getLogger(__name__)


class RunLog:
    """The run folder's ``train.log`` and ``metrics.jsonl`` (process 0), appended line by line."""

    def __init__(self, run_dir: Path):
        self.log = run_dir / "train.log"
        self.metrics = run_dir / "metrics.jsonl"

    def say(self, text: str) -> None:
        """Append ``text`` to ``train.log`` with a time stamp, and log it (``vprkit`` logger)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open_append(self.log) as f:
            f.write(f"{stamp} {text}\n")
        logger.info(text)

    def metric(self, **row) -> None:
        with open_append(self.metrics) as f:
            f.write(json.dumps(row) + "\n")


def _drop_partial_line(path: Path) -> None:
    """A process killed while appending a line leaves half of it: cut it before appending more."""
    refuse_link(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


class Log(Protocol):
    """What the training loop writes to: the run folder's log (process 0) or nothing."""

    def say(self, text: str) -> None: ...

    def metric(self, **row) -> None: ...


class _Silent:
    """The log of processes other than 0: they write and print nothing."""

    def say(self, text: str) -> None:
        pass

    def metric(self, **row) -> None:
        pass
