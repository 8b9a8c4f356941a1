"""``lxctl``: one tool for SRE teams that knows the platform's topics and projections.

Output is plain text that scripts can read (``--json`` where it helps); long work shows
a progress bar with rate and ETA on stderr.
"""

from __future__ import annotations

import typer

from lx_sre import deadletters, projections, replay, topics

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(projections.app, name="projection")
app.add_typer(deadletters.app, name="dlq")
app.add_typer(topics.app, name="topics")
app.command("lag")(topics.lag)
app.command("replay")(replay.replay)


def main() -> None:
    app()
