"""Localisation scores on synthetic maps whose answers are worked out here, independently,
and the results channel: a real HDF5 store, results read back, metrics filterable."""

from __future__ import annotations

import numpy as np
import pytest

from methods import get, params_key, save_result
from methods.groundtruth import region, target_boxes
from methods.localisation import Grid, LocalisationParams, chance, score_map
from store import TraceQuery, TraceStore
from store.synthetic import make_synthetic_trace

# The synthetic trace's image: one tile of 4 x 6 patches, 21 px each (126 x 84 px).
BOX = [21.0, 21.0, 63.0, 63.0]  # patches at rows 1-2, columns 1-2: 7, 8, 13, 14
INSIDE = [7, 8, 13, 14]


def demo_extra() -> dict:
    objects = [
        {"shape": "circle", "colour": "red", "position": "top left", "box": [2, 3, 24, 25]},
        {"shape": "square", "colour": "blue", "position": "top right", "box": [40, 4, 60, 24]},
    ]
    return {"ground_truth": {"world_seed": 1, "objects": objects}}


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("What color is the circle?", [(2.0, 3.0, 24.0, 25.0)]),
        ("What shape is the blue object?", [(40.0, 4.0, 60.0, 24.0)]),
        ("Where is the red circle?", [(2.0, 3.0, 24.0, 25.0)]),
        ("Is there a red square?", []),  # bait: colour of one object, shape of the other
        ("Is there a yellow circle?", []),  # bait: a colour no object has
        ("How many shapes are there?", []),
    ],
)
def test_demo_target_is_the_one_object_the_question_names(prompt, expected):
    assert target_boxes(demo_extra(), prompt) == expected


def test_manifest_boxes_all_count_and_malformed_ones_are_skipped():
    extra = {"annotations": {"boxes": [[0, 0, 10, 10], [5, 5, 1, 1], "x", [1, 2, 3, 4]]}}
    assert target_boxes(extra, "anything") == [(0.0, 0.0, 10.0, 10.0), (1.0, 2.0, 3.0, 4.0)]


@pytest.fixture
def trace():
    trace = make_synthetic_trace(answer_len=3, seed=3)
    trace.info.extra["annotations"] = {"boxes": [BOX]}
    g = trace.image.num_patches
    inside_map = np.zeros((3, g), np.float32)
    inside_map[:, INSIDE] = 1.0
    trace.relevancy.vision = inside_map  # 1 inside the box, 0 elsewhere
    outside = np.zeros((3, g), np.float32)
    outside[:, 0] = 1.0  # all mass on patch 0, two patches from the region
    trace.relevancy.all = outside
    return trace


def test_region_is_the_patches_half_inside_the_box(trace):
    inside = region(trace.image, [tuple(BOX)])
    assert np.flatnonzero(inside).tolist() == INSIDE
    # a box covering 10 of a patch's 21 px on one side leaves that patch out, 11 keeps it
    assert not region(trace.image, [(0.0, 0.0, 10.0, 21.0)]).any()
    assert np.flatnonzero(region(trace.image, [(0.0, 0.0, 11.0, 21.0)])).tolist() == [0]


def test_scores_of_known_maps(trace):
    geometry = trace.image
    inside = region(geometry, [tuple(BOX)])
    grid = Grid.of(geometry)
    exact = grid.near(inside, 0)
    in_map = trace.relevancy.vision[0]
    scores = score_map(in_map, inside, exact, top_fraction=0.2)
    # top 5 of 24 patches (round(4.8)): the 4 box patches, then patch 0 (first tie) -> 4/5
    assert scores == {"pointing": 1.0, "box_mass": 1.0, "iou_top": 4 / 5}
    out_map = trace.relevancy.all[0]
    assert score_map(out_map, inside, exact, 0.2)["pointing"] == 0.0
    assert score_map(out_map, inside, exact, 0.2)["box_mass"] == 0.0
    # patch 0 (row 0, col 0) is one patch diagonally from patch 7: tolerance 1 is a hit
    assert score_map(out_map, inside, grid.near(inside, 1), 0.2)["pointing"] == 1.0
    # half the mass inside: 2 on patch 7, 2 spread on patches 0 and 1
    half = np.zeros(24)
    half[[7, 0, 1]] = [2.0, 1.0, 1.0]
    assert score_map(half, inside, exact, 0.2)["box_mass"] == pytest.approx(0.5)
    levels = chance(inside, exact, 0.2)
    assert levels["box_mass"] == pytest.approx(4 / 24)
    assert levels["pointing"] == pytest.approx(4 / 24)
    assert levels["iou_top"] == pytest.approx((5 * 4 / 24) / (5 + 4 - 5 * 4 / 24))
    # within one patch of the 2 x 2 region: a 4 x 4 block, clipped by no border here
    assert chance(inside, grid.near(inside, 1), 0.2)["pointing"] == pytest.approx(16 / 24)


def test_run_stores_results_and_filterable_metrics(tmp_path, trace):
    store = TraceStore(tmp_path / "store")
    trace_id = store.add(trace)
    method = get("localisation")()
    stored = store.open(trace_id)
    assert method.skip_reason(stored) is None
    params = LocalisationParams()
    result = method.run(stored, params)
    key = save_result(store, trace_id, result)
    assert key == f"localisation@1/{params_key(params)}"
    payload = store.get_result(trace_id, "faithfulness", key)
    assert payload["per_token"]["relevancy.vision"]["pointing"] == [1.0, 1.0, 1.0]
    assert payload["per_token"]["relevancy.all"]["box_mass"] == [0.0, 0.0, 0.0]
    assert payload["provenance"]["region_patches"] == INSIDE
    assert payload["headline"]["box_mass.chance"] == pytest.approx(4 / 24)
    assert set(payload["per_token"]) >= {"attention.head_mean", "attention.best_head", "random"}
    found = store.query(TraceQuery(metric_ranges={"pointing.relevancy.vision": (1.0, None)}))
    assert [t.trace_id for t in found.items] == [trace_id]
    assert not store.query(TraceQuery(metric_ranges={"box_mass.relevancy.all": (0.5, None)})).items
    # the same run again replaces its key; another parameter stores beside it
    save_result(store, trace_id, method.run(stored, params))
    save_result(store, trace_id, method.run(stored, LocalisationParams(tolerance=1)))
    keys = sorted(store.list_results(trace_id, "faithfulness"))
    assert len(keys) == 2 and key in keys
    # the random baseline is seeded: the same numbers on every run
    again = method.run(stored, params).per_token["random"]
    assert again == payload["per_token"]["random"]


def test_params_key_is_stable_and_parameter_sensitive():
    assert params_key(LocalisationParams()) == params_key(LocalisationParams())
    assert params_key(LocalisationParams()) != params_key(LocalisationParams(top_fraction=0.3))


def test_trace_without_ground_truth_is_skipped(tmp_path):
    store = TraceStore(tmp_path / "store")
    trace_id = store.add(make_synthetic_trace(answer_len=2))
    reason = get("localisation")().skip_reason(store.open(trace_id))
    assert reason and "ground-truth" in reason
