"""What a view needs from a trace, and the one line it shows when the trace lacks it.

A recording policy keeps only some LM attention query rows (``store.RecordingPolicy``); a
view that reads other rows says which policy the trace was recorded under and which one to
record with, instead of failing on the read.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from store import policy_of
from store.schema import RecordingPolicy, TokenTable

_KEPT = {
    RecordingPolicy.TEXT_ROWS: "the rows of prompt words and answer tokens",
    RecordingPolicy.ANSWER_ROWS: "only the answer tokens' rows",
}


def missing(kept: np.ndarray | None, rows: Iterable[int]) -> list[int]:
    """The wanted query rows the trace did not keep."""
    wanted = np.asarray(sorted(set(rows)), np.int64)
    if kept is None:
        return []
    return wanted[~np.isin(wanted, kept)].tolist()


def rows_note(tokens: TokenTable, kept: np.ndarray | None, what: str, needs: str) -> str:
    """One line: what the trace kept, what the view needs, how to record it.

    e.g. "This trace kept only the answer tokens' rows (policy answer_rows): text → image
    attention of the prompt needs the prompt's rows; record with --policy text_rows or full."
    """
    policy = policy_of(kept, tokens)
    name = policy.value if policy else "custom"
    kept_text = _KEPT.get(policy, f"{0 if kept is None else len(kept)} attention rows")
    record = (
        "--policy full" if policy is RecordingPolicy.TEXT_ROWS else "--policy text_rows or full"
    )
    return (
        f"This trace kept {kept_text} (policy {name}): {what} needs {needs}; record with {record}."
    )
