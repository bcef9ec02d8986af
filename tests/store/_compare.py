"""Exact comparison of dataclass trees (traces read back against the traces written)."""

from __future__ import annotations

import dataclasses

import numpy as np


def assert_same(a: object, b: object, where: str = "trace") -> None:
    """Dataclass trees equal: arrays exactly and with their dtype, lists item by item."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == np.asarray(b).dtype, where
        assert np.array_equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
