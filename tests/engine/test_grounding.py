"""Grounding on the bundled demo model: real traces recorded by the real command, the model
re-run with the image masked, results read back from the store; the CLI's refusals in one
line before any model loads."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.methods.grounding import Grounding, GroundingParams, masked_probabilities
from store import TraceQuery, open_store
from tests.engine.test_cli_hostile import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def colour_trace(tmp_path_factory):
    """One demo question, "What color is the square?" -> "yellow", recorded by the main
    checkpoint: its answer can only come from the image."""
    store = tmp_path_factory.mktemp("grounding") / "store"
    args = ["demo", "record", "--store", str(store), "--count", "1", "--no-causal"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open_store(store) as opened:
        (item,) = opened.query().items
    assert item.extra["question_kind"] == "colour"
    return store, item.trace_id


def test_a_colour_answer_needs_the_image(colour_trace, demo_model):
    store, trace_id = colour_trace
    with open_store(store) as opened:
        trace = opened.open(trace_id)
        p, masked = masked_probabilities(demo_model, trace)
        recorded = np.asarray(trace.top_k.chosen_prob, np.float64)
        result = Grounding().run(trace, GroundingParams(), model=demo_model)
    # the untouched image is the recording's own forward, teacher-forced
    np.testing.assert_allclose(p, recorded, atol=1e-4)
    tokens = result.per_token
    assert tokens["words"] == ["yellow", "</s>"] and tokens["content"] == [True, False]
    assert tokens["word_tokens"] == [[0], [1]]
    # the colour word loses nearly all its probability without the image ...
    assert masked[0] < 0.2 * p[0], (p, masked)
    assert tokens["drop"][0] > 0.8 and tokens["grounding"][0] == tokens["drop"][0]
    # ... the end-of-sequence token none of it (and it is no content word, so never flagged)
    assert tokens["drop"][1] < 0.05
    assert tokens["flagged"] == [False, False]
    assert 0 <= min(tokens["image_share"]) <= max(tokens["image_share"]) <= 1
    assert result.headline == {
        "flagged_tokens": 0.0,
        "grounding.min": tokens["word_grounding"][0],
        "grounding.mean": tokens["word_grounding"][0],
    }


def test_the_threshold_decides_the_flag(colour_trace, demo_model):
    store, trace_id = colour_trace
    with open_store(store) as opened:
        trace = opened.open(trace_id)
        strict = Grounding().run(trace, GroundingParams(threshold=1.01), model=demo_model)
    # every content word's grounding is at most 1: all flagged, the end token still not
    assert strict.per_token["flagged"] == [True, False]
    assert strict.headline["flagged_tokens"] == 1.0
    assert strict.params_key != Grounding().result(GroundingParams(), {}, {}).params_key


def test_analyse_stores_grounding_and_its_metrics(colour_trace, demo_checkpoint):
    store, trace_id = colour_trace
    args = ["analyse", trace_id, "--store", str(store), "--model", str(demo_checkpoint)]
    result = CliRunner().invoke(app, [*args, "--metrics", "grounding"])
    assert result.exit_code == 0, result.output
    with open_store(store) as opened:
        (payload,) = opened.list_results(trace_id, "grounding").values()
        assert payload["method"] == "grounding" and payload["params"] == {"threshold": 0.1}
        assert payload["provenance"]["relevancy_mode"] == "llm"
        assert opened.get(trace_id).metrics["flagged_tokens"] == 0.0
        unflagged = TraceQuery(metric_ranges={"flagged_tokens": (None, 0.5)})
        assert [t.trace_id for t in opened.query(unflagged).items] == [trace_id]
        assert not opened.query(TraceQuery(metric_ranges={"flagged_tokens": (0.5, None)})).items


def test_grounding_without_model_is_one_line_exit_2(colour_trace, tmp_path):
    store, trace_id = colour_trace
    args = ["analyse", trace_id, "--store", store, "--metrics", "evidence,grounding"]
    assert_one_line_error(run_cli(args, tmp_path), "grounding re-run the model: give --model")
    with open_store(store) as opened:  # refused before anything ran: evidence stored nothing
        assert not opened.list_results(trace_id, "evidence")


def test_grounding_refuses_another_checkpoint_before_running(colour_trace):
    from engine.demo.checkpoints import DEMO_CHECKPOINTS

    store, trace_id = colour_trace
    weak = str(DEMO_CHECKPOINTS["weak"].folder)
    args = ["analyse", trace_id, "--store", str(store), "--model", weak, "--metrics", "grounding"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "not by the given model" in result.output, result.output
