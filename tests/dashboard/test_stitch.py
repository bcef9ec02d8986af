"""Per-patch maps on the original image: tiles stitched back, per-tile views, click targets."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard.components import analysis, overlay, stitch
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.components.stitch import View
from tests.dashboard import geometries


def test_a_single_tile_draws_its_values_unchanged():
    geometry = geometries.single(4, 6)
    values = np.arange(24, dtype=float)
    grid = stitch.field(geometry, values, View(0), (56, 84))
    np.testing.assert_array_equal(grid, values.reshape(4, 6))


def test_a_legacy_trace_draws_on_its_processed_image_as_before():
    geometry = geometries.legacy(4, 6)
    base = stitch.frame(geometry, View(0))
    assert base.pixels.shape == (56, 84, 3)  # the processed image, not the larger original
    np.testing.assert_array_equal(base.pixels, geometry.processed)
    values = np.linspace(0, 1, 24)
    style, scale = OverlayStyle(fade=False), Scale(0.0, 1.0, "w")
    drawn = stitch.field(geometry, values, View(0), base.pixels.shape[:2])
    before = overlay.overlay(geometry.processed, values.reshape(4, 6), style, scale)
    after = overlay.overlay(base.pixels, drawn, style, scale)
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    assert stitch.patch_fractions(geometry, View(0), 7) == (1 / 6, 1 / 4, 2 / 6, 2 / 4)


def test_stitched_overlaps_add_densities_and_keep_the_mass():
    geometry = geometries.next_like()
    rng = np.random.default_rng(0)
    values = rng.random(geometry.num_patches)
    height, width = 60, 80  # one display pixel per original pixel
    drawn = stitch.field(geometry, values, View(0), (height, width))
    # density per pixel times the reference area (a crop patch: 10x10 px) integrates back
    reference = 10 * 10
    assert drawn.sum() / reference == pytest.approx(values.sum(), rel=1e-6)
    # a pixel under base patch 0 (20x20 px) and crop patch 12 (tile 1, row 0, col 0):
    # the base value is spread over 4 crop-patch areas, the crop's counts whole
    assert drawn[5, 5] == pytest.approx(values[0] / 4 + values[12])


def test_per_tile_view_shows_the_tiles_own_grid_on_its_crop():
    geometry = geometries.next_like()
    values = np.arange(geometry.num_patches, dtype=float)
    view = View(0, 4)  # the bottom-right crop: x 40-80, y 30-60
    np.testing.assert_array_equal(
        stitch.field(geometry, values, view, (30, 40)), values[48:60].reshape(3, 4)
    )
    base = stitch.frame(geometry, view)
    source = geometry.images[0].pixels
    np.testing.assert_array_equal(base.pixels, source[30:60, 40:80])


def test_a_tile_past_the_image_edge_is_padded_grey():
    geometry = geometries.next_like()
    geometry.tiles[4] = type(geometry.tiles[4])(0, (40, 30, 100, 60), 3, 4, "crop")
    base = stitch.frame(geometry, View(0, 4))
    assert base.pixels.shape[:2] == (30, 60)
    assert (base.pixels[:, 45:] == stitch.PADDING_GREY).all()


def test_a_click_in_a_stitched_image_picks_every_tiles_patch_there():
    geometry = geometries.next_like()
    # x 45, y 35 of 80x60: base patch row 1 col 2 (#6); crop 4 (x 40-80, y 30-60) row 0 col 0
    assert stitch.patches_at(geometry, View(0), 45 / 80, 35 / 60) == [6, 48]
    assert stitch.patches_at(geometry, View(0, 4), 5 / 40, 5 / 30) == [48]
    assert stitch.patches_at(geometry, View(0, 0), 45 / 80, 35 / 60) == [6]
    assert stitch.patches_at(geometry, View(0), 1.5, 0.5) == []


def test_patch_fractions_and_clicks_agree_on_every_patch():
    for geometry in (geometries.next_like(), geometries.multi_image(), geometries.single()):
        for view in stitch.stitched_views(geometry) + stitch.tile_views(geometry):
            for patch in stitch.view_patches(geometry, view):
                x0, y0, x1, y1 = stitch.patch_fractions(geometry, view, int(patch))
                hit = stitch.patches_at(geometry, view, (x0 + x1) / 2, (y0 + y1) / 2)
                assert int(patch) in hit


def test_multi_image_draws_one_picture_per_image():
    geometry = geometries.multi_image()
    views = stitch.stitched_views(geometry)
    assert [v.image for v in views] == [0, 1]
    values = np.arange(12, dtype=float)
    np.testing.assert_array_equal(
        stitch.field(geometry, values, views[1], (45, 30)), values[6:].reshape(3, 2)
    )
    assert stitch.frame(geometry, views[1]).pixels.shape == (45, 30, 3)
    assert "image 2" in stitch.patch_label(geometry, 7)


def test_overlaps_are_detected_only_where_tiles_share_pixels():
    assert stitch.has_overlaps(geometries.next_like())
    assert not stitch.has_overlaps(geometries.multi_image())
    assert not stitch.has_overlaps(geometries.single())


def test_weighted_maps_spread_a_token_over_its_patches():
    geometry = geometries.merged_2x2(first_row=3)
    row = np.zeros(10)
    row[3], row[6] = 0.4, 0.2  # tokens 0 (top-left block) and 3 (bottom-right block)
    per_patch = analysis.spread(row, geometry.token_patches, geometry.num_patches)
    assert per_patch.sum() == pytest.approx(0.6)
    assert per_patch[[0, 1, 4, 5]] == pytest.approx([0.1] * 4)
    assert per_patch[[10, 11, 14, 15]] == pytest.approx([0.05] * 4)
    weights = analysis.patch_weights(geometry.token_patches, [0, 1, 10], 10)
    assert weights[3] == pytest.approx(0.5) and weights[6] == pytest.approx(0.25)


def test_patches_no_token_reads_are_unknown_not_zero():
    geometry = geometries.single(2, 2)
    geometry.token_patches = type(geometry.token_patches).one_to_one(
        np.array([0, 1, 2]), np.array([0, 1, 2])
    )
    per_patch = analysis.spread(np.ones(4), geometry.token_patches, 4)
    assert np.isnan(per_patch[3]) and per_patch[:3] == pytest.approx([1, 1, 1])
    picture = overlay.overlay(
        np.zeros((2, 2, 3), np.uint8),
        per_patch.reshape(2, 2),
        OverlayStyle(fade=False),
        Scale(0, 1, "w"),
        min_side=2,
    )
    assert tuple(np.asarray(picture)[1, 1]) == (0, 0, 0)  # transparent: the photo shows


def test_vision_values_skip_cls_and_other_tiles():
    geometry = geometries.next_like()
    sequence = np.concatenate([[-1], geometry.vision_sequences[2]])
    values = analysis.vision_values(np.arange(13.0), sequence, geometry.num_patches)
    assert values[24:36] == pytest.approx(np.arange(1.0, 13.0))
    assert np.isnan(values[:24]).all() and np.isnan(values[36:]).all()
    assert stitch.sequence_view(geometry, 2) == View(0, 2)
