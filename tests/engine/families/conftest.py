"""Each family is built once per session into its own folder (seconds on a CPU)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.engine.families.builders import FAMILIES, Built, build_family

_built: dict[str, Built] = {}


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    """``build(name)``: the family built once; skipped where its processor needs a package."""

    def get(name: str) -> Built:
        missing = [m for m in FAMILIES[name].needs if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"{name}'s processor needs {', '.join(missing)} (not installed)")
        if name not in _built:
            _built[name] = build_family(name, tmp_path_factory.mktemp(name))
        return _built[name]

    return get
