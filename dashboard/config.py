"""Where the dashboard finds its store.

``serve`` passes ``--store DIR [--db URL]`` after Streamlit's ``--``; tests and other hosts set
the environment variables instead. Command-line arguments win.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

STORE_ENV = "LVLM_INTERPRET_STORE"
DB_ENV = "LVLM_INTERPRET_DB"


@dataclass(frozen=True)
class StoreConfig:
    """A store location; frozen and hashable so it can key Streamlit caches."""

    directory: Path
    db_url: str | None = None


def resolve(argv: Sequence[str], environ: Mapping[str, str]) -> StoreConfig | None:
    """The configured store, or ``None`` when neither arguments nor environment name one."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store")
    parser.add_argument("--db")
    args, _ = parser.parse_known_args(list(argv))
    directory = args.store or environ.get(STORE_ENV)
    if not directory:
        return None
    return StoreConfig(Path(directory), args.db or environ.get(DB_ENV) or None)
