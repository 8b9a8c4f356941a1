"""``lxctl``: one tool for SRE teams that knows the platform's topics and projections.

Output is plain text that scripts can read (``--json`` where it helps); long work shows
a progress bar with rate and ETA on stderr.
"""

from __future__ import annotations

import sys
from typing import TextIO, cast

import structlog
import typer
from lx_platform.logging import configure_logging

from lx_sre import deadletters, projections, replay, topics

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(projections.app, name="projection")
app.add_typer(deadletters.app, name="dlq")
app.add_typer(topics.app, name="topics")
app.command("lag")(topics.lag)
app.command("replay")(replay.replay)


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (a test runner swaps it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@app.callback()
def _quiet_logs() -> None:
    # stdout carries the command's output (tables, --json): logs go to stderr, and only
    # warnings and errors, so a migration or a created database is not chatter.
    configure_logging("lxctl", "WARNING", json_output=False)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _Stderr())))


def main() -> None:
    app()
