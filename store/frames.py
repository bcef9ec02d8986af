"""The index and the traces as pandas DataFrames: what a notebook or a spreadsheet reads.

``query_frame`` turns every trace a :class:`TraceQuery` matches (all pages, not one) into one
row each; ``token_frame`` gives one row per answer token of some traces with the values a
trace stores per token. ``csv_bytes`` and ``parquet_bytes`` write either for a download.
The dashboard's Browse export and the example notebook both build on these, so a column
means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterable

import numpy as np
import pandas as pd

from ._index import TraceQuery
from ._store import TraceStore
from .schema import TraceInfo

# Rows per index read: under the index's fast path for a page of infos (300 ids).
_CHUNK = 250
METRIC_PREFIX = "metric:"
TRACE_COLUMNS = (
    "trace_id",
    "model",
    "revision",
    "prompt",
    "answer",
    "correct",
    "reference_answer",
    "image_name",
    "tags",
    "created_at",
)
TOKEN_COLUMNS = (
    "trace_id",
    "k",
    "position",
    "token",
    "token_id",
    "word_id",
    "probability",
    "top_k_tokens",
    "top_k_ids",
    "top_k_probs",
    "attention_image_share",
    "attention_text_share",
    "attention_answer_share",
    "relevancy_image_share",
)
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _infos(store: TraceStore, query: TraceQuery) -> Iterable[TraceInfo]:
    """Every match of ``query`` in its order, read ``_CHUNK`` rows at a time."""
    offset = 0
    while True:
        page = store.query(dataclasses.replace(query, limit=_CHUNK, offset=offset))
        yield from page.items
        offset += len(page.items)
        if not page.items or not page.has_more:
            return


def query_frame(store: TraceStore, query: TraceQuery | None = None) -> pd.DataFrame:
    """One row per trace matching ``query`` (every page: its ``limit`` and ``offset`` are
    ignored), in the query's order. Columns: ``TRACE_COLUMNS`` (``tags`` a list of strings,
    ``correct`` a nullable boolean, ``created_at`` ISO-8601 UTC text), then one
    ``metric:<name>`` column per metric any matching trace has (missing values NaN), sorted
    by name."""
    rows, metric_names = [], set()
    for info in _infos(store, query or TraceQuery()):
        metric_names.update(info.metrics)
        rows.append(info)
    metric_columns = sorted(metric_names)
    return pd.DataFrame(
        {
            "trace_id": [i.trace_id for i in rows],
            "model": [i.model_id for i in rows],
            "revision": [i.model_revision for i in rows],
            "prompt": [i.prompt for i in rows],
            "answer": [i.answer for i in rows],
            "correct": pd.array([i.correct for i in rows], dtype="boolean"),
            "reference_answer": pd.array([i.reference_answer for i in rows], dtype="string"),
            "image_name": [i.image_name for i in rows],
            "tags": [list(i.tags) for i in rows],
            "created_at": [i.created_at for i in rows],
            **{
                METRIC_PREFIX + name: np.array(
                    [i.metrics.get(name, np.nan) for i in rows], dtype=np.float64
                )
                for name in metric_columns
            },
        }
    )


def relevancy_image_share(llm: np.ndarray, image_positions: np.ndarray) -> np.ndarray:
    """Per answer token: share of its positive LM relevancy on image tokens ([N, T] -> [N])."""
    positive = np.clip(np.asarray(llm, dtype=np.float64), 0.0, None)
    total = positive.sum(axis=-1)
    on_image = positive[..., image_positions].sum(axis=-1)
    return np.divide(on_image, total, out=np.zeros_like(total), where=total > 0)


def _trace_tokens(store: TraceStore, trace_id: str) -> pd.DataFrame:
    with store.open(trace_id) as trace:
        tokens, top_k = trace.tokens, trace.top_k
        prompt, answer = tokens.prompt_length, tokens.answer_length
        shares = np.asarray(trace.summaries.attention_shares, np.float64).mean(axis=(0, 1))
        relevancy = trace.relevancy
        columns = {
            "trace_id": [trace_id] * answer,
            "k": np.arange(answer),
            "position": np.arange(prompt, prompt + answer),
            "token": tokens.text[prompt:],
            "token_id": np.asarray(tokens.ids[prompt:], np.int64),
            "word_id": np.asarray(tokens.word_ids[prompt:], np.int64),
            "probability": np.asarray(top_k.chosen_prob, np.float64),
            "top_k_tokens": [list(t) for t in top_k.text],
            "top_k_ids": [np.asarray(i, np.int64).tolist() for i in top_k.ids],
            "top_k_probs": [np.asarray(p, np.float64).tolist() for p in top_k.probs],
            "attention_image_share": shares[:, 0],
            "attention_text_share": shares[:, 1],
            "attention_answer_share": shares[:, 2],
            "relevancy_image_share": (
                relevancy_image_share(relevancy.llm, tokens.image_positions)
                if relevancy is not None
                else np.full(answer, np.nan)
            ),
        }
    return pd.DataFrame(columns, columns=list(TOKEN_COLUMNS))


def token_frame(store: TraceStore, trace_ids: Iterable[str]) -> pd.DataFrame:
    """One row per answer token of each trace, in the given order.

    Columns: ``trace_id``; ``k`` (answer index) and ``position`` (in the token table);
    ``token`` text, ``token_id``, ``word_id``; ``probability`` of the generated token; the
    logged top-k as lists (``top_k_tokens``, ``top_k_ids``, ``top_k_probs``, most likely
    first); the attention shares on image / question text / earlier answer averaged over
    layers and heads (``attention_*_share``, from the trace's summaries); and
    ``relevancy_image_share`` (share of the token's positive LM relevancy on image tokens,
    NaN when the trace has no relevancy). Reads only the small per-token parts of each file,
    never the attention tensors. A trace that is not stored raises ``TraceNotFound``.
    """
    frames = [_trace_tokens(store, trace_id) for trace_id in dict.fromkeys(trace_ids)]
    if not frames:
        return pd.DataFrame(columns=list(TOKEN_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def _cell_text(value: object) -> object:
    """A cell as CSV text: lists as JSON arrays; text a spreadsheet would run as a formula
    gets a leading apostrophe (``'=cmd``), which spreadsheets show and do not evaluate."""
    if isinstance(value, list | tuple):
        return json.dumps(list(value), ensure_ascii=False)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV of ``frame`` for people and spreadsheets: list cells as JSON arrays, cells
    that would start a formula defused (see :func:`_cell_text`). Parquet keeps values as
    they are; read that for exact text."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(_cell_text)
    return out.to_csv(index=False).encode("utf-8")


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Parquet (pyarrow) of ``frame``: lists stay lists, text stays verbatim."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()
