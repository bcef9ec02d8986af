"""The proof every registered family must pass, on a tiny random model of its real classes.

For each family with an adapter: record a trace through the CLI into a store; check the token
-> patch map end to end with a painted square (the LM image rows that change when a square is
painted, vision attention zeroed, must be the ones whose patches' boxes in the original image
touch the square); check relevancy in every mode against the slow float64 reference; open the
trace on every dashboard page (AppTest); save one real-browser screenshot per family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.config import STORE_ENV
from engine.adapters import adapter_class, served_model_types
from engine.inputs import load_image
from store import RelevancyMode, open_store
from tests.engine.families import oracle
from tests.engine.families.builders import FAMILIES
from tests.engine.families.images import noise_image, painted
from tests.engine.families.recording import record_with_cli
from tests.engine.families.relevancy_reference import reference_relevancy

APP = Path(__file__).resolve().parents[3] / "dashboard" / "app.py"
TRACE_PAGES = ["generation", "attention", "relevancy", "causal"]
PROMPT = "what is in the image ?"
SQUARE = (14, 10, 41, 29)  # x0, y0, x1, y1 (inclusive) on the 56x40 noise image


FAMILY_NAMES = [name for name in FAMILIES if name in served_model_types()]
CROSS = set(oracle.CROSS_ATTENTION_FAMILIES)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("family-store")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "noise.png"
    noise_image().save(path)
    return path


@pytest.fixture(scope="module")
def recorded(build, store_dir, image_file):
    """``recorded(name)``: the trace id of family ``name``, recorded (once) through
    ``lvlm-interpret record``."""
    ids: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in ids:
            ids[name] = record_with_cli(build(name).folder, [image_file], PROMPT, store_dir, 3)
        return ids[name]

    return get


def _loaded(built):
    from engine.loading import load_model

    return load_model(str(built.folder))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_trace_is_stored_with_its_geometry(recorded, store_dir, name):
    trace_id = recorded(name)
    with open_store(store_dir) as store, store.open(trace_id) as trace:
        geometry = trace.image
        assert trace.info.adapter == adapter_class(name).name
        assert geometry.images[0].size == (56, 40)
        assert geometry.num_patches > 0 and len(geometry.tiles) >= 1
        mapped = geometry.key_patches if name in CROSS else geometry.token_patches
        assert mapped is not None and len(mapped.rows) > 0
        totals = np.bincount(mapped.rows, weights=mapped.weights)
        np.testing.assert_allclose(totals[np.unique(mapped.rows)], 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_painted_square_lands_on_the_tokens_whose_patches_cover_it(build, name):
    """The model's own behaviour decides which rows read the square; the geometry predicts it.

    Resampling spreads a painted edge into the neighbouring pixels, so rows whose patches lie
    within one patch of the square may change too; rows whose patches lie inside it must.
    """
    built = build(name)
    loaded = _loaded(built)
    before_image = noise_image()
    images = [load_image(before_image, "noise.png")]
    after_images = [load_image(painted(before_image, SQUARE), "painted.png")]
    before = loaded.adapter.build_inputs(images, PROMPT)
    after = loaded.adapter.build_inputs(after_images, PROMPT)
    changed = oracle.embedding_change(loaded.model, before, after)
    geometry = loaded.adapter.geometry(before, images).geometry
    mapped = geometry.key_patches if name in CROSS else geometry.token_patches
    boxes = geometry.patch_boxes[mapped.patches]
    x0, y0, x1, y1 = SQUARE[0], SQUARE[1], SQUARE[2] + 1, SQUARE[3] + 1
    inside = (boxes[:, 0] >= x0) & (boxes[:, 2] <= x1) & (boxes[:, 1] >= y0) & (boxes[:, 3] <= y1)
    size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    near = (
        (boxes[:, 2] > x0 - size)
        & (boxes[:, 0] < x1 + size)
        & (boxes[:, 3] > y0 - size)
        & (boxes[:, 1] < y1 + size)
    )
    must = set(mapped.rows[inside].tolist())
    may = set(mapped.rows[near].tolist())
    assert must, "no patch lies inside the square: the test image is too coarse"
    assert must <= changed, f"rows reading the square did not change: {sorted(must - changed)}"
    assert changed <= may, f"rows far from the square changed: {sorted(changed - may)}"


@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if n not in CROSS])
def test_relevancy_matches_the_slow_reference(build, recorded, store_dir, name):
    trace_id = recorded(name)
    loaded = _loaded(build(name))
    with open_store(store_dir) as store, store.open(trace_id) as trace:
        tokens, geometry, relevancy = trace.tokens, trace.image, trace.relevancy
    images = [load_image(noise_image(), "noise.png")]
    inputs = loaded.adapter.build_inputs(images, PROMPT)
    expected = reference_relevancy(loaded, inputs, tokens.ids, geometry)
    for mode, reference in zip(RelevancyMode, expected, strict=True):
        ours = relevancy.map(mode)
        assert ours.shape == reference.shape, mode
        scale = max(float(np.abs(reference).max()), 1e-12)
        np.testing.assert_allclose(ours, reference, atol=1e-5 * max(1.0, scale), err_msg=mode)


@pytest.mark.parametrize("page", TRACE_PAGES)
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_dashboard_page_opens_the_trace(recorded, store_dir, monkeypatch, name, page):
    monkeypatch.setenv(STORE_ENV, str(store_dir))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"trace": recorded(name)})
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.get("error"), [e.value for e in at.get("error")]


def test_one_screenshot_per_family(recorded, store_dir):
    from tests.dashboard.browser import SCREENSHOTS, chromium, running_dashboard

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with running_dashboard(store_dir) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name in FAMILY_NAMES:
            trace_id = recorded(name)
            page.goto(f"{url}/relevancy?trace={trace_id}")
            page.locator("img").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # let the overlays finish drawing
            assert page.locator("img").count() > 0, name
            page.screenshot(path=SCREENSHOTS / f"family-{name}.png", full_page=True)
