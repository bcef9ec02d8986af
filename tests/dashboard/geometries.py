"""Image geometries of every shape the dashboard draws, built from the schema's dataclasses.

Boxes are derived from each tile's box and grid, so a test's expectations (where a patch
is, what a click hits) come from these definitions, not from the code under test.
"""

from __future__ import annotations

import numpy as np

from store.schema import ImageGeometry, PatchMap, SourceImage, Tile


def photo(width: int, height: int, seed: int = 0) -> SourceImage:
    """A noisy photo with a red square in its top-left quarter."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(150, 230, size=(height, width, 3), dtype=np.uint8)
    pixels[height // 8 : height // 3, width // 8 : width // 3] = (200, 30, 30)
    return SourceImage(f"photo-{seed}.png", f"{seed:064x}", (width, height), pixels)


def patch_boxes(tile: Tile) -> np.ndarray:
    """[rows*cols, 4] the tile's grid cells, row-major, in its image's pixels."""
    x0, y0, x1, y1 = tile.box
    xs = np.linspace(x0, x1, tile.cols + 1)
    ys = np.linspace(y0, y1, tile.rows + 1)
    return np.array(
        [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(tile.rows) for c in range(tile.cols)],
        np.float32,
    )


def geometry(
    images: list[SourceImage],
    tiles: list[Tile],
    token_patches: PatchMap | None = None,
    first_row: int = 0,
    processed: np.ndarray | None = None,
) -> ImageGeometry:
    """A geometry whose LM tokens read one patch each from ``first_row`` on, unless a map
    is given; one vision sequence per tile, without CLS."""
    counts = [t.rows * t.cols for t in tiles]
    total = sum(counts)
    patch_tile = np.repeat(np.arange(len(tiles)), counts).astype(np.int32)
    boxes = np.concatenate([patch_boxes(t) for t in tiles])
    if token_patches is None:
        token_patches = PatchMap.one_to_one(
            np.arange(first_row, first_row + total), np.arange(total)
        )
    starts = np.cumsum([0, *counts])
    sequences = [np.arange(starts[i], starts[i + 1], dtype=np.int32) for i in range(len(tiles))]
    return ImageGeometry(
        images, tiles, patch_tile, boxes, token_patches, sequences, "mean", processed=processed
    )


def single(rows: int = 4, cols: int = 6, first_row: int = 0) -> ImageGeometry:
    """LLaVA-1.5-like: one image, one full tile."""
    return geometry(
        [photo(cols * 14, rows * 14)],
        [Tile(0, (0, 0, cols * 14, rows * 14), rows, cols)],
        None,
        first_row,
    )


def next_like(first_row: int = 0) -> ImageGeometry:
    """LLaVA-NeXT-like: an 80x60 image seen whole (3x4 patches of 20 px) and as 2x2 crops
    (3x4 patches of 10 px each): every point is under one base patch and one crop patch."""
    tiles = [Tile(0, (0, 0, 80, 60), 3, 4, "full")]
    tiles += [Tile(0, (x, y, x + 40, y + 30), 3, 4, "crop") for y in (0, 30) for x in (0, 40)]
    return geometry([photo(80, 60)], tiles, None, first_row)


def multi_image(first_row: int = 0) -> ImageGeometry:
    """Two images of different sizes, one tile each (2x3 and 3x2 patches)."""
    images = [photo(60, 40, seed=1), photo(30, 45, seed=2)]
    tiles = [Tile(0, (0, 0, 60, 40), 2, 3), Tile(1, (0, 0, 30, 45), 3, 2)]
    return geometry(images, tiles, None, first_row)


def merged_2x2(first_row: int = 0) -> ImageGeometry:
    """Qwen-VL-like: 4x4 patches, each LM token reads a 2x2 block at weight 1/4."""
    tile = Tile(0, (0, 0, 56, 56), 4, 4)
    rows, patches = [], []
    for token in range(4):
        r0, c0 = 2 * (token // 2), 2 * (token % 2)
        for dr in (0, 1):
            for dc in (0, 1):
                rows.append(first_row + token)
                patches.append((r0 + dr) * 4 + c0 + dc)
    mapping = PatchMap(
        np.array(rows, np.int32), np.array(patches, np.int32), np.full(16, 0.25, np.float32)
    )
    return geometry([photo(56, 56)], [tile], mapping)


def legacy(rows: int = 4, cols: int = 6) -> ImageGeometry:
    """As formats 1-2 read: the processed image (here 84x56) beside a larger original."""
    processed = photo(cols * 14, rows * 14, seed=7).pixels
    source = SourceImage("old.png", "0" * 64, (cols * 21, rows * 21), processed)
    tile = Tile(0, (0, 0, cols * 21, rows * 21), rows, cols)
    return geometry([source], [tile], processed=processed)
