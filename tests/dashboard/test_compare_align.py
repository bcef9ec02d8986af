"""Answers aligned by word: repeated words, insertions, changes, different tokenisations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dashboard.components import align
from dashboard.components.text import Word, words
from store import TokenRole, open_store
from store.synthetic import make_synthetic_trace


def _words(*tokens: str) -> list[Word]:
    """One token per word (a word-level tokenizer, like the demo model's)."""
    return [Word(i, (i,), t) for i, t in enumerate(tokens)]


def _tokenised(texts: list[str], word_ids: list[int]) -> list[Word]:
    """Words of an answer as the dashboard groups them: the trace's word ids."""
    roles = np.full(len(texts), int(TokenRole.ANSWER), np.int8)
    return words(texts, roles, np.asarray(word_ids, np.int32), TokenRole.ANSWER)


def _ops(alignment) -> list[tuple[str, str | None, str | None]]:
    return [
        (s.op, s.left.text if s.left else None, s.right.text if s.right else None)
        for s in alignment
    ]


def test_an_inserted_word_keeps_the_rest_aligned_by_word_not_position():
    result = align.align(_words("a", "red", "circle"), _words("a", "big", "red", "circle"))
    assert _ops(result) == [
        ("equal", "a", "a"),
        ("inserted", None, "big"),
        ("equal", "red", "red"),
        ("equal", "circle", "circle"),
    ]
    # the left "red" (token 1) is compared with the right "red" (token 2), not "big"
    assert align.partners(result, [1]) == (2,)
    assert align.partners(result, [0, 2]) == (0, 3)


def test_repeated_words_pair_with_the_occurrence_that_keeps_the_order():
    left = _words("the", "red", "the", "blue")
    right = _words("the", "blue")
    assert _ops(align.align(left, right)) == [
        ("deleted", "the", None),
        ("deleted", "red", None),
        ("equal", "the", "the"),
        ("equal", "blue", "blue"),
    ]
    both = align.align(_words("yes", "yes", "no"), _words("yes", "no", "no"))
    assert _ops(both) == [
        ("deleted", "yes", None),
        ("equal", "yes", "yes"),
        ("equal", "no", "no"),
        ("inserted", None, "no"),
    ]
    assert align.partners(both, [1]) == (0,) and align.partners(both, [0]) == ()


def test_changed_words_pair_in_order_and_the_surplus_is_deleted():
    result = align.align(_words("top", "left", "corner"), _words("bottom", "right", "corner"))
    assert _ops(result) == [
        ("changed", "top", "bottom"),
        ("changed", "left", "right"),
        ("equal", "corner", "corner"),
    ]
    result = align.align(_words("a", "dark", "red", "x"), _words("a", "blue", "x"))
    assert _ops(result) == [
        ("equal", "a", "a"),
        ("changed", "dark", "blue"),
        ("deleted", "red", None),
        ("equal", "x", "x"),
    ]
    assert align.partners(result, [2]) == ()  # a deleted word has no partner


def test_the_same_words_tokenised_differently_are_equal():
    left = _tokenised(["▁The", "▁umb", "rella", "▁is", "▁Red", "."], [0, 1, 1, 2, 3, 4])
    right = _tokenised(["the", " umbrella", " is", " red", "."], [0, 1, 2, 3, 4])
    result = align.align(left, right)
    assert [s.op for s in result] == ["equal"] * 5
    assert align.partners(result, [2]) == (1,)  # "rella" is part of umbrella: token 1 on the right
    assert align.partners(result, [1, 2]) == (1,)


def test_normalisation_case_markers_punctuation_and_unicode():
    assert align.normalise("▁Umbrella,") == "umbrella"
    assert align.normalise("ĠRED") == "red"
    assert align.normalise("?") == "?"  # punctuation on its own stays itself
    assert align.normalise("ﬁsh") == "fish"  # NFKC ligature
    assert align.normalise("café") == align.normalise("cafe\u0301")


def test_diff_pieces_strike_the_left_and_insert_the_right():
    result = align.align(_words("a", "red", "circle"), _words("a", "blue", "big", "circle"))
    assert [(p.op, p.text) for p in align.diff_pieces(result)] == [
        ("equal", "a"),
        ("delete", "red"),
        ("insert", "blue big"),
        ("equal", "circle"),
    ]
    assert align.diff_pieces(align.align([], [])) == []


def test_word_probability_multiplies_its_tokens_and_top_k_lookup():
    word = Word(0, (1, 2), "umbrella")
    assert align.word_probability(word, np.array([0.9, 0.5, 0.4])) == 0.5 * 0.4
    texts = [["▁red", "▁blue"], ["x", "y"]]
    probs = np.array([[0.7, 0.2], [0.6, 0.4]])
    assert align.top_k_probability(texts, probs, 0, "Blue") == 0.2
    assert align.top_k_probability(texts, probs, 0, "green") is None


LEFT_ANSWER = ["a", "red", "circle", "in", "the", "top", "left", "corner"]
RIGHT_ANSWER = ["a", "big", "red", "circle", "in", "the", "top", "left"]


def _answering(trace, words: list[str], revision: str):
    """``trace`` with its answer tokens spelling ``words`` (one token per word)."""
    tokens = trace.tokens
    texts = [*tokens.text[: tokens.prompt_length], *words]
    info = dataclasses.replace(trace.info, answer=" ".join(words), model_revision=revision)
    return dataclasses.replace(trace, info=info, tokens=dataclasses.replace(tokens, text=texts))


@pytest.fixture(scope="module")
def compare_store(tmp_path_factory):
    """One image asked of two checkpoints whose answers differ by an inserted and a dropped
    word; and a third trace of another image size."""
    directory = tmp_path_factory.mktemp("compare-words")
    with open_store(directory, writable=True) as store:
        left = store.add(_answering(make_synthetic_trace(seed=40), LEFT_ANSWER, "rev-a"))
        right = store.add(_answering(make_synthetic_trace(seed=40), RIGHT_ANSWER, "rev-b"))
        other = store.add(make_synthetic_trace(seed=41, grid=(3, 4)))
    return directory, left, right, other


def _captions(at) -> str:
    return "\n".join(c.value for c in at.caption)


def test_compare_page_aligns_the_maps_by_word(app, compare_store):
    directory, left, right, _ = compare_store
    at = app("compare", store_dir=directory, trace=left, compare=right, tokens="1")
    assert not at.exception and not at.error
    words = at.dataframe[0].value
    assert list(words["change"]) == ["equal", "inserted", *["equal"] * 6, "deleted"]
    assert list(words["right word"])[1] == "big" and list(words["left word"])[-1] == "corner"
    equal = words[words["change"] == "equal"]
    assert (equal["Δp (right − left)"] - (equal["p right"] - equal["p left"])).abs().max() < 1e-9
    body = "".join(e.proto.body for e in at.get("html"))
    assert "<ins" in body and "big" in body and "<del" in body and "corner" in body
    captions = _captions(at)
    assert "left: red (answer tokens 1)" in captions.replace("\\", "")
    assert "right: red (answer tokens 2)" in captions.replace("\\", "")  # by word, not position
    assert not at.warning  # the same image
    assert len(at.get("imgs") or at.get("image")) >= 3  # left, right, difference
    at = app("compare", store_dir=directory, trace=left, compare=right, tokens="7")
    assert "no counterpart in the right answer" in "\n".join(i.value for i in at.info)


def test_compare_of_other_image_sizes_differs_on_the_normalised_grid(app, compare_store):
    directory, left, _, other = compare_store
    at = app("compare", store_dir=directory, trace=left, compare=other, tokens="0")
    assert not at.exception and not at.error
    assert "normalised 16×16 grid" in _captions(at)
    assert "patches do not line up" in _captions(at)
    assert "two different images" in at.warning[0].value
    assert len(at.get("imgs") or at.get("image")) >= 3
