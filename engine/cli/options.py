"""Options shared by the commands that write traces."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

StoreDir = Annotated[Path, typer.Option("--store", help="Store directory (created if missing).")]
DbUrl = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy URL of the index (default: SQLite in store).")
]
