"""Every page on every image geometry (AppTest): one tile, crops, two images, 2x2-merged
tokens, cross-attention, a policy that kept only the answer's rows, and a format-1 trace.
A page that cannot draw something says so in one line; none shows a traceback."""

from __future__ import annotations

import pytest

from dashboard.components import stitch
from store import open_store
from tests.dashboard.test_pages import _ok, _texts

KINDS = ("main", "legacy", "tiled", "images", "merged", "cross", "policy")
PAGES = ("generation", "relevancy", "causal")
ATTENTION = ("image → answer", "analysis", "text → image", "vision tower", "cross-attention")


@pytest.fixture
def family(app, family_store):
    """Pages of the family store's traces."""
    return lambda page, **params: app(page, store_dir=family_store.directory, **params)


def _open(app, demo_store, family_store, page: str, kind: str, **params: str):
    """A page on the trace of ``kind``, from whichever store holds it."""
    if kind in ("main", "legacy"):
        return app(page, store_dir=demo_store.directory, trace=getattr(demo_store, kind), **params)
    return app(page, store_dir=family_store.directory, trace=getattr(family_store, kind), **params)


def _images(at) -> list:
    return [img for e in at.get("image") for img in e.proto.imgs]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_every_geometry(app, demo_store, family_store, page, kind):
    at = _open(app, demo_store, family_store, page, kind, layer="0", tokens="1")
    _ok(at)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("view", ATTENTION)
def test_every_attention_view_on_every_geometry(app, demo_store, family_store, view, kind):
    at = _open(app, demo_store, family_store, "attention", kind, view=view, tokens="1", patches="3")
    _ok(at)


def test_compare_across_geometries_says_when_maps_do_not_line_up(family, family_store):
    at = family("compare", trace=family_store.images, compare=family_store.tiled)
    _ok(at)
    assert "patches do not line up" in _texts(at)


def test_crops_are_stitched_with_the_rule_stated_or_shown_one_tile_at_a_time(family, family_store):
    at = family("attention", trace=family_store.tiled, tokens="0")
    _ok(at)
    assert stitch.COMBINE_NOTE in _texts(at)
    at = family("attention", trace=family_store.tiled, tokens="0", tile="2")
    _ok(at)
    tile = next(s for s in at.selectbox if s.label == "Tile")
    assert tile.value == 2
    assert stitch.COMBINE_NOTE not in _texts(at)
    tile.set_value(3).run()
    assert at.query_params["tile"] == ["3"] or at.query_params["tile"] == "3"


def test_two_images_are_two_pictures_and_two_vision_sequences(family, family_store):
    at = family("relevancy", trace=family_store.images, tokens="0")
    _ok(at)
    with open_store(family_store.directory) as store, store.open(family_store.images) as trace:
        names = [i.name for i in trace.image.images]
    captions = " ".join(str(img.caption) for img in _images(at)).replace("\\", "")  # escapes
    assert all(name in captions for name in names)
    at = family("attention", trace=family_store.images, view="vision tower")
    _ok(at)
    sequence = next(s for s in at.selectbox if s.label.startswith("Vision sequence"))
    assert len(sequence.options) == 2


def test_policy_limited_trace_says_what_text_to_image_needs(family, family_store):
    at = family("attention", trace=family_store.policy, view="text → image", patches="3,4")
    _ok(at)
    assert "policy answer_rows" in _texts(at) and "--policy" in _texts(at)
    assert at.get("vega_lite_chart")  # the answer rows it kept still draw


def test_cross_attention_is_drawn_on_the_photo_and_absent_elsewhere(
    app, family, demo_store, family_store
):
    at = family("attention", trace=family_store.cross, view="cross-attention", tokens="0")
    _ok(at)
    assert _images(at)
    at = family("attention", trace=family_store.cross, view="image → answer", tokens="0")
    _ok(at)
    assert "cross-attention view" in _texts(at)
    at = app(
        "attention",
        store_dir=demo_store.directory,
        trace=demo_store.main,
        view="cross-attention",
        tokens="0",
    )
    _ok(at)
    assert "no cross-attention" in _texts(at)


def test_the_patch_list_is_the_keyboard_way_to_pick(family, family_store):
    at = family("attention", trace=family_store.tiled, view="text → image")
    _ok(at)
    listing = next(m for m in at.multiselect if m.label.startswith("Image patches"))
    first_crop = 24  # the global view holds patches 0-23; crop 1 starts at 24
    assert "tile 1 (crop)" in listing.format_func(first_crop)
    listing.set_value([first_crop]).run()
    _ok(at)
    assert at.query_params["patches"] in ("24", ["24"])
    charts = " ".join(c.proto.spec for c in at.get("vega_lite_chart"))
    assert "Tokens attending to the selected patches" in charts
