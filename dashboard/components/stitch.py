"""Per-patch values drawn on the user's original image, tiles put back where they came from.

A trace's patches belong to tiles (the crops the vision tower saw: one whole image, a grid of
high-resolution crops, a thumbnail beside them) and each tile to one image. A picture is a
:class:`View`: one image with every tile stitched back in place, or one tile on its own grid.

Where tiles overlap (LLaVA-NeXT's whole-image base view under its crops, a global thumbnail
beside InternVL's or Idefics' crops) the stitched picture shows the **sum of densities**: each
patch's value is spread evenly over its box and the overlapping tiles add up, expressed per
area of the image's smallest patch. That keeps every tile's share visible (drawing the crops
over the base view would hide whatever the model put on the base view) and conserves mass: a
region's total is the sum of the values of the patches covering it. A single tile (LLaVA-1.5,
every trace of formats 1-2) draws its values unchanged. The per-tile view shows one tile's own
values on its own grid, with nothing combined.

Traces of formats 1-2 carry only the processed image; their one tile is drawn over it exactly
as the dashboard always did (grid cells as equal fractions of the processed picture).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from store import ImageGeometry

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1)
MAX_SIDE = 672  # longest side of a drawn original: large photos are shrunk to this
PADDING_GREY = 128  # where a tile extends past its image (padding the tower saw)
COMBINE_NOTE = (
    "Stitched: overlapping tiles (a whole-image view under its crops, a thumbnail) are added "
    "as densities, each patch's value spread over its box, per area of the image's smallest "
    "patch; pick one tile to see its own values."
)


@dataclass(frozen=True)
class View:
    """What one picture shows: ``image`` with all its tiles stitched (``tile`` None), or
    one tile."""

    image: int
    tile: int | None = None


@dataclass(frozen=True)
class Frame:
    """A picture's pixels and the region of its image they show (original pixels)."""

    pixels: np.ndarray  # [h, w, 3] uint8
    box: Box


def is_legacy(geometry: ImageGeometry) -> bool:
    """Formats 1-2: only the processed image is kept, drawn in its one tile's own frame."""
    return geometry.processed is not None


def stitched_views(geometry: ImageGeometry) -> list[View]:
    """One stitched picture per image."""
    return [View(i) for i in range(len(geometry.images))]


def tile_views(geometry: ImageGeometry, image: int | None = None) -> list[View]:
    """One picture per tile (of ``image`` only, when given)."""
    return [
        View(t.image, i) for i, t in enumerate(geometry.tiles) if image is None or t.image == image
    ]


def has_overlaps(geometry: ImageGeometry) -> bool:
    """Whether two tiles of one image cover common pixels (the stitched picture combines)."""
    for image in range(len(geometry.images)):
        boxes = [
            _clip(t.box, geometry.images[image].size) for t in geometry.tiles if t.image == image
        ]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                    return True
    return False


def image_label(geometry: ImageGeometry, image: int) -> str:
    """An image as captions name it: its number, file name and size."""
    source = geometry.images[image]
    width, height = source.size
    return f"image {image + 1}: {source.name} ({width}×{height} px)"


def tile_label(geometry: ImageGeometry, tile: int) -> str:
    """A tile as people pick it: its kind, grid and box in its image's pixels."""
    t = geometry.tiles[tile]
    x0, y0, x1, y1 = (round(v) for v in t.box)
    where = f" of image {t.image + 1}" if len(geometry.images) > 1 else ""
    return (
        f"tile {tile} · {t.kind} · {t.rows}×{t.cols} patches · x {x0}–{x1}, y {y0}–{y1} px{where}"
    )


def view_label(geometry: ImageGeometry, view: View) -> str:
    """What a picture shows, for its caption."""
    if view.tile is None:
        return image_label(geometry, view.image)
    return tile_label(geometry, view.tile)


