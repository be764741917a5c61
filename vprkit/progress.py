"""How the library reports, and how the CLI shows it; ``inert``: text from files, names and
stored attributes shown as it is, never interpreted.

The library speaks Python; only the CLI prints:

- **Messages** go to ``logging``: each module logs to ``logging.getLogger(__name__)``, a child
  of the ``vprkit`` logger (summary lines such as ``wrote d.h5: ...`` at INFO, notes that are
  warnings at WARNING). A Python caller sees them by configuring logging, e.g.
  ``logging.basicConfig(level=logging.INFO)``; the CLI renders them on stderr
  (``show_logs``, ``ConsoleHandler``).
- **Progress** goes to a callback: long functions take ``progress: ProgressCallback | None``
  (None: silent), a callable that receives a ``ProgressEvent`` when a task starts, advances and
  is done. ``ProgressRenderer`` is the CLI's: a rich bar when stderr is a terminal, otherwise a
  log line at most every 10 % or 30 s (``extract: 1200/5000 (24%), 3.1 img/s, ETA 20 min``).
  ``progress=False`` is None; ``progress=True`` still works until vprkit 0.3, with a
  DeprecationWarning (``ProgressRenderer()``).

The consoles (stderr for messages and bars, stdout for tables) print strings literally: no rich
markup (a ``[`` in a folder name is just a bracket), no highlighting, and control or escape
characters shown escaped (``\\x1b``), so a crafted file name cannot restyle, rewrite or hide what
the terminal shows. Deliberate styling goes through ``styled``.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from vprkit.errors import ParameterError, shown

logger = logging.getLogger(__name__)

MAX_SHOWN = 2000  # characters of one text shown at most (the rest is counted, not printed)


def inert(text: object, limit: int = MAX_SHOWN) -> str:
    """``text`` safe to show on a terminal (``errors.shown``), cut to ``limit`` characters."""
    return shown(text, limit)


def styled(label: str, style: str, text: object = "") -> Text:
    """``label`` in ``style`` followed by ``text`` shown as it is (see ``inert``)."""
    return Text.assemble((label, style), inert(text))


class InertConsole(Console):
    """A rich Console whose ``print`` shows strings literally (see the module docstring)."""

    def print(self, *objects, **kwargs) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("highlight", False)
        super().print(*(Text(inert(o)) if isinstance(o, str) else o for o in objects), **kwargs)


console = InertConsole(stderr=True)  # progress, messages
# Tables of results go to stdout; when it is a file or a pipe, don't wrap them at 80 columns.
results_console = InertConsole(width=None if sys.stdout.isatty() else 160)


def progress_bar(enabled: bool = True) -> Progress:
    """The rich progress bar of long work, on stderr (``enabled=False``: shown nowhere)."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


@dataclass(frozen=True)
class ProgressEvent:
    """What a progress callback receives.

    Attributes:
        kind: ``"start"`` (once per task), ``"advance"`` (work done, or a new ``task`` text) or
            ``"done"`` (once, also when the work stopped on an error).
        task: what is being done, e.g. ``"extract scales 1+2"``, ``"combine"``.
        total: units of work of the task (images, rows, steps), None where unknown.
        completed: units done so far.
        advance: units done since the last event.
        status: a short note on the work, e.g. ``"3.1 img/s"`` or ``"loss 0.1234"``.
        id: tells apart tasks that overlap.
    """

    kind: Literal["start", "advance", "done"]
    task: str
    total: int | None
    completed: int = 0
    advance: int = 0
    status: str = ""
    id: int = 0


ProgressCallback = Callable[[ProgressEvent], None]
_ids = itertools.count(1)


