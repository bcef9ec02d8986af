"""The ``lvlm-interpret`` command: record traces, maintain the store, serve the dashboard.

Sub-command modules import torch and transformers lazily, so ``--help``, ``ls`` and ``serve``
start fast and the dashboard process never loads a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.cli import demo, record
from store.cli import app as store_app
from store.cli import ls as store_ls

app = typer.Typer(
    name="lvlm-interpret",
    help="Record, store and explore interpretability traces of vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("record")(record.record)
app.add_typer(demo.app, name="demo")
app.add_typer(store_app, name="store")
app.command("ls", help="List stored traces (same as `store ls`).")(store_ls)


@app.command()
def serve(
    store: Annotated[Path, typer.Option("--store", help="Store directory.")] = Path("traces"),
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL of the index.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8501,
) -> None:
    """Start the dashboard on a store (no model is loaded)."""
    from dashboard.serve import serve as run_dashboard

    raise typer.Exit(run_dashboard(store, db, host=host, port=port))


def main() -> None:
    app()
