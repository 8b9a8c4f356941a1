"""Projection rebuild and verify."""

import typer

app = typer.Typer(no_args_is_help=True, help="Rebuild or verify a projection from the log.")
