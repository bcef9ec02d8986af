"""Colour maps for heatmaps, without matplotlib.

Each map is a handful of anchor colours interpolated linearly into a 256-entry lookup table;
that is indistinguishable from the reference maps at overlay sizes and keeps the dashboard's
dependencies to Pillow and numpy.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_ANCHORS: dict[str, list[tuple[int, int, int]]] = {
    "inferno": [
        (0, 0, 4),
        (40, 11, 84),
        (101, 21, 110),
        (159, 42, 99),
        (212, 72, 66),
        (245, 125, 21),
        (250, 193, 39),
        (252, 255, 164),
    ],
    "viridis": [
        (68, 1, 84),
        (70, 50, 126),
        (54, 92, 141),
        (39, 127, 142),
        (31, 161, 135),
        (74, 193, 109),
        (160, 218, 57),
        (253, 231, 37),
    ],
    "jet": [(0, 0, 131), (0, 60, 255), (0, 255, 255), (255, 255, 0), (255, 60, 0), (128, 0, 0)],
    # Diverging: negative blue, zero white, positive red. Used for difference maps.
    "coolwarm": [(5, 48, 97), (67, 147, 195), (247, 247, 247), (214, 96, 77), (103, 0, 31)],
}

SEQUENTIAL = ("inferno", "viridis", "jet")
DIVERGING = "coolwarm"


@cache
def lut(name: str) -> np.ndarray:
    """The [256, 3] uint8 lookup table of a named colour map."""
    if name not in _ANCHORS:
        raise ValueError(f"unknown colour map {name!r}; choose one of {sorted(_ANCHORS)}")
    anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(anchors))
    x = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(x, positions, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(table).astype(np.uint8)


def apply(values: np.ndarray, name: str, vmin: float, vmax: float) -> np.ndarray:
    """Map ``values`` (any shape) to RGB uint8 (shape + [3]); NaN becomes the lowest colour."""
    span = vmax - vmin
    scaled = (np.asarray(values, dtype=np.float64) - vmin) / span if span > 0 else 0.0 * values
    index = np.clip(np.nan_to_num(scaled, nan=0.0) * 255.0, 0, 255).astype(np.uint8)
    return lut(name)[index]
