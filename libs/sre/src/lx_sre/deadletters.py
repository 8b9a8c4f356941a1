"""Placeholder: being written."""

import typer

app = typer.Typer()
