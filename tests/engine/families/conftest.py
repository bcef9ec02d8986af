"""Each family is built once per session into its own folder (seconds on a CPU)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image, ImageDraw

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


def noise_image(height: int = 40, width: int = 56, seed: int = 0) -> Image.Image:
    """A random RGB image, wider than tall (so tiled families pick a non-square canvas)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def painted(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``image`` with a red square over ``box`` (x0, y0, x1, y1, inclusive)."""
    copy = image.copy()
    ImageDraw.Draw(copy).rectangle(box, fill=(255, 0, 0))
    return copy
