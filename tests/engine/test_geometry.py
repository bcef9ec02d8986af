"""GeometryBuilder's token reads: shares, zero weights, order, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.geometry import GeometryBuilder
from engine.inputs import load_image


def _builder(patches: int = 8) -> GeometryBuilder:
    builder = GeometryBuilder([load_image(Image.new("RGB", (16, 8)))])
    builder.add_tile(0, (0, 0, 16, 8), 2, patches // 2)
    return builder


def _entries(patch_map) -> list[tuple[int, int, float]]:
    return [
        (int(r), int(p), round(float(w), 6))
        for r, p, w in zip(patch_map.rows, patch_map.patches, patch_map.weights, strict=True)
    ]


def test_read_many_splits_equal_shares_in_the_order_read():
    builder = _builder()
    builder.read_many([7, 5], np.array([[4, 5], [0, 1]]))
    builder.read(9, [3])
    got = _entries(builder.build("mean").token_patches)
    assert got == [(7, 4, 0.5), (7, 5, 0.5), (5, 0, 0.5), (5, 1, 0.5), (9, 3, 1.0)]


def test_weights_are_normalised_per_token_and_zero_weights_read_nothing():
    builder = _builder()
    weights = np.array([[2.0, 0.0, 2.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    builder.read_many([1, 2, 3], np.array([[0, 1, 2], [3, 4, 5], [6, 7, 0]]), weights)
    got = _entries(builder.build("mean").token_patches)
    assert got == [(1, 0, 0.5), (1, 2, 0.5), (2, 3, 0.25), (2, 4, 0.75)]  # token 3: a newline


def test_key_reads_are_their_own_map():
    builder = _builder()
    builder.read_keys(np.arange(10, 14), np.arange(4)[:, None])
    geometry = builder.build("mean")
    assert len(geometry.token_patches.rows) == 0
    assert _entries(geometry.key_patches) == [(10 + k, k, 1.0) for k in range(4)]
    assert _builder().build("mean").key_patches is None


def test_a_patch_no_tile_has_and_mismatched_shapes_are_refused():
    builder = _builder()
    builder.read_many([0], np.array([[8]]))
    with pytest.raises(ValueError, match="no tile has"):
        builder.build("mean")
    with pytest.raises(ValueError, match="rows need"):
        _builder().read_many([0, 1], np.array([[0, 1]]))
    with pytest.raises(ValueError, match="do not match"):
        _builder().read_many([0], np.array([[0, 1]]), np.ones((1, 3)))


def test_tile_blocks_are_row_major_blocks_of_row_major_patches():
    builder = GeometryBuilder([load_image(Image.new("RGB", (8, 8)))])
    builder.add_tile(0, (0, 0, 8, 8), 1, 2)  # patches 0, 1: the next tile starts at 2
    tile = builder.add_tile(0, (0, 0, 8, 8), 4, 4)
    expected = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    np.testing.assert_array_equal(builder.tile_blocks(tile, 2), np.array(expected) + 2)
    with pytest.raises(ValueError, match="no 3x3 blocks"):
        builder.tile_blocks(tile, 3)
