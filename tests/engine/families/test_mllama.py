"""Mllama adapter: the key -> patch map against the model's own gradients, tile boxes against a
painted square, vision sequences against the captured calls, and relevancy through
cross-attention against a slow float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.adapters import adapter_for
from engine.capture import capture_vision_attention
from engine.inputs import ImageInput
from tests.engine.families import oracle
from tests.engine.families.builders import prompt_inputs
from tests.engine.families.images import noise_image, painted

# (height, width): 2x2 tiles, all filled; 1x3 tiles plus a padding slot, the image not resized
# (it fits the canvas) and padded below; 4x1 tiles, shrunk; one tile, enlarged.
SIZES = [(40, 56), (20, 70), (100, 30), (13, 17)]


@pytest.fixture(scope="module")
def built(build):
    built = build("mllama")
    built.model.requires_grad_(False)
    return built


def image_inputs(*images: Image.Image) -> list[ImageInput]:
    return [ImageInput(im, f"image{i}.png", f"{i:064x}") for i, im in enumerate(images)]


def geometry_reads(geometry, patch: int) -> dict[int, list[tuple[int, int, tuple]]]:
    """Key row -> [(image, tile slot, box in the processed tile's pixels, weight)], from the
    adapter's geometry (a tile's slot is its rank among its image's tiles)."""
    first_tile: dict[int, int] = {}
    for index, tile in enumerate(geometry.tiles):
        first_tile.setdefault(tile.image, index)
    keys = geometry.key_patches
    reads: dict[int, list] = {}
    for key, p, weight in zip(keys.rows, keys.patches, keys.weights, strict=True):
        tile = int(geometry.patch_tile[p])
        row, col = divmod(int(p) - geometry.tile_patches(tile).start, geometry.tiles[tile].cols)
        box = (col * patch, row * patch, (col + 1) * patch, (row + 1) * patch)
        image = geometry.tiles[tile].image
        reads.setdefault(int(key), []).append((image, tile - first_tile[image], box, weight))
    return {key: sorted(values) for key, values in reads.items()}


def oracle_reads(built, inputs) -> dict[int, list[tuple[int, int, tuple]]]:
    """The same from the model's gradients, keys of padding tile slots left out (checked to be
    masked for every token)."""
    reads = oracle.token_patch_map(built.model, inputs, built.processor)
    mask = inputs["cross_attention_mask"][0]  # [P, images, tiles]
    tiles = mask.shape[-1]
    per_slot = len(reads) // (mask.shape[1] * tiles)
    out = {}
    for key, found in reads.items():
        image, slot = divmod(key // per_slot, tiles)
        if not inputs["aspect_ratio_mask"][0, image, slot]:
            assert not mask[:, image, slot].any(), "a padding tile slot is visible to a token"
            continue
        if found:
            out[key] = sorted((r.image, r.tile, r.box, r.weight) for r in found)
    return out


@pytest.mark.parametrize("size", SIZES)
def test_key_map_is_what_the_model_reads(built, size):
    image = noise_image(*size)
    inputs = prompt_inputs(built, [image])
    adapter = adapter_for(built.model, built.processor)
    placement = adapter.geometry(inputs, image_inputs(image))
    assert len(placement.geometry.token_patches.rows) == 0
    patch = oracle.patch_size(built.model)
    assert geometry_reads(placement.geometry, patch) == oracle_reads(built, inputs)


def test_two_images_each_key_knows_its_image(built):
    images = [noise_image(40, 56), noise_image(20, 70, seed=1)]
    inputs = prompt_inputs(built, images)
    adapter = adapter_for(built.model, built.processor)
    geometry = adapter.geometry(inputs, image_inputs(*images)).geometry
    patch = oracle.patch_size(built.model)
    expected = oracle_reads(built, inputs)
    assert geometry_reads(geometry, patch) == expected
    assert {reads[0][0] for reads in expected.values()} == {0, 1}
    assert [t.image for t in geometry.tiles] == [0] * 4 + [1] * 3


def tile_pixels(inputs, geometry, patch_index: int) -> torch.Tensor:
    """[C, p, p] processed pixels of one patch of the geometry."""
    tile = int(geometry.patch_tile[patch_index])
    image = geometry.tiles[tile].image
    slot = tile - next(i for i, t in enumerate(geometry.tiles) if t.image == image)
    grid = geometry.tiles[tile]
    row, col = divmod(patch_index - geometry.tile_patches(tile).start, grid.cols)
    pixels = inputs["pixel_values"][0, image, slot]
    side = pixels.shape[-1] // grid.cols
    return pixels[:, row * side : (row + 1) * side, col * side : (col + 1) * side]


@pytest.mark.parametrize("size", SIZES)
def test_tile_boxes_in_original_pixels_follow_a_painted_square(built, size):
    """A red square painted on the original changes exactly the processed patches whose boxes
    (original pixels) meet it: patches inside it change, patches clear of it (by the resize
    filter's reach) do not; patches past the image's edge hold the padding value."""
    height, width = size
    square = (int(0.4 * width), int(0.1 * height), int(0.9 * width), int(0.9 * height))
    plain = noise_image(*size)
    adapter = adapter_for(built.model, built.processor)
    before = prompt_inputs(built, [plain])
    after = prompt_inputs(built, [painted(plain, square)])
    geometry = adapter.geometry(before, image_inputs(plain)).geometry
    tile_side = built.processor.image_processor.size["height"]
    scale = (geometry.tiles[0].box[2] - geometry.tiles[0].box[0]) / tile_side  # original px/px
    reach = max(1.0, scale) + 0.5  # how far a bilinear resize reads, in original pixels
    x0, y0, x1, y1 = square[0], square[1], square[2] + 1, square[3] + 1  # inclusive -> box
    inside, clear = [], []
    for p, (bx0, by0, bx1, by1) in enumerate(geometry.patch_boxes):
        changed = bool((tile_pixels(after, geometry, p) != tile_pixels(before, geometry, p)).any())
        if bx0 >= x0 and bx1 <= x1 and by0 >= y0 and by1 <= y1:
            inside.append(changed)
        elif bx1 + reach <= x0 or bx0 - reach >= x1 or by1 + reach <= y0 or by0 - reach >= y1:
            clear.append(changed)
        if bx0 >= width or by0 >= height:  # all padding
            mean = torch.tensor(built.processor.image_processor.image_mean)[:, None, None]
            std = torch.tensor(built.processor.image_processor.image_std)[:, None, None]
            padding = (-mean / std).expand_as(tile_pixels(before, geometry, p))
            assert torch.allclose(tile_pixels(before, geometry, p), padding.float(), atol=1e-6)
    assert inside and all(inside)
    assert clear and not any(clear)
