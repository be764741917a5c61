"""Shared rich consoles and progress bar (on stderr, so stdout stays clean for JSON), and
``inert``: text from files, names and stored attributes shown as it is, never interpreted.

Both consoles print strings literally: no rich markup (a ``[`` in a folder name is just a
bracket), no highlighting, and control or escape characters shown escaped (``\\x1b``), so a
crafted file name cannot restyle, rewrite or hide what the terminal shows. Deliberate styling
goes through ``styled``.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from vprkit.errors import shown

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
