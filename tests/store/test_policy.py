"""Recording policies: the rows each keeps, what each costs, and the default by size."""

from __future__ import annotations

import numpy as np
import pytest

from store import RecordingPolicy, TokenRole, choose_policy, policy_costs, policy_of, policy_rows
from store.synthetic import make_synthetic_trace

GIB = 2**30


def test_rows_of_each_policy():
    tokens = make_synthetic_trace(prompt_len=40, answer_len=5, grid=(3, 4)).tokens
    p = tokens.prompt_length
    assert policy_rows(RecordingPolicy.FULL, tokens) is None
    assert policy_rows("answer_rows", tokens).tolist() == [p - 1, p, p + 1, p + 2, p + 3]
    text = policy_rows(RecordingPolicy.TEXT_ROWS, tokens)
    assert len(text) == 45 - 12 and not (tokens.roles[text] == TokenRole.IMAGE).any()
    for policy in RecordingPolicy:
        assert policy_of(policy_rows(policy, tokens), tokens) is policy
    assert policy_of(np.array([0, 1], np.int32), tokens) is None


def test_answer_rows_are_kept_even_when_the_prompt_ends_on_the_image():
    tokens = make_synthetic_trace(prompt_len=17, answer_len=3, grid=(3, 4)).tokens
    assert tokens.roles[tokens.prompt_length - 1] == TokenRole.IMAGE
    text = policy_rows(RecordingPolicy.TEXT_ROWS, tokens)
    assert tokens.answer_row(0) in text


def test_costs_count_fp16_values():
    costs = {c.policy: c for c in policy_costs(3000, 2880, 20, 32, 32)}
    assert costs[RecordingPolicy.FULL].bytes == 32 * 32 * 3000 * 3000 * 2
    assert costs[RecordingPolicy.TEXT_ROWS].rows == 120
    assert costs[RecordingPolicy.ANSWER_ROWS].bytes == 32 * 32 * 20 * 3000 * 2
    assert all(c.reads for c in costs.values())


@pytest.mark.parametrize(
    ("seq_len", "image_tokens", "expected"),
    [
        (700, 576, RecordingPolicy.FULL),  # LLaVA-1.5-7B: 1.0 GB, kept whole
        (3000, 2880, RecordingPolicy.TEXT_ROWS),  # LLaVA-NeXT-7B: 18 GB full, 0.7 GB text rows
        (20_000, 2880, RecordingPolicy.ANSWER_ROWS),  # a long document: text rows 0.7 TB
    ],
)
def test_default_is_the_richest_policy_under_a_gib(seq_len, image_tokens, expected):
    assert choose_policy(seq_len, image_tokens, 20, 32, 32) is expected
    full = 32 * 32 * seq_len * seq_len * 2
    assert (full <= GIB) == (expected is RecordingPolicy.FULL)


def test_answer_rows_are_the_floor_whatever_their_size():
    assert choose_policy(200_000, 0, 100, 80, 64) is RecordingPolicy.ANSWER_ROWS
