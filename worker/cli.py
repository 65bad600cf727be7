"""The ``dockhand`` command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="dockhand: run Docker through RabbitMQ.", no_args_is_help=True, add_completion=False)


@app.command()
def run() -> None:
    """Run the worker (configured by DOCKHAND_* environment variables)."""
    from .settings import Settings

    settings = Settings()
    from .logs import setup_logging

    setup_logging(settings.log_level, settings.log_json)
    from .app import create_app

    asyncio.run(create_app(settings).run())


@app.command()
def schema(
    directory: Annotated[Path | None, typer.Argument(help="Where to write (default: schemas/json).")] = None,
) -> None:
    """Write the JSON Schema of every message kind."""
    from schemas.export import SCHEMA_DIR, write

    for path in write(directory or SCHEMA_DIR):
        typer.echo(path)


def main() -> None:
    app()
