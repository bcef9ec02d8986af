"""Recording policies: which LM attention rows a trace keeps, what each costs, which to pick.

A 7B-shaped LLaVA-NeXT prompt (T ~ 2,900, ~2,880 image tokens) holds ~17 GB of fp16 attention
in full; most views read only the answer's rows. The policy is chosen from the estimated size
before anything is recorded, so a long prompt never allocates a tensor it cannot keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schema import RecordingPolicy, TokenRole, TokenTable, answer_row

# The full fp16 tensor is kept up to this size (1 GiB: a few seconds to write, comfortably in
# memory on a laptop); above it the smallest policy that still fits is chosen.
FULL_BUDGET_BYTES = 1 << 30
FP16_BYTES = 2


@dataclass(frozen=True)
class PolicyCost:
    """What one policy keeps for a given sequence, as the CLI prints it."""

    policy: RecordingPolicy
    rows: int  # query rows kept per layer and head
    bytes: int  # uncompressed fp16 LM attention
    reads: str  # what views can draw from it


_READS = {
    RecordingPolicy.FULL: "every view: any token's attention, image-to-image blocks",
    RecordingPolicy.TEXT_ROWS: "attention of prompt words and answer tokens; no image rows",
    RecordingPolicy.ANSWER_ROWS: "attention of the answer tokens only",
}


def policy_row_count(
    policy: RecordingPolicy | str, seq_len: int, image_tokens: int, answer_len: int
) -> int:
    """Query rows ``policy`` keeps per layer and head (an estimate before tokenising: the
    answer's rows are assumed to be text rows, as they are when the prompt ends in text)."""
    policy = RecordingPolicy(policy)
    if policy is RecordingPolicy.FULL:
        return seq_len
    if policy is RecordingPolicy.TEXT_ROWS:
        return seq_len - image_tokens
    return answer_len


def policy_costs(
    seq_len: int, image_tokens: int, answer_len: int, layers: int, heads: int
) -> list[PolicyCost]:
    """Every policy's cost for a sequence of ``seq_len`` positions (answer included)."""
    return [
        PolicyCost(
            policy,
            rows := policy_row_count(policy, seq_len, image_tokens, answer_len),
            layers * heads * rows * seq_len * FP16_BYTES,
            _READS[policy],
        )
        for policy in RecordingPolicy
    ]


def choose_policy(
    seq_len: int,
    image_tokens: int,
    answer_len: int,
    layers: int,
    heads: int,
    budget: int = FULL_BUDGET_BYTES,
) -> RecordingPolicy:
    """The richest policy whose fp16 attention fits ``budget``: ``full``, else ``text_rows``,
    else ``answer_rows`` (kept whatever its size: it is what the answer views need)."""
    for cost in policy_costs(seq_len, image_tokens, answer_len, layers, heads):
        if cost.bytes <= budget:
            return cost.policy
    return RecordingPolicy.ANSWER_ROWS


def policy_rows(policy: RecordingPolicy | str, tokens: TokenTable) -> np.ndarray | None:
    """The sorted query rows ``policy`` keeps for ``tokens`` (None: every row). The answer's
    rows are always kept, even where the prompt ends on an image token."""
    policy = RecordingPolicy(policy)
    if policy is RecordingPolicy.FULL:
        return None
    answers = np.array(
        [answer_row(tokens.prompt_length, k) for k in range(tokens.answer_length)], np.int32
    )
    if policy is RecordingPolicy.ANSWER_ROWS:
        return answers
    text = np.flatnonzero(np.asarray(tokens.roles) != TokenRole.IMAGE)
    return np.union1d(text, answers).astype(np.int32)


def policy_of(rows: np.ndarray | None, tokens: TokenTable) -> RecordingPolicy | None:
    """The policy that keeps exactly ``rows`` of ``tokens`` (None rows: full); None when no
    named policy keeps exactly those rows."""
    for policy in RecordingPolicy:
        kept = policy_rows(policy, tokens)
        if (kept is None) == (rows is None) and (
            kept is None or np.array_equal(kept, np.asarray(rows))
        ):
            return policy
    return None
