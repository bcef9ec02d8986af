"""The Dataset page on a store of two checkpoints (AppTest of the real app)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dashboard.components import dataset as summaries
from store import TraceQuery, open_store
from store.dataset import SUMMARY_KEY, SUMMARY_KIND, pairs_page
from store.synthetic import make_synthetic_trace
from tests.dashboard.conftest import MD_IMAGE, XSS_SCRIPT
from tests.dashboard.test_defects import _markdown

REVISIONS = ("rev-a", "rev-b")
QUESTIONS = 5
SHAPE = dict(num_layers=2, num_heads=2, prompt_len=36, answer_len=3, grid=(3, 4))


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Five questions, each on both checkpoints; rev-b answers questions 1 and 3 otherwise
    (and wrongly); one answer carries hostile text."""
    directory = tmp_path_factory.mktemp("two-checkpoints")
    with open_store(directory, writable=True) as store:
        for q in range(QUESTIONS):
            for revision in REVISIONS:
                trace = make_synthetic_trace(**SHAPE, seed=300 + q, model_revision=revision)
                wrong = revision == "rev-b" and q in (1, 3)
                answer = (
                    f"{XSS_SCRIPT} {MD_IMAGE}"
                    if wrong and q == 3
                    else ("wrong" if wrong else trace.info.answer)
                )
                info = dataclasses.replace(
                    trace.info,
                    answer=answer,
                    reference_answer=trace.info.answer,
                    correct=not wrong,
                    tags=["colour" if q % 2 else "count"],
                )
                store.add(dataclasses.replace(trace, info=info))
    return directory


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.get("error"), [e.value for e in at.get("error")]


def test_accuracy_pairs_and_aggregates(app, two_checkpoints):
    at = app("dataset", store_dir=two_checkpoints)
    _ok(at)
    table = at.dataframe[0].value
    assert list(table["traces"]) == [QUESTIONS, QUESTIONS]
    assert list(table["correct"]) == [QUESTIONS, QUESTIONS - 2]
    by_tag = at.dataframe[1].value
    assert set(by_tag["tag"]) == {"colour", "count"}
    buttons = [b for b in at.button if b.label == "Compare"]
    assert len(buttons) == QUESTIONS
    captions = "\n".join(c.value for c in at.caption)
    assert f"{QUESTIONS} questions answered by both, 2 of them differently" in captions
    # the two differing pairs come first
    texts = [t.value for t in at.text]
    wrong_rows = [i for i, t in enumerate(texts) if t.startswith("✗")]
    assert len(wrong_rows) == 2 and XSS_SCRIPT in texts[wrong_rows[1]] + texts[wrong_rows[0]]
    assert not any(MD_IMAGE in body or XSS_SCRIPT in body for body in _markdown(at))
    assert len(at.get("vega_lite_chart")) >= 3  # accuracy, head shares x2, divergence
    assert len(at.get("imgs") or at.get("image")) == 2  # mean relevancy of one kind, per checkpoint
    with open_store(two_checkpoints) as store:
        ids = [i.trace_id for i in store.query(TraceQuery(limit=100)).items]
        stored = [store.get_result(i, SUMMARY_KIND, SUMMARY_KEY) for i in ids]
    first_id = ids[0]
    shares = [summaries.decode(s, summaries.SHARE) for s in stored]
    assert all(s is not None and s.shape == (2, 2) for s in shares)
    with open_store(two_checkpoints) as store, store.open(first_id) as trace:
        expected = trace.summaries.head_image_attention
    assert np.allclose(summaries.decode(stored[0], summaries.SHARE), expected, atol=1e-6)


def test_pair_button_opens_compare_with_both_traces(app, two_checkpoints):
    at = app("dataset", store_dir=two_checkpoints)
    with open_store(two_checkpoints) as store:
        first = pairs_page(store, TraceQuery(), limit=1).items[0]
    assert first.differs
    next(b for b in at.button if b.label == "Compare").click().run()
    _ok(at)
    assert at.query_params["trace"] in (first.left.trace_id, [first.left.trace_id])
    assert at.query_params["compare"] in (first.right.trace_id, [first.right.trace_id])
    assert any(t.value == "Compare" for t in at.title)


