"""Browse filters and their URL form, so a filtered, paged view can be shared and reloaded.

The URL holds only non-default values; parsing tolerates hand-edited junk by dropping it.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date

from store import TraceQuery

SORT_COLUMNS = ("created_at", "model_id", "model_revision", "prompt", "answer", "correct")
PAGE_SIZE = 25
MAX_PAGE = 10**6  # far past any store's end; keeps the SQL offset a small integer
MAX_TEXT = 200  # characters of a text filter
FLAGGED_METRIC = "flagged_tokens"  # content words flagged as weakly grounded (grounding method)


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is None or math.isfinite(value) else None


def _date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _bool(text: str | None) -> bool | None:
    return {"yes": True, "no": False}.get(text or "")


def _positive_int(text: str | None, default: int, upper: int = MAX_PAGE) -> int:
    """A whole number ``1..upper`` written in decimal digits; ``default`` for anything else
    (``1e30``, ``-3``, a 40-digit number that would overflow SQL's integers)."""
    text = (text or "").strip()
    if not text.isdecimal() or len(text) > len(str(upper)):
        return default
    return min(max(1, int(text)), upper)


def clean_text(text: str | None) -> str | None:
    """A text filter as people type it: control characters (a NUL from ``%00`` breaks SQL)
    removed, surrounding space trimmed, at most ``MAX_TEXT`` characters; empty is ``None``."""
    cleaned = "".join(c for c in (text or "") if unicodedata.category(c) != "Cc").strip()
    return cleaned[:MAX_TEXT] or None


@dataclass(frozen=True)
class BrowseFilters:
    """What the Browse table shows; one field per filter widget."""

    model: str | None = None
    revision: str | None = None
    text: str | None = None  # matches prompt or answer
    answer: str | None = None  # matches the answer only
    answer_token: str | None = None  # one whole generated token (case ignored)
    tag: str | None = None
    correct: bool | None = None
    after: date | None = None
    before: date | None = None
    metric: str | None = None
    metric_min: float | None = None
    metric_max: float | None = None
    note: str | None = None  # a substring of an analyst's note on the trace
    flagged: bool = False  # only traces with at least one flagged token
    sort: str = "created_at"
    descending: bool = True
    page: int = 1  # 1-based

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> BrowseFilters:
        sort = params.get("sort", "created_at")
        return cls(
            model=clean_text(params.get("model")),
            revision=clean_text(params.get("rev")),
            text=clean_text(params.get("q")),
            answer=clean_text(params.get("ans")),
            answer_token=clean_text(params.get("tok")),
            tag=clean_text(params.get("tag")),
            correct=_bool(params.get("correct")),
            after=_date(params.get("after")),
            before=_date(params.get("before")),
            metric=clean_text(params.get("metric")),
            metric_min=_float(params.get("mmin")),
            metric_max=_float(params.get("mmax")),
            note=clean_text(params.get("note")),
            flagged=params.get("flagged") == "1",
            sort=sort if sort in SORT_COLUMNS or sort.startswith("metric:") else "created_at",
            descending=params.get("asc") != "1",
            page=_positive_int(params.get("page"), 1),
        )

    def to_params(self) -> dict[str, str | None]:
        """Every filter parameter; ``None`` for defaults so callers can drop them from the URL."""
        return {
            "model": self.model,
            "rev": self.revision,
            "q": self.text,
            "ans": self.answer,
            "tok": self.answer_token,
            "tag": self.tag,
            "correct": None if self.correct is None else ("yes" if self.correct else "no"),
            "after": self.after.isoformat() if self.after else None,
            "before": self.before.isoformat() if self.before else None,
            "metric": self.metric,
            "mmin": None if self.metric_min is None else repr(self.metric_min),
            "mmax": None if self.metric_max is None else repr(self.metric_max),
            "note": self.note,
            "flagged": "1" if self.flagged else None,
            "sort": None if self.sort == "created_at" else self.sort,
            "asc": None if self.descending else "1",
            "page": None if self.page == 1 else str(self.page),
        }

    def with_page(self, page: int) -> BrowseFilters:
        return replace(self, page=min(max(1, page), MAX_PAGE))

    def metric_ranges(self) -> dict[str, tuple[float | None, float | None]]:
        """Inclusive bounds; a metric with no bounds still filters to traces that have it.
        "With a flagged token" is the bound ``flagged_tokens >= 1`` (tightening the metric
        filter's own bounds when that names the same metric)."""
        ranges = {self.metric: (self.metric_min, self.metric_max)} if self.metric else {}
        if self.flagged:
            low, high = ranges.get(FLAGGED_METRIC, (None, None))
            ranges[FLAGGED_METRIC] = (max(1.0, low if low is not None else 1.0), high)
        return ranges

    def to_query(self, page_size: int = PAGE_SIZE) -> TraceQuery:
        """The store query for this page only: the table never loads more than one page."""
        return TraceQuery(
            model=self.model,
            revision_contains=self.revision,
            text=self.text,
            answer_contains=self.answer,
            answer_token=self.answer_token,
            tag=self.tag,
            correct=self.correct,
            created_after=self.after.isoformat() if self.after else None,
            created_before=self.before.isoformat() if self.before else None,
            metric_ranges=self.metric_ranges(),
            note_contains=self.note,
            order_by=self.sort,
            descending=self.descending,
            limit=page_size,
            offset=(self.page - 1) * page_size,
        )


PARAMS = tuple(BrowseFilters().to_params())
