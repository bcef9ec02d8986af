"""bench/bench_quality.py on three real questions: recorded on both bundled checkpoints, every
registered method run on them (steps 2, no CLEANN: its cost is the bench's, not CI's), and the
tables checked against the stored results they aggregate. The ROC aggregation is checked on a
case small enough to count by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.bench_quality import (
    BASE_MAPS,
    Settings,
    Word,
    analyse_all,
    content_tokens,
    flag_summary,
    labelled_words,
    markdown,
    question_traces,
    record,
    report,
    roc_rows,
)
from methods.localisation import SCORES
from methods.maps import RANDOM
from store import open_store


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    settings = Settings(count=3, steps=2, cleann_count=0, log=lambda line: None)
    record(root / "store", settings)
    analyse_all(root / "store", settings)
    result = report(root / "store", root / "out", settings)
    return root, settings, result


def test_every_map_has_a_row_beside_random_and_chance(quality):
    root, settings, result = quality
    rows = result["maps"]["maps"]
    expected = {
        "relevancy.llm",
        "relevancy.vision",
        "relevancy.all",
        "relevancy.llm_through_vision",
        "attention.head_mean",
        "attention.best_head",
        RANDOM,
    }
    assert expected <= set(rows)
    with open_store(root / "store" / "main") as main:
        ids = question_traces(main, settings.count, settings.seed)
        assert len(ids) == 3
        tokens, chance, by_map = 0, {s: [] for s in SCORES}, {}
        for trace_id in ids:
            with main.open(trace_id) as trace:
                p = trace.prompt_length
                keep = content_tokens(trace.tokens.text[p:], trace.tokens.word_ids[p:])
            tokens += len(keep)
            results = main.list_results(trace_id, "faithfulness")
            (local,) = [r for r in results.values() if r["method"] == "localisation"]
            for s in SCORES:
                chance[s] += [local["headline"][f"{s}.chance"]] * len(keep)
            for payload in results.values():
                if payload["method"] == "deletion" and payload["params"]["maps"] == BASE_MAPS:
                    for name, aucs in payload["per_token"]["auc"].items():
                        by_map.setdefault(name, []).extend(aucs[k] for k in keep)
    assert tokens > 0
    for name in expected:
        row = rows[name]
        assert set(SCORES) | {"deletion", "insertion"} <= set(row)
        assert row["deletion"]["n"] == tokens and row["deletion"]["questions"] == 3
        assert row["deletion"]["mean"] == pytest.approx(np.mean(by_map[name]))
        paired = np.mean(np.subtract(by_map[name], by_map[RANDOM]))
        assert row["deletion"]["vs_random"]["mean"] == pytest.approx(paired)
    for s in SCORES:
        assert result["maps"]["chance"][s]["mean"] == pytest.approx(np.mean(chance[s]))
        assert 0 < result["maps"]["chance"][s]["mean"] < 1
    text = (root / "out" / "quality.md").read_text()
    assert text == markdown(result)
    lines = text.splitlines()
    for name in rows:
        assert sum(line.startswith(f"| {name} |") for line in lines) == 1
    assert any(line.startswith("| chance |") for line in lines)
    json.loads((root / "out" / "quality.json").read_text(), parse_constant=pytest.fail)


def test_a_rerun_computes_nothing_new(quality):
    root, settings, _ = quality
    import engine.methods  # noqa: F401
    from bench.bench_quality import analyse, jobs_for
    from methods import names

    with open_store(root / "store" / "main", writable=True) as main:
        ids = question_traces(main, settings.count, settings.seed)
        assert analyse(main, ids, jobs_for("main", settings, names()), None, settings) == 0


def test_words_are_labelled_by_the_stated_rule(quality):
    root, settings, _ = quality
    with open_store(root / "store" / "weak") as weak:
        ids = question_traces(weak, settings.count, settings.seed)
        words = labelled_words(weak, ids)
        assert {w.trace_id for w in words} == set(ids)  # every answer has a content word
        for word in words:
            info = weak.get(word.trace_id)
            reference = info.reference_answer.casefold().split()
            assert word.wrong == (not info.correct and word.text.casefold() not in reference)
            assert word.bait == info.extra["hallucination_bait"]
            assert word.kind == info.extra["question_kind"]
            assert 0 <= word.scores["1 - token probability"] <= 1


def test_roc_rows_count_pairs_by_hand():
    def word(score: float, wrong: bool, bait: bool = False) -> Word:
        return Word("t", "w", wrong, bait, "existence" if bait else "colour", {"s": score})

    # wrong 0.9 beats both rights; wrong 0.7 beats 0.1 only, not 0.8: 3 of 4 pairs
    words = [word(0.9, True), word(0.8, False, True), word(0.1, False), word(0.7, True, True)]
    rows = roc_rows(words)
    assert rows["all questions"]["s"]["auc"] == pytest.approx(0.75)
    assert rows["all questions"]["s"]["words"] == 4 and rows["all questions"]["s"]["wrong"] == 2
    assert rows["hallucination-bait questions"]["s"]["auc"] == pytest.approx(0.0)
    assert rows["existence questions"]["s"]["words"] == 2
    low, high = rows["all questions"]["s"]["ci95"]
    assert 0 <= low <= 0.75 <= high <= 1
    one_class = roc_rows([word(0.5, False)])["all questions"]["s"]
    assert math.isnan(one_class["auc"])


def test_flag_summary_counts_flagged_words_by_label():
    def word(trace: str, wrong: bool, flagged: float, kind: str = "colour") -> Word:
        scores = {"flagged (grounding < 0.1)": flagged, "1 - token probability": 0.5}
        return Word(trace, "w", wrong, kind == "bait", kind, scores)

    words = [
        word("a", True, 1.0, "bait"),
        word("b", False, 1.0, "existence"),
        word("c", False, 0.0),
        word("d", True, 0.0),
    ]
    summary = flag_summary(words)
    assert (summary["wrong_flagged"], summary["wrong_words"]) == (1, 2)
    assert (summary["right_flagged"], summary["right_words"]) == (1, 2)
    assert (summary["right_existence_flagged"], summary["right_existence_words"]) == (1, 1)
    assert (summary["bait_answered_wrong"], summary["bait_flagged"]) == (1, 1)
