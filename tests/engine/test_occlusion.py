"""Occlusion on the bundled demo model: maps stored by ``demo record --metrics occlusion`` (the
real command, real forwards), read back through the one results channel. The map must point
at the object the question names better than the seeded random map (a test the map can fail),
and one batched pass must equal one forward per occluded image."""

from __future__ import annotations

import numpy as np
import pytest

from engine.loading import load_model
from engine.methods.occlusion import Occlusion, OcclusionParams, occlusion_map, window_boxes
from engine.methods.perturbation import Canvas
from methods.groundtruth import region, target_boxes
from methods.maps import MAPS_KIND, random_map, stored_maps
from store import open_store


def test_the_stored_map_has_every_token_and_its_provenance(occlusion_demo_store):
    store, ids = occlusion_demo_store
    with open_store(store) as opened:
        for trace_id in ids:
            trace = opened.open(trace_id)
            (payload,) = opened.list_results(trace_id, MAPS_KIND).values()
            assert payload["method"] == "occlusion" and payload["params"]["window"] == 1
            values = np.asarray(payload["per_token"]["map"])
            assert values.shape == (trace.answer_length, trace.image.num_patches)
            # the untouched image re-read gives the probabilities the recording saw
            recorded = np.asarray(trace.top_k.chosen_prob, np.float64)
            np.testing.assert_allclose(payload["per_token"]["probability"], recorded, atol=1e-4)
            provenance = payload["provenance"]
            assert provenance["model"]["revision"] == trace.info.model_revision
            assert provenance["baseline"] == "image mean colour"
            np.testing.assert_array_equal(stored_maps(opened, trace_id)["occlusion"], values)


def test_occluding_the_named_object_costs_more_than_the_background(occlusion_demo_store):
    """Each question names one object: hiding its patches must lower the first answer
    token's probability more, on average, than hiding a background patch; and the map's top
    patches (as many as the object covers) must hit the object more often than the random
    map's do (measured: 0.40 against 0.10 over the answer tokens)."""
    store, ids = occlusion_demo_store
    ours, chance = [], []
    with open_store(store) as opened:
        for trace_id in ids:
            trace = opened.open(trace_id)
            inside = region(trace.image, target_boxes(trace.info.extra, trace.info.prompt))
            assert 0 < inside.sum() < len(inside)
            values = stored_maps(opened, trace_id)["occlusion"]
            assert values[0][inside].mean() > values[0][~inside].mean(), trace.info.prompt
            noise = random_map(*values.shape, seed=0)
            for mine, other in zip(values, noise, strict=True):
                ours.append(inside[np.argsort(-mine, kind="stable")[: inside.sum()]].mean())
                chance.append(inside[np.argsort(-other, kind="stable")[: inside.sum()]].mean())
    assert np.mean(ours) > np.mean(chance) + 0.15, (ours, chance)


def test_batched_map_equals_one_forward_per_image(occlusion_demo_store, demo_model):
    store, ids = occlusion_demo_store
    with open_store(store) as opened:
        trace = opened.open(ids[0])
        batched, base = occlusion_map(demo_model, trace, OcclusionParams())
        single, base_single = occlusion_map(demo_model, trace, OcclusionParams(batch=1))
        stored = stored_maps(opened, ids[0])["occlusion"]
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)
    np.testing.assert_allclose(base, base_single, rtol=0, atol=1e-6)
    np.testing.assert_allclose(batched, stored, rtol=0, atol=1e-6)


def test_window_boxes_grow_about_each_patch_and_stay_in_the_image(occlusion_demo_store):
    store, ids = occlusion_demo_store
    with open_store(store) as opened:
        canvas = Canvas(opened.open(ids[0]), blur_patches=1.0)
    np.testing.assert_array_equal(window_boxes(canvas, 1), canvas.boxes)
    grown = window_boxes(canvas, 3)
    height, width = canvas.images[0].shape[:2]
    assert (grown[:, :2] <= canvas.boxes[:, :2]).all() and (
        grown[:, 2:] >= canvas.boxes[:, 2:]
    ).all()
    assert grown.min() >= 0 and grown[:, 2].max() <= width and grown[:, 3].max() <= height
    widths = canvas.boxes[:, 2] - canvas.boxes[:, 0]
    middle = np.argmin(
        np.abs(canvas.boxes[:, 0] - width / 2) + np.abs(canvas.boxes[:, 1] - height / 2)
    )
    assert grown[middle, 2] - grown[middle, 0] == 3 * widths[middle]  # not clipped mid-image


def test_refuses_a_model_that_did_not_record_the_trace(occlusion_demo_store, random_llava_dir):
    store, ids = occlusion_demo_store
    other = load_model(str(random_llava_dir))
    with open_store(store) as opened, pytest.raises(ValueError, match="not by"):
        Occlusion().run(opened.open(ids[0]), OcclusionParams(), model=other)
