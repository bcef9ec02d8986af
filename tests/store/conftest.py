"""Fixtures for the store tests: small synthetic traces and a fresh store in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from store import Trace, TraceStore, open_store
from store.synthetic import make_synthetic_trace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_trace() -> Callable[..., Trace]:
    """Small, fast traces; keyword arguments go to make_synthetic_trace."""

    def make(seed: int = 0, **kwargs) -> Trace:
        shape = dict(num_layers=3, num_heads=4, prompt_len=40, answer_len=6, grid=(4, 5))
        return make_synthetic_trace(**{**shape, **kwargs}, seed=seed)

    return make


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_dir: Path) -> Iterator[TraceStore]:
    with open_store(store_dir, writable=True) as st:
        yield st
