"""Deletion and insertion on the bundled demo model, and ``lvlm-interpret analyse`` end to
end: real traces recorded by the real command (with stored occlusion maps, which deletion and
insertion score too), real forwards, results read back from the store. The batched curves
must equal one forward per image; relevancy must beat its own inverse on deletion (a test
the map can fail)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.methods.perturbation import (
    PerturbationParams,
    auc,
    chosen_maps,
    fractions,
    perturbation_curves,
)
from methods.maps import MapChoice, candidate_maps, stored_maps
from store import TraceQuery, open_store
from tests.engine.test_cli_hostile import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def demo_store(occlusion_demo_store):
    """Three demo questions (colour, shape, position), each with a stored occlusion map."""
    return occlusion_demo_store


def test_batched_curves_equal_one_forward_at_a_time(demo_store, demo_model):
    store, ids = demo_store
    with open_store(store) as opened:
        trace = opened.open(ids[0])
        maps = candidate_maps(trace, MapChoice())
        chosen = {"relevancy.llm": maps["relevancy.llm"], "random": maps["random"]}
        batched = perturbation_curves(demo_model, trace, chosen, PerturbationParams(steps=4))
        single = perturbation_curves(
            demo_model, trace, chosen, PerturbationParams(steps=4, batch=1)
        )
        recorded = np.asarray(trace.top_k.chosen_prob, np.float64)
    for mode in ("deletion", "insertion"):
        for name in chosen:
            assert batched[mode][name].shape == (len(recorded), 5)
            np.testing.assert_allclose(batched[mode][name], single[mode][name], atol=1e-6)
    # step 0 of deletion is the untouched image: the probability the recording saw
    np.testing.assert_allclose(batched["deletion"]["random"][:, 0], recorded, atol=1e-4)


def test_chosen_maps_take_stored_maps_when_given(demo_store):
    store, ids = demo_store
    params = PerturbationParams()
    with open_store(store) as opened:
        trace = opened.open(ids[0])
        stored = stored_maps(opened, ids[0])
        assert set(stored) == {"occlusion"}
        with_stored = chosen_maps(trace, params, stored)
        np.testing.assert_array_equal(with_stored["occlusion"], stored["occlusion"])
        assert "occlusion" not in chosen_maps(trace, params)
        only = chosen_maps(trace, PerturbationParams(maps="occlusion,cleann"), stored)
        assert list(only) == ["occlusion"]  # an absent map is skipped, not an error


def test_relevancy_deletes_faster_than_its_inverse(demo_store, demo_model):
    """On the questions' first answer tokens, removing patches in the relevancy map's order
    lowers the answer's probability sooner than removing them in the reverse order."""
    store, ids = demo_store
    ours, inverse = [], []
    with open_store(store) as opened:
        for trace_id in ids:
            trace = opened.open(trace_id)
            relevancy = candidate_maps(trace, MapChoice())["relevancy.llm"]
            maps = {"map": relevancy, "inverted": -relevancy}
            params = PerturbationParams(steps=8)
            curves = perturbation_curves(demo_model, trace, maps, params, ("deletion",))
            x = fractions(trace.image.num_patches, params.steps)
            ours.append(auc(x, curves["deletion"]["map"][0]))
            inverse.append(auc(x, curves["deletion"]["inverted"][0]))
    # the shape question's first token barely moves under either order (0.959 both): the
    # map must win on the others and on average
    assert sum(a < b for a, b in zip(ours, inverse, strict=True)) >= 2, (ours, inverse)
    assert np.mean(ours) < np.mean(inverse) - 0.1, (ours, inverse)


def test_analyse_stores_results_and_metrics_idempotently(demo_store, demo_checkpoint):
    store, ids = demo_store
    args = ["analyse", ids[0], "--store", str(store), "--model", str(demo_checkpoint)]
    args += ["--metrics", "localisation,deletion,insertion", "--steps", "4"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    with open_store(store) as opened:
        results = opened.list_results(ids[0], "faithfulness")
        assert sorted(k.split("@")[0] for k in results) == ["deletion", "insertion", "localisation"]
        deletion = next(v for k, v in results.items() if k.startswith("deletion@"))
        assert deletion["params"]["steps"] == 4
        assert deletion["per_token"]["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
        curves = deletion["per_token"]["curves"]
        # the stored occlusion map is scored beside the attention maps; no CLEANN was stored
        assert {"relevancy.llm", "attention.head_mean", "random", "occlusion"} <= set(curves)
        assert "cleann" not in curves
        assert deletion["provenance"]["model"]["revision"] == opened.get(ids[0]).model_revision
        key = next(k for k in results if k.startswith("localisation@"))
        assert opened.get_result(ids[0], "faithfulness", key)["method"] == "localisation"
        low = opened.query(TraceQuery(metric_ranges={"deletion_auc.random": (0.0, 2.0)}))
        assert [t.trace_id for t in low.items] == [ids[0]]
        assert not opened.query(
            TraceQuery(metric_ranges={"deletion_auc.random": (2.0, None)})
        ).items
    again = CliRunner().invoke(app, [*args[:-4], "--metrics", "localisation"])
    assert again.exit_code == 0, again.output
    with open_store(store) as opened:
        assert opened.list_results(ids[0], "faithfulness").keys() == results.keys()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--metrics", "localisation,nope"], "unknown method 'nope'"),
        (["--metrics", " , "], "--metrics is empty"),
        (["--metrics", "deletion"], "give --model"),
        (["--metrics", "deletion", "--model", "RANDOM"], "not by the given model"),
        (["--metrics", "deletion", "--model", "no/such/folder"], ""),
        (["--steps", "0"], "--steps"),
    ],
)
def test_hostile_args_one_line_exit_2(demo_store, random_llava_dir, tmp_path, extra, fragment):
    store, ids = demo_store
    extra = [str(random_llava_dir) if a == "RANDOM" else a for a in extra]
    result = run_cli(["analyse", ids[0], "--store", str(store), *extra], tmp_path)
    assert_one_line_error(result, fragment)


def test_hostile_ids_and_store(demo_store, tmp_path):
    store, ids = demo_store
    assert_one_line_error(run_cli(["analyse", "zz", "--store", store], tmp_path), "trace id")
    missing = "0" * 32
    assert_one_line_error(run_cli(["analyse", missing, "--store", store], tmp_path), "no trace")
    nowhere = tmp_path / "nowhere"
    assert_one_line_error(run_cli(["analyse", ids[0], "--store", nowhere], tmp_path), "not found")
    assert not nowhere.exists()


def test_a_follow_up_trace_is_re_read_with_its_conversation(tmp_path, demo_model):
    """A follow-up (asked after earlier turns, as the Ask page records them) re-reads its
    image with those turns in the chat: the untouched image gives the recorded probabilities
    rather than a refusal that the prompt does not tokenise to the stored tokens."""
    from engine.demo.world import make_scene
    from engine.inputs import load_image
    from engine.methods.perturbation import answer_probabilities
    from engine.recording import RecordRequest, record_into_store

    scene = make_scene(5)
    request = RecordRequest(
        (load_image(scene.image, "scene.png"),),
        "What shape is the red object?",
        history=(("How many shapes are there?", "three"),),
    )
    with open_store(tmp_path / "store", writable=True) as opened:
        trace_id = record_into_store(opened, demo_model, request).trace_id
        trace = opened.open(trace_id)
        probs = answer_probabilities(demo_model, trace, [[scene.image]], batch=1)[0]
        np.testing.assert_allclose(probs, trace.top_k.chosen_prob, atol=1e-4)