def test_filters_apply_and_one_checkpoint_is_a_message(app, two_checkpoints):
    at = app("dataset", store_dir=two_checkpoints, rev="rev-a")
    _ok(at)
    assert list(at.dataframe[0].value["traces"]) == [QUESTIONS]
    assert "One checkpoint in this set" in "\n".join(i.value for i in at.info)
    at = app("dataset", store_dir=two_checkpoints, tag="colour")
    _ok(at)
    assert list(at.dataframe[0].value["traces"]) == [2, 2]
    at = app("dataset", store_dir=two_checkpoints, q="no such words at all")
    _ok(at)
    assert "No trace matches these filters." in "\n".join(i.value for i in at.info)


def test_a_store_with_broken_legacy_and_hostile_traces_renders(app, demo_store):
    """A trace whose file is gone, a format-1 trace, a revision and answers with hostile
    text: the page shows what it can, the unreadable trace left out of the aggregates."""
    at = app("dataset")
    _ok(at)
    assert "No question (same image, same prompt)" in "\n".join(i.value for i in at.info)
    assert at.get("vega_lite_chart")
    assert not any(MD_IMAGE in body or XSS_SCRIPT in body for body in _markdown(at))


def test_normalised_grid_keeps_where_the_map_is_whatever_the_patch_grid():
    """One hot patch lands in the same part of the frame on a 3x4 and a 6x8 patch grid."""
    for grid, hot in (((3, 4), 3), ((6, 8), 7)):  # the top-right patch
        geometry = make_synthetic_trace(**{**SHAPE, "grid": grid, "prompt_len": 60}, seed=1).image
        values = np.zeros(geometry.num_patches)
        values[hot] = 5.0
        cells = summaries.normalised_grid(geometry, values)
        assert cells.shape == (summaries.GRID, summaries.GRID)
        assert cells.sum() == pytest.approx(1.0)
        rows, cols = np.nonzero(cells)
        assert rows.max() < summaries.GRID // 2 and cols.min() >= summaries.GRID // 2
    assert summaries.normalised_grid(geometry, np.zeros(geometry.num_patches)) is None


def test_summaries_round_trip_and_means_skip_other_shapes():
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    stored = [{summaries.SHARE: summaries.encode(x)} for x in (a, b)]
    stored += [{summaries.SHARE: summaries.encode(np.ones((4, 4)))}, None, {"junk": 1}]
    mean, count = summaries.mean_of(stored, summaries.SHARE)
    assert count == 2 and np.allclose(mean, (a + b) / 2)
    delta, pairs = summaries.head_divergence([(stored[0], stored[1]), (stored[0], stored[2])])
    assert pairs == 1 and np.allclose(delta, np.abs(b - a))
    assert summaries.decode({summaries.SHARE: {"shape": [2], "f32": "%%"}}, summaries.SHARE) is None


@pytest.fixture(scope="module")
def recorded_pairs(tmp_path_factory, demo_checkpoint, random_llava_dir):
    """Five demo questions (one per kind) recorded by the real `record-dataset` command on
    the bundled checkpoint and on a randomly initialised LLaVA of the same architecture."""
    from typer.testing import CliRunner

    from engine.cli import app

    root = tmp_path_factory.mktemp("recorded-pairs")
    runner = CliRunner()
    made = runner.invoke(app, ["demo", "manifest", "--out", str(root / "m"), "--count", "5"])
    assert made.exit_code == 0, made.output
    for model in (demo_checkpoint, random_llava_dir):
        args = [str(root / "m" / "manifest.jsonl"), "--model", str(model)]
        result = runner.invoke(
            app, ["record-dataset", *args, "--store", str(root / "s"), "--max-new-tokens", "3"]
        )
        assert result.exit_code == 0, result.output
    return root / "s"


@pytest.mark.slow
def test_real_recordings_of_two_checkpoints(app, recorded_pairs):
    at = app("dataset", store_dir=recorded_pairs)
    _ok(at)
    table = at.dataframe[0].value
    assert list(table["traces"]) == [5, 5] and list(table["judged"]) == [5, 5]
    by_tag = at.dataframe[1].value
    assert {"colour", "shape", "position", "count", "existence"} <= set(by_tag["tag"])
    assert len([b for b in at.button if b.label == "Compare"]) == 5
    assert len(at.get("imgs") or at.get("image")) == 2  # a mean relevancy map per checkpoint
    kind = next(s for s in at.selectbox if s.label == "Question kind (tag)")
    assert kind.value == "colour" and kind.options[-1] == "demo"  # on every trace: not a kind
    next(b for b in at.button if b.label == "Compare").click().run()
    _ok(at)
    assert any(t.value == "Compare" for t in at.title) and at.dataframe[0].value is not None
