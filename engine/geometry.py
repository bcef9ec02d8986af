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
        self._token_reads = _MapParts()
        self._key_reads = _MapParts()
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

    def tile_blocks(self, tile: int, k: int) -> np.ndarray:
        """[blocks, k * k]: the patches of ``tile`` in ``k x k`` blocks, blocks row-major and
        each block's patches row-major. One LM token reads one such block in a pixel shuffle
        (Idefics3, InternVL, Aya Vision), a k x k average pooling (Gemma 3) and a patch merge
        (Qwen-VL, whose vision tower also runs its patches in this order)."""
        t = self.tiles[tile]
        if t.rows % k or t.cols % k:
            raise ValueError(f"tile {tile}'s {t.rows}x{t.cols} grid has no {k}x{k} blocks")
        grid = self.tile_patches(tile).reshape(t.rows // k, k, t.cols // k, k)
        return grid.transpose(0, 2, 1, 3).reshape(-1, k * k)

    def read(
        self,
        position: int,
        patches: Sequence[int] | np.ndarray,
        weights: Sequence[float] | None = None,
    ) -> None:
        """LM sequence ``position`` reads ``patches`` (equal shares unless ``weights``)."""
        row = None if weights is None else np.reshape(np.asarray(weights, np.float64), (1, -1))
        self.read_many([position], np.reshape(patches, (1, -1)), row)

    def read_many(
        self,
        positions: Sequence[int] | np.ndarray,
        patches: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> None:
        """LM position ``positions[i]`` reads the patches of row ``patches[i]`` ([k, m]), in
        equal shares unless ``weights`` ([k, m]). One call for a run of tokens that read
        fixed-size patch groups: a Python call per token dominated the geometry time at
        checkpoint sizes (thousands of image tokens). A row whose weights are all zero reads
        nothing (a newline token in a run)."""
        self._token_reads.add(positions, patches, weights)

    def read_keys(
        self,
        keys: Sequence[int] | np.ndarray,
        patches: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> None:
        """Cross-attention key row ``keys[i]`` reads row ``patches[i]`` (Mllama), as
        :meth:`read_many`."""
        self._key_reads.add(keys, patches, weights)

    def add_vision_sequence(self, patches: Sequence[int] | np.ndarray) -> None:
        """One sequence the vision tower attended over: each token's patch, -1 for none."""
        self.sequences.append(np.asarray(patches, np.int32))

    def build(self, vision_summary: str) -> ImageGeometry:
        """The geometry; ``vision_summary`` is "cls" when every vision sequence starts with a
        CLS token that relevancy reads, "mean" otherwise."""
        count = self.num_patches
        tile_of = np.repeat(np.arange(len(self.tiles)), [t.rows * t.cols for t in self.tiles])
        boxes = np.concatenate(self._boxes) if self._boxes else np.zeros((0, 4))
        if vision_summary == "cls" and any(len(s) == 0 or s[0] != -1 for s in self.sequences):
            raise ValueError("a 'cls' vision summary needs a CLS token first in every sequence")
        return ImageGeometry(
            images=self.images,
            tiles=list(self.tiles),
            patch_tile=tile_of.astype(np.int32),
            patch_boxes=boxes.astype(np.float32),
            token_patches=self._token_reads.freeze(count),
            vision_sequences=list(self.sequences),
            vision_summary=vision_summary,
            key_patches=self._key_reads.freeze(count) if self._key_reads else None,
        )


class _MapParts:
    """A :class:`~store.PatchMap` collected in chunks of rows (kept in the order added), each
    row's positive weights normalised to sum to 1."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __bool__(self) -> bool:
        return any(len(rows) for rows, _, _ in self._parts)

    def add(
        self, rows: Sequence[int] | np.ndarray, patches: np.ndarray, weights: np.ndarray | None
    ) -> None:
        rows = np.asarray(rows, np.int64).reshape(-1)
        patches = np.asarray(patches, np.int64)
        if patches.ndim != 2 or len(patches) != len(rows):
            raise ValueError(f"{len(rows)} rows need a [{len(rows)}, m] patch array")
        if weights is None:
            weights = np.full(patches.shape, 1.0 / max(1, patches.shape[1]))
        weights = np.asarray(weights, np.float64)
        if weights.shape != patches.shape:
            raise ValueError(f"weights {weights.shape} do not match patches {patches.shape}")
        keep = weights > 0
        totals = np.where(keep, weights, 0.0).sum(axis=1, keepdims=True)
        shares = np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)
        self._parts.append(
            (np.broadcast_to(rows[:, None], patches.shape)[keep], patches[keep], shares[keep])
        )

    def freeze(self, num_patches: int) -> PatchMap:
        """The map; a patch index outside ``0 .. num_patches - 1`` is an adapter's bug."""
        rows, patches, weights = (
            np.concatenate([part[i] for part in self._parts]) if self._parts else np.zeros(0)
            for i in range(3)
        )
        out = PatchMap(rows.astype(np.int32), patches.astype(np.int32), weights.astype(np.float32))
        if len(out.patches) and (out.patches.min() < 0 or out.patches.max() >= num_patches):
            raise ValueError("a token reads a patch that no tile has")
        return out