def progress_callback(
    progress: ProgressCallback | bool | None, stacklevel: int = 2
) -> ProgressCallback | None:
    """``progress`` as a callback or None. The booleans of vprkit 0.2: False is None (silent);
    True, the library drawing on the terminal itself, is ``ProgressRenderer()`` with a
    DeprecationWarning (removed in 0.3).

    Args:
        progress: a callable taking a ``ProgressEvent``, None or False (silent), or True.
        stacklevel: where the warning points, as for ``warnings.warn`` (2: the caller of the
            function that calls this one).

    Returns:
        The callback, or None.
    """
    if progress is False:
        return None
    if progress is True:
        warnings.warn(
            "progress=True is deprecated and will be removed in vprkit 0.3; pass a "
            "callback such as vprkit.progress.ProgressRenderer(), or None",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        return ProgressRenderer()
    if progress is not None and not callable(progress):
        raise ParameterError(
            "progress",
            f"progress must be a callable taking a ProgressEvent, or None; got {type(progress).__name__}",
        )
    return progress


class ProgressTask:
    """One task's events: ``start`` on entering, ``done`` on leaving (also on an error).

    ``progress_task(progress, "combine", total)`` makes one; the library calls ``advance``."""

    def __init__(self, callback: ProgressCallback | None, task: str, total: int | None):
        self.callback = callback
        self.task = task
        self.total = total
        self.completed = 0
        self.status = ""
        self.id = next(_ids)

    def _emit(self, kind: Literal["start", "advance", "done"], advance: int = 0) -> None:
        if self.callback is not None:
            self.callback(
                ProgressEvent(kind, self.task, self.total, self.completed, advance, self.status, self.id)
            )

    def __enter__(self) -> ProgressTask:
        self._emit("start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._emit("done")

    def advance(self, n: int = 1, status: str | None = None) -> None:
        """``n`` more units done; ``status``: a new short note (a rate, a loss)."""
        self.completed += n
        if status is not None:
            self.status = status
        self._emit("advance", n)

    def describe(self, task: str) -> None:
        """Name what is being done anew (e.g. the scales left)."""
        self.task = task
        self._emit("advance")


def progress_task(progress: ProgressCallback | bool | None, task: str, total: int | None) -> ProgressTask:
    """A ``ProgressTask`` reporting to ``progress`` (None: to nobody)."""
    return ProgressTask(progress_callback(progress, stacklevel=3), task, total)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class _Logged:
    """A task shown as log lines: when it last had one, and at what fraction."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.step = 0  # tenths of the total reached at the last line


class ProgressRenderer:
    """The CLI's progress callback: a rich bar on stderr when it is a terminal; otherwise a log
    line (``vprkit.progress`` logger, INFO) when a task starts, at most every 10 % of it or 30 s,
    and when it is done, so that long work is never silent in logs.

    Args:
        live: a bar (True) or log lines (False); None: a bar when stderr is a terminal.
        seconds: the longest time between two log lines of a task that advances.
    """

    def __init__(self, live: bool | None = None, seconds: float = 30.0):
        self.live = live
        self.seconds = seconds
        self._bar: Progress | None = None
        self._bars: dict[int, TaskID] = {}
        self._logged: dict[int, _Logged] = {}

    def __call__(self, event: ProgressEvent) -> None:
        live = console.is_terminal if self.live is None else self.live
        if live or event.id in self._bars:
            self._show(event)
        else:
            self._log(event)

    def _show(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            if self._bar is None:
                self._bar = progress_bar()
                self._bar.start()
            self._bars[event.id] = self._bar.add_task(
                event.task, total=event.total, completed=event.completed, rate=event.status
            )
            return
        task = self._bars.get(event.id)
        if self._bar is None or task is None:
            return
        self._bar.update(task, advance=event.advance, description=event.task, rate=event.status)
        if event.kind == "done":
            del self._bars[event.id]
            if not self._bars:
                self._bar.stop()
                self._bar = None

    def _log(self, event: ProgressEvent) -> None:
        state = self._logged.get(event.id)
        if event.kind == "start":
            self._logged[event.id] = _Logged()
            of = f", {event.total} to do" if event.total is not None else ""
            logger.info(f"{event.task}: started{of}")
            return
        if state is None:
            return
        now = time.monotonic()
        elapsed = now - state.started
        done = f"{event.completed}/{event.total}" if event.total else f"{event.completed}"
        if event.kind == "done":
            del self._logged[event.id]
            logger.info(f"{event.task}: {done} done in {_duration(elapsed)}")
            return
        step = event.completed * 10 // event.total if event.total else 0
        if step <= state.step and now - state.last < self.seconds:
            return
        state.step, state.last = max(step, state.step), now
        parts = [done]
        if event.total:
            parts[0] += f" ({100 * event.completed // event.total}%)"
        parts.append(event.status or f"{event.completed / max(elapsed, 1e-9):.1f}/s")
        if event.total and event.completed:
            left = elapsed * (event.total - event.completed) / event.completed
            parts.append(f"ETA {_duration(left)}")
        logger.info(f"{event.task}: {', '.join(parts)}")


class ConsoleHandler(logging.Handler):
    """Shows log records on stderr as the CLI's lines: the message shown as it is (``inert``),
    unwrapped, a leading ``wrote`` in green; rich styles only on a terminal.

    Args:
        text: the line of a record (None: its message).
    """

    def __init__(self, text: Callable[[logging.LogRecord], str] | None = None):
        super().__init__()
        self.text = text or logging.LogRecord.getMessage

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.text(record)
            if text.startswith("wrote "):
                console.print(styled("wrote", "green", text[len("wrote") :]), soft_wrap=True)
            else:
                console.print(text, soft_wrap=True)
        except Exception:  # noqa: BLE001  (logging's rule: a broken handler never raises)
            self.handleError(record)


def show_logs(
    level: int = logging.INFO, text: Callable[[logging.LogRecord], str] | None = None
) -> Callable[[], None]:
    """Show the ``vprkit`` logger's records from ``level`` up on stderr (the CLI's setting).

    Args:
        level: the least level shown.
        text: the line of a record (None: its message; see ``ConsoleHandler``).

    Returns:
        A function that undoes it (removes the handler and restores the level).
    """
    root = logging.getLogger("vprkit")
    before = root.level
    handler = ConsoleHandler(text)
    root.addHandler(handler)
    root.setLevel(level)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(before)

    return undo