def patch_label(geometry: ImageGeometry, patch: int) -> str:
    """Where a patch is: its tile's grid cell and its box in the original image."""
    tile = int(geometry.patch_tile[patch])
    cols = geometry.tiles[tile].cols
    local = patch - geometry.tile_patches(tile).start
    x0, y0, x1, y1 = (round(float(v)) for v in geometry.patch_boxes[patch])
    cell = f"row {local // cols}, col {local % cols} · x {x0}–{x1}, y {y0}–{y1} px"
    if len(geometry.tiles) == 1:
        return cell
    image = f"image {geometry.tiles[tile].image + 1} · " if len(geometry.images) > 1 else ""
    return f"{image}tile {tile} ({geometry.tiles[tile].kind}) · {cell}"


def frame(geometry: ImageGeometry, view: View) -> Frame:
    """The pixels a view is drawn on: the whole image, or the tile's box cut from it (padded
    grey past the image's edge), no longer than :data:`MAX_SIDE`."""
    if is_legacy(geometry):
        return Frame(np.asarray(geometry.processed, np.uint8), geometry.tiles[0].box)
    source = geometry.images[view.image]
    width, height = source.size
    box: Box = (0.0, 0.0, float(width), float(height))
    if view.tile is not None:
        box = tuple(float(v) for v in geometry.tiles[view.tile].box)
    picture = Image.fromarray(np.asarray(source.pixels, np.uint8)).convert("RGB")
    sx, sy = picture.width / width, picture.height / height
    factor = min(1.0, MAX_SIDE / max((box[2] - box[0]) * sx, (box[3] - box[1]) * sy))
    size = (
        max(1, round((box[2] - box[0]) * sx * factor)),
        max(1, round((box[3] - box[1]) * sy * factor)),
    )
    if view.tile is not None:
        crop = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        picture = _crop_padded(picture, tuple(round(v) for v in crop))
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return Frame(np.asarray(picture), box)


def _crop_padded(picture: Image.Image, box: tuple[int, ...]) -> Image.Image:
    """``picture`` cut to ``box``, grey where the box leaves the picture."""
    out = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), (PADDING_GREY,) * 3)
    out.paste(picture, (-box[0], -box[1]))
    return out


def field(
    geometry: ImageGeometry,
    values: np.ndarray,
    view: View,
    shape: tuple[int, int],
    smooth: bool = False,
) -> np.ndarray:
    """The [rows, cols] array :func:`dashboard.components.overlay.overlay` stretches over
    the view's frame (``shape`` = the frame's (height, width)). NaN where nothing is known.

    One tile (a per-tile view, a single-tile image): that tile's grid of values, as is.
    Several tiles: the sum of densities described in the module doc, at ``shape``.
    """
    values = np.asarray(values, np.float64)
    tiles = _tiles_of(geometry, view)
    if len(tiles) == 1:
        t = tiles[0]
        grid = geometry.tiles[t]
        return values[geometry.tile_patches(t)].reshape(grid.rows, grid.cols)
    height, width = shape
    total = np.zeros(shape, np.float64)
    known = np.zeros(shape, bool)
    bx0, by0, bx1, by1 = (0.0, 0.0, *geometry.images[view.image].size)
    sx, sy = width / (bx1 - bx0), height / (by1 - by0)
    reference = min(_patch_area(geometry, t) for t in tiles)
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    for t in tiles:
        grid = geometry.tiles[t]
        x0, y0, x1, y1 = grid.box
        left, top = round((x0 - bx0) * sx), round((y0 - by0) * sy)
        right, bottom = round((x1 - bx0) * sx), round((y1 - by0) * sy)
        if right <= left or bottom <= top:
            continue
        density = values[geometry.tile_patches(t)].reshape(grid.rows, grid.cols)
        density = density * (reference / _patch_area(geometry, t))
        cells = Image.fromarray(density.astype(np.float32), mode="F")
        layer = np.asarray(cells.resize((right - left, bottom - top), resample), np.float64)
        # the part of the tile inside the picture (padding past the edge falls off)
        cx0, cy0 = max(left, 0), max(top, 0)
        cx1, cy1 = min(right, width), min(bottom, height)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        part = layer[cy0 - top : cy1 - top, cx0 - left : cx1 - left]
        finite = np.isfinite(part)
        total[cy0:cy1, cx0:cx1] += np.where(finite, part, 0.0)
        known[cy0:cy1, cx0:cx1] |= finite
    return np.where(known, total, np.nan)


