"""Localisation scores on synthetic maps whose answers are worked out here, independently,
and the results channel: a real HDF5 store, results read back, metrics filterable."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.demo.world import make_scene
from methods import get, params_key, save_result
from methods.groundtruth import mask_coverage, mask_region, region, target_boxes, target_mask
from methods.localisation import (
    MASK_SCORES,
    SCORES,
    Grid,
    LocalisationParams,
    chance,
    expected_iou,
    legacy_reason,
    score_map,
)
from store import TraceQuery, TraceStore, open_store, reindex_store
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
    # k = 5 random patches meet the 4-patch region in i with hypergeometric odds
    odds = {0: 15504, 1: 19380, 2: 6840, 3: 760, 4: 20}  # C(4, i) C(20, 5 - i); sum C(24, 5)
    exact = sum(n * i / (5 + 4 - i) for i, n in odds.items()) / 42504
    assert levels["iou_top"] == pytest.approx(exact)
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
    assert key == f"localisation@2/{params_key(params)}"
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


# --- masks: the object's own pixels, redrawn from the demo scene's seed ---


def _mask_of_patches(full: list[int], half: list[int], under: list[int]) -> np.ndarray:
    """A mask on the synthetic trace's 126 x 84 image covering the ``full`` patches whole,
    the left 11 of 21 px columns of ``half`` (52 %) and the left 10 of ``under`` (48 %)."""
    mask = np.zeros((84, 126), bool)
    for patches, width in ((full, 21), (half, 11), (under, 10)):
        for p in patches:
            row, col = divmod(p, 6)
            mask[row * 21 : (row + 1) * 21, col * 21 : col * 21 + width] = True
    return mask


def test_mask_region_is_the_patches_half_on_the_mask(trace):
    mask = _mask_of_patches([7, 8], [13], [14])
    coverage = mask_coverage(trace.image, mask)
    assert coverage[[7, 8]].tolist() == [1.0, 1.0]
    assert coverage[13] == pytest.approx(11 / 21) and coverage[14] == pytest.approx(10 / 21)
    assert np.flatnonzero(mask_region(trace.image, mask)).tolist() == [7, 8, 13]


def test_the_mask_as_a_map_scores_iou_one_at_its_own_fraction(trace):
    on_mask = mask_region(trace.image, _mask_of_patches([7, 8], [13], [14]))
    inside = region(trace.image, [tuple(BOX)])
    near = Grid.of(trace.image).near(inside, 0)
    as_map = on_mask.astype(float)
    exact = score_map(as_map, inside, near, 3 / 24, on_mask)  # k = 3: the mask's 3 patches
    assert exact["iou_mask"] == 1.0 and exact["mask_mass"] == 1.0
    assert exact["iou_top"] == pytest.approx(3 / 4)  # the box region adds patch 14
    wider = score_map(as_map, inside, near, 0.2, on_mask)  # k = 5: 2 zero patches (0, 1)
    assert wider["iou_mask"] == pytest.approx(3 / 5) and wider["mask_mass"] == 1.0
    assert "iou_mask" not in score_map(as_map, inside, near, 0.2)


@pytest.mark.parametrize(("patches", "region_size", "k"), [(24, 3, 5), (64, 7, 13), (30, 12, 2)])
def test_iou_chance_matches_random_patch_sets(patches, region_size, k):
    rng = np.random.default_rng(0)
    inside = np.zeros(patches, bool)
    inside[rng.choice(patches, region_size, replace=False)] = True
    draws = 10000
    values = rng.random((draws, patches))  # uniform maps: their top k is a random k-subset
    ious, masses = [], []
    for row in values:
        scores = score_map(row, inside, inside, k / patches, inside)
        ious.append(scores["iou_mask"])
        masses.append(scores["mask_mass"])
    levels = chance(inside, inside, k / patches, inside)
    for name, sample in (("iou_mask", ious), ("mask_mass", masses)):
        error = np.std(sample) / np.sqrt(draws)
        assert abs(np.mean(sample) - levels[name]) < 4 * error, name
    assert levels["iou_mask"] == pytest.approx(expected_iou(patches, region_size, k))
    assert levels["iou_top"] == levels["iou_mask"]  # the same region given as both


def _ground_truth(scene) -> dict:
    return {"world_seed": scene.seed, "objects": scene.ground_truth()["objects"]}


def test_target_mask_is_the_redrawn_objects_and_refused_when_it_differs():
    scene = make_scene(11)
    target = scene.objects[1]
    prompt = f"What color is the {target.shape}?"
    mask, why = target_mask({"ground_truth": _ground_truth(scene)}, prompt)
    assert why == "" and np.array_equal(mask, target.mask)
    asked = make_scene(11, 2)  # the Ask page's scene: a seed and a number of shapes
    assert asked.ground_truth() != scene.ground_truth()  # the seed alone redraws another scene
    found, _ = target_mask(
        {"ground_truth": _ground_truth(asked)},
        f"Where is the {asked.objects[0].colour} {asked.objects[0].shape}?",
    )
    assert np.array_equal(found, asked.objects[0].mask)
    moved = _ground_truth(scene)
    moved["objects"][1]["box"] = [b + 1 for b in moved["objects"][1]["box"]]
    mask, why = target_mask({"ground_truth": moved}, prompt)
    assert mask is None and "does not match" in why
    manifest = {"annotations": {"boxes": [[0, 0, 5, 5]]}, "ground_truth": _ground_truth(scene)}
    assert target_mask(manifest, prompt)[0] is None


@pytest.fixture(scope="module")
def demo_traces(demo_model):
    """Colour questions about demo scenes, recorded by the bundled model (no relevancy: the
    attention maps and the random map are enough to score), with their scenes."""
    from engine.inputs import load_image
    from engine.recorder import RecordOptions, record
    from store.schema import GenerationSettings

    options = RecordOptions(GenerationSettings(max_new_tokens=2), relevancy=False)
    out = []
    for seed in (3, 8):
        scene = make_scene(seed)
        target = scene.objects[0]
        image = load_image(scene.image, f"scene-{seed}.png")
        trace = record(demo_model, image, f"What color is the {target.shape}?", options)
        trace.info.extra["ground_truth"] = scene.ground_truth()
        out.append((scene, trace))
    return out


def test_demo_traces_get_mask_scores_and_a_changed_scene_gets_none(tmp_path, demo_traces):
    store = TraceStore(tmp_path / "store")
    method = get("localisation")()
    for scene, trace in demo_traces:
        stored = store.open(store.add(trace))
        assert method.skip_reason(stored) is None
        result = method.run(stored, LocalisationParams())
        cells = stored.image.patch_boxes.astype(int)  # the demo grid: whole 8 px cells
        pixels = scene.objects[0].mask
        expected = [
            p for p, (x0, y0, x1, y1) in enumerate(cells) if pixels[y0:y1, x0:x1].mean() >= 0.5
        ]
        assert result.provenance["mask_patches"] == expected and expected
        for name in ("attention.head_mean", "random"):
            assert set(result.per_token[name]) == {*SCORES, *MASK_SCORES}
        g, k = stored.image.num_patches, round(0.2 * stored.image.num_patches)
        assert result.headline["iou_mask.chance"] == pytest.approx(
            expected_iou(g, len(expected), k)
        )
        assert result.headline["mask_mass.chance"] == pytest.approx(len(expected) / g)
    scene, trace = demo_traces[0]
    truth = scene.ground_truth() | {"world_seed": scene.seed + 1}  # not this image's scene
    changed = replace(trace, info=replace(trace.info, extra={"ground_truth": truth}))
    other = TraceStore(tmp_path / "other")
    stored = other.open(other.add(changed))
    result = method.run(stored, LocalisationParams())
    assert "does not match" in result.provenance["mask_skipped"]
    assert set(result.per_token["random"]) == set(SCORES)  # box scores still there


def test_a_format_1_trace_is_not_scored(tmp_path):
    """lvlm-interpret 0.1's file: patch boxes in the processed image's pixels, so boxes in
    the original's pixels would land on the wrong patches."""
    legacy = Path(__file__).parents[1] / "dashboard" / "fixtures"
    source = legacy / "66666666666666666666666666666666.h5"
    open_store(tmp_path, writable=True).close()
    target = tmp_path / "data" / "66" / source.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    reindex_store(tmp_path)
    with open_store(tmp_path) as store, store.open(source.stem) as trace:
        assert trace.image.processed is not None
        assert "format 1-2" in legacy_reason(trace)
