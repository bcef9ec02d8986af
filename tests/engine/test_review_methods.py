"""Hostile review of the method layer's commands (analyse, record --metrics, sanity-check,
store gc-uploads / reindex): bad input is one line, exit 2, and the store byte-identical."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The real command in a process of its own (tracebacks would reach stderr)."""
    run = [sys.executable, "-m", "engine.cli", *args]
    return subprocess.run(run, capture_output=True, text=True, cwd=REPO, check=False)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_refusal(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.fixture
def empty_store(tmp_path) -> Path:
    from store import open_store

    path = tmp_path / "store"
    open_store(path, writable=True).close()
    return path


@pytest.mark.parametrize("days", ["inf"])
def test_gc_uploads_refuses_an_infinite_age_in_one_line(empty_store, days):
    # inf passed min=0 and overflowed datetime.timedelta: a 34-line traceback, exit 1
    before = _hashes(empty_store)
    _one_line_refusal(
        _cli("store", "gc-uploads", "--store", str(empty_store), "--older-than-days", days)
    )
    assert _hashes(empty_store) == before
