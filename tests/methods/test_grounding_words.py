"""The torch-free half of grounding: word merging, the content-word test, the drop, the flag
rule and the ROC AUC (checked against SciPy's Mann-Whitney U)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from methods.grounding import (
    answer_words,
    flag_words,
    image_share,
    is_content,
    relative_drop,
    roc_auc,
    word_grounding,
    wrong_words,
)
from store.schema import Relevancy


def test_sub_word_tokens_merge_by_word_id():
    texts = ["The", " umb", "rella", " is", " red", ".", "</s>"]
    words = answer_words(texts, [4, 5, 5, 6, 7, 8, 9])
    assert [w.text for w in words] == ["The", "umbrella", "is", "red", ".", "</s>"]
    assert [w.tokens for w in words] == [(0,), (1, 2), (3,), (4,), (5,), (6,)]
    assert answer_words([], []) == []
    # equal ids that are not consecutive are two words (ids restart per segment)
    assert [w.tokens for w in answer_words(["a", "b", "c"], [1, 2, 1])] == [(0,), (1,), (2,)]


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("red", True),
        (" Triangle", True),
        ("yes", True),
        ("no", True),
        ("top", True),
        ("the", False),
        ("Is", False),
        ("</s>", False),
        (".", False),
        ("3", False),
        ("", False),
    ],
)
def test_content_words(text, content):
    assert is_content(text) is content


def test_relative_drop_is_clipped_and_safe_at_zero():
    p = np.array([0.8, 0.5, 0.2, 0.0])
    masked = np.array([0.2, 0.9, 0.2, 0.3])
    np.testing.assert_allclose(relative_drop(p, masked), [0.75, 0.0, 0.0, 0.0])


def test_word_grounding_is_the_max_and_flags_only_low_content_words():
    words = answer_words(["the", " umb", "rella", " red", "</s>"], [1, 2, 2, 3, 4])
    grounding = np.array([0.0, 0.6, 0.05, 0.1, 0.0])
    np.testing.assert_allclose(word_grounding(grounding, words), [0.0, 0.6, 0.1, 0.0])
    assert flag_words(words, grounding, 0.3) == [False, False, True, False]
    assert flag_words(words, grounding, 0.05) == [False, False, False, False]
    assert wrong_words(words, "a red umbrella") == [False, False, False, False]
    assert wrong_words(words, "Blue") == [False, True, True, False]


def test_image_share_counts_cross_attention_keys_as_image():
    llm = np.array([[0.1, 0.2, 0.2], [0.0, -1.0, 0.4]])  # [N=2, T=3], image at position 1
    plain = Relevancy(llm, np.zeros((2, 4)), None, np.zeros((2, 4)))
    np.testing.assert_allclose(image_share(plain, np.array([1])), [0.4, 0.0])
    keys = np.array([[0.5], [0.6]])
    crossed = Relevancy(llm, np.zeros((2, 4)), None, np.zeros((2, 4)), llm_keys=keys)
    np.testing.assert_allclose(image_share(crossed, np.array([], int)), [0.5, 0.6])


def test_roc_auc_matches_mann_whitney_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(80) < 0.3
    scores = np.round(rng.random(80), 1) + 0.2 * labels  # many ties
    u = mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert roc_auc(labels, scores) == pytest.approx(u / (labels.sum() * (~labels).sum()))
    assert roc_auc([True, False], [1.0, 0.0]) == 1.0
    assert roc_auc([True, False], [0.0, 1.0]) == 0.0
    assert roc_auc([True, False], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([True, True], [0.1, 0.2]))
