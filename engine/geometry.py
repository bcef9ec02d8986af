"""Build a trace's :class:`~store.ImageGeometry` one tile at a time (what adapters call).

An adapter knows its family's packing (tiles, merges, pixel shuffle, pooling); this builder
keeps the bookkeeping every family shares: patch numbering tile by tile, patch boxes in
original-image pixels, the sparse weighted token -> patch map, the vision sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from engine.inputs import ImageInput
from store.schema import ImageGeometry, PatchMap, SourceImage, Tile

DISPLAY_SIDE = 1024  # longest side of the copy of each image a trace keeps for display

Box = tuple[float, float, float, float]


def display_pixels(image: Image.Image, longest: int = DISPLAY_SIDE) -> np.ndarray:
    """The image as uint8 [h, w, 3], downscaled so its longest side is at most ``longest``."""
    scale = longest / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resized_box(size: tuple[int, int], placed: Box, cell: Box) -> Box:
    """``cell`` (canvas pixels) in original pixels, where the image of ``size`` (width,
    height) was resized into the box ``placed`` of the canvas (padding around it). The answer
    extends past the image where ``cell`` is padding.
    """
    px0, py0, px1, py1 = placed
    sx, sy = (px1 - px0) / size[0], (py1 - py0) / size[1]
    x0, y0, x1, y1 = cell
    return ((x0 - px0) / sx, (y0 - py0) / sy, (x1 - px0) / sx, (y1 - py0) / sy)


class GeometryBuilder:
    """Accumulates tiles, patches, token reads and vision sequences; :meth:`build` freezes."""

    def __init__(self, images: Sequence[ImageInput]) -> None:
        self.images = [
            SourceImage(im.name, im.sha256, im.size, display_pixels(im.image)) for im in images
        ]
        self.tiles: list[Tile] = []
        self._boxes: list[np.ndarray] = []
        self._offsets: list[int] = []
        self._rows: list[int] = []
        self._patches: list[int] = []
        self._weights: list[float] = []
        self._keys: tuple[list[int], list[int], list[float]] = ([], [], [])
        self.sequences: list[np.ndarray] = []

    @property
    def num_patches(self) -> int:
        return sum(t.rows * t.cols for t in self.tiles)

    def add_tile(self, image: int, box: Box, rows: int, cols: int, kind: str = "full") -> int:
        """A tile whose ``rows x cols`` patch grid evenly covers ``box`` (original pixels,
        possibly past the image's edge where the tile is padding); returns its index."""
        self._offsets.append(self.num_patches)
        self.tiles.append(Tile(image, tuple(float(v) for v in box), rows, cols, kind))
        x0, y0, x1, y1 = box
        r, c = np.divmod(np.arange(rows * cols), cols)
        w, h = (x1 - x0) / cols, (y1 - y0) / rows
        self._boxes.append(
            np.stack([x0 + c * w, y0 + r * h, x0 + (c + 1) * w, y0 + (r + 1) * h], axis=1)
        )
        return len(self.tiles) - 1

    def patch(self, tile: int, row: int | np.ndarray, col: int | np.ndarray) -> np.ndarray:
        """Global patch index of (row, col) on ``tile`` (arrays broadcast)."""
        t = self.tiles[tile]
        row, col = np.asarray(row), np.asarray(col)
        if np.any((row < 0) | (row >= t.rows) | (col < 0) | (col >= t.cols)):
            raise ValueError(f"patch outside tile {tile}'s {t.rows}x{t.cols} grid")
        return self._offsets[tile] + row * t.cols + col

    def tile_patches(self, tile: int) -> np.ndarray:
        """Every patch of ``tile`` in row-major order."""
        t = self.tiles[tile]
        return self._offsets[tile] + np.arange(t.rows * t.cols)

    def read(
        self,
        position: int,
        patches: Sequence[int] | np.ndarray,
        weights: Sequence[float] | None = None,
    ) -> None:
        """LM sequence ``position`` reads ``patches`` (equal shares unless ``weights``)."""
        self._add(self._rows, self._patches, self._weights, position, patches, weights)

    def read_key(
        self, key: int, patches: Sequence[int] | np.ndarray, weights: Sequence[float] | None = None
    ) -> None:
        """Cross-attention key row ``key`` reads ``patches`` (Mllama)."""
        self._add(*self._keys, key, patches, weights)

    @staticmethod
    def _add(rows, patches_out, weights_out, row, patches, weights) -> None:
        patches = np.asarray(patches, np.int64).reshape(-1)
        if weights is None:
            weights = np.full(len(patches), 1.0 / max(1, len(patches)))
        weights = np.asarray(weights, np.float64).reshape(-1)
        keep = weights > 0
        total = weights[keep].sum()
        rows.extend([int(row)] * int(keep.sum()))
        patches_out.extend(int(p) for p in patches[keep])
        weights_out.extend(float(w) for w in weights[keep] / total)

    def add_vision_sequence(self, patches: Sequence[int] | np.ndarray) -> None:
        """One sequence the vision tower attended over: each token's patch, -1 for none."""
        self.sequences.append(np.asarray(patches, np.int32))

    def build(self, vision_summary: str) -> ImageGeometry:
        """The geometry; ``vision_summary`` is "cls" when every vision sequence starts with a
        CLS token that relevancy reads, "mean" otherwise."""
        count = self.num_patches
        tile_of = np.repeat(np.arange(len(self.tiles)), [t.rows * t.cols for t in self.tiles])
        boxes = np.concatenate(self._boxes) if self._boxes else np.zeros((0, 4))

        def patch_map(rows, patches, weights) -> PatchMap:
            out = PatchMap(
                np.asarray(rows, np.int32),
                np.asarray(patches, np.int32),
                np.asarray(weights, np.float32),
            )
            if len(out.patches) and (out.patches.min() < 0 or out.patches.max() >= count):
                raise ValueError("a token reads a patch that no tile has")
            return out

        if vision_summary == "cls" and any(len(s) == 0 or s[0] != -1 for s in self.sequences):
            raise ValueError("a 'cls' vision summary needs a CLS token first in every sequence")
        return ImageGeometry(
            images=self.images,
            tiles=list(self.tiles),
            patch_tile=tile_of.astype(np.int32),
            patch_boxes=boxes.astype(np.float32),
            token_patches=patch_map(self._rows, self._patches, self._weights),
            vision_sequences=list(self.sequences),
            vision_summary=vision_summary,
            key_patches=patch_map(*self._keys) if self._keys[0] else None,
        )
