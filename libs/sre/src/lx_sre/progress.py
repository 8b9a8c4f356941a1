"""The progress bar of lxctl's long work: rate and ETA, on stderr, for people only."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Records per second (rich's own speed columns speak bytes)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:>9,.0f} rec/s" if task.speed else "        - rec/s")


def progress_bar() -> Progress:
    """Shown on stderr only to a person at a terminal: scripts read stdout undisturbed."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
    )
