"""What the Ask page says about live questions: limits, job progress, the conversation.

Kept apart from the page so each sentence is tested without a browser or a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from store import TraceInfo

CONVERSATION_LIMIT = 50  # turns shown; a longer chain is cut at its oldest end


def size_label(count: int) -> str:
    """A byte count as people read limits: "20 MB", "512 KB", "900 bytes" (powers of 1024)."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} bytes"


def image_limits(max_bytes: int, max_side: int) -> str:
    return f"At most {size_label(max_bytes)} and {max_side} pixels on each side."


@dataclass(frozen=True)
class Progress:
    """A job's state as one line, and how far it is (0..1) while it runs."""

    line: str
    fraction: float | None = None
    finished: bool = False
    failed: bool = False


def progress(
    state: str, position: int | None, fraction: float, text: str, error: str | None
) -> Progress:
    """How a queued, running, done or failed job is shown.

    ``position`` is the number of jobs ahead of this one (0: next); model text and error
    messages are passed through unchanged: the page shows them as plain text.
    """
    if state == "queued":
        ahead = (
            "next in line"
            if not position
            else f"{position} question{'s' if position != 1 else ''} ahead"
        )
        return Progress(f"Queued: {ahead}.")
    if state == "running":
        share = min(max(float(fraction), 0.0), 1.0)
        return Progress(f"Running: {text}" if text else "Running.", fraction=share)
    if state == "done":
        return Progress("Done.", fraction=1.0, finished=True)
    first = (error or "").strip().splitlines()
    return Progress(
        f"Failed: {first[0] if first else 'the worker gave no reason'}",
        finished=True,
        failed=True,
    )


def conversation(
    trace_id: str, lookup: Callable[[str], TraceInfo | None], limit: int = CONVERSATION_LIMIT
) -> list[TraceInfo]:
    """The turns that led to ``trace_id``, oldest first, following ``parent_trace_id``.

    A parent that was deleted ends the chain there; a chain that loops (ids are content
    hashes, so only a hand-edited index could make one) or runs past ``limit`` is cut.
    """
    turns: list[TraceInfo] = []
    seen: set[str] = set()
    current: str | None = trace_id
    while current and current not in seen and len(turns) < limit:
        seen.add(current)
        info = lookup(current)
        if info is None:
            break
        turns.append(info)
        parent = info.extra.get("parent_trace_id")
        current = parent if isinstance(parent, str) else None
    return turns[::-1]


def edit_note(info: TraceInfo) -> str | None:
    """ "Edited from <id>: <edit>" for a trace asked about an edited image, else ``None``."""
    source = info.extra.get("edited_from")
    if not isinstance(source, str):
        return None
    edit = info.extra.get("edit")
    return f"Image edited from trace {source[:8]}" + (f": {edit}" if edit else "")