def view_patches(geometry: ImageGeometry, view: View) -> np.ndarray:
    """The patches a view shows (those of its tiles)."""
    return np.flatnonzero(np.isin(geometry.patch_tile, _tiles_of(geometry, view)))


def _tiles_of(geometry: ImageGeometry, view: View) -> list[int]:
    if is_legacy(geometry):
        return [0]
    if view.tile is not None:
        return [view.tile]
    return [i for i, t in enumerate(geometry.tiles) if t.image == view.image]


def _patch_area(geometry: ImageGeometry, tile: int) -> float:
    t = geometry.tiles[tile]
    return max((t.box[2] - t.box[0]) * (t.box[3] - t.box[1]) / (t.rows * t.cols), 1e-12)


def _clip(box: Box, size: tuple[int, int]) -> Box:
    return (max(box[0], 0.0), max(box[1], 0.0), min(box[2], size[0]), min(box[3], size[1]))


def patch_fractions(geometry: ImageGeometry, view: View, patch: int) -> Box | None:
    """Where ``patch`` lies on the view's picture, as fractions of its width and height;
    ``None`` when the view does not show it."""
    tile = int(geometry.patch_tile[patch])
    if tile not in _tiles_of(geometry, view):
        return None
    if is_legacy(geometry) or view.tile is not None:  # the tile's own grid fills the picture
        t = geometry.tiles[tile]
        row, col = divmod(patch - geometry.tile_patches(tile).start, t.cols)
        return (col / t.cols, row / t.rows, (col + 1) / t.cols, (row + 1) / t.rows)
    width, height = geometry.images[view.image].size
    x0, y0, x1, y1 = (float(v) for v in geometry.patch_boxes[patch])
    return (x0 / width, y0 / height, x1 / width, y1 / height)


def patches_at(geometry: ImageGeometry, view: View, x: float, y: float) -> list[int]:
    """The patches under a point of the view's picture (``x``, ``y`` as fractions of its
    width and height): every tile's patch there when stitched, the tile's one patch else."""
    if not (0 <= x <= 1 and 0 <= y <= 1):
        return []
    tiles = _tiles_of(geometry, view)
    if is_legacy(geometry) or view.tile is not None:
        t = geometry.tiles[tiles[0]]
        row, col = min(int(y * t.rows), t.rows - 1), min(int(x * t.cols), t.cols - 1)
        return [geometry.tile_patches(tiles[0]).start + row * t.cols + col]
    width, height = geometry.images[view.image].size
    px, py = x * width, y * height
    boxes = geometry.patch_boxes
    inside = (
        np.isin(geometry.patch_tile, tiles)
        & (boxes[:, 0] <= px)
        & (px < boxes[:, 2])
        & (boxes[:, 1] <= py)
        & (py < boxes[:, 3])
    )
    return np.flatnonzero(inside).tolist()


def sequence_view(geometry: ImageGeometry, sequence: int) -> View:
    """The picture a vision-tower sequence is drawn on: its tile when it read one tile,
    else its image stitched (Qwen-VL and Mllama attend over a whole image at once)."""
    patches = np.asarray(geometry.vision_sequences[sequence])
    patches = patches[patches >= 0]
    tiles = np.unique(geometry.patch_tile[patches]) if patches.size else np.array([0])
    image = geometry.tiles[int(tiles[0])].image
    if is_legacy(geometry) or len(tiles) > 1 or len(_tiles_of(geometry, View(image))) == 1:
        return View(image)
    return View(image, int(tiles[0]))


def same_layout(first: ImageGeometry, second: ImageGeometry) -> bool:
    """Whether two traces' patches line up one to one (same images' sizes, same tiles), so
    their maps can be subtracted patch by patch."""
    return [i.size for i in first.images] == [i.size for i in second.images] and [
        (t.image, tuple(t.box), t.rows, t.cols) for t in first.tiles
    ] == [(t.image, tuple(t.box), t.rows, t.cols) for t in second.tiles]
