"""Cached access to the store: one store handle per process, arrays per (trace, slice).

``cache_resource`` holds open handles (shared, never copied); ``cache_data`` holds the small
arrays the views draw, keyed by trace id and the slice asked for, so moving a slider back
and forth or switching pages never reads the same bytes twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from dashboard.components import analysis, images
from dashboard.config import StoreConfig
from store import (
    DB_FILE,
    Note,
    Page,
    StoredTrace,
    StoreReadOnly,
    TraceInfo,
    TraceQuery,
    TraceStore,
    open_store,
)


def index_identity(config: StoreConfig) -> tuple[int, int] | None:
    """Which SQLite index file the store's path names now (device and inode).

    ``store reindex`` renames the old index aside and writes a new one; a handle opened
    before keeps reading the renamed file. Keying the cached handles by this identity opens
    a fresh one as soon as the file changes. ``None`` for other databases (``--db URL``).
    """
    if config.db_url:
        return None
    try:
        info = os.stat(Path(config.directory) / DB_FILE)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def store(config: StoreConfig) -> TraceStore:
    """The process-wide read-only store handle: browsing never writes."""
    return _store(config, index_identity(config))


@st.cache_resource(show_spinner=False, max_entries=4)
def _store(config: StoreConfig, identity: tuple[int, int] | None) -> TraceStore:
    return open_store(config.directory, config.db_url)


def results_store(config: StoreConfig) -> TraceStore:
    """The handle derived results and analysts' notes go through: writable when the
    directory allows it, so causal explanations computed on demand and notes are kept for
    the next viewer; otherwise the read-only handle (``mode == "r"``: what is stored still
    shows, nothing new can be kept)."""
    return _results_store(config, index_identity(config))


@st.cache_resource(show_spinner=False, max_entries=4)
def _results_store(config: StoreConfig, identity: tuple[int, int] | None) -> TraceStore:
    try:
        return open_store(config.directory, config.db_url, writable=True)
    except StoreReadOnly:
        return _store(config, identity)


def trace(config: StoreConfig, trace_id: str) -> StoredTrace:
    """A lazily read trace; parts load on first use, attention by slice."""
    return _trace(config, index_identity(config), trace_id)


@st.cache_resource(show_spinner=False, max_entries=16)
def _trace(config: StoreConfig, identity: tuple[int, int] | None, trace_id: str) -> StoredTrace:
    return _store(config, identity).open(trace_id)


def query(config: StoreConfig, request: TraceQuery) -> Page:
    """One page of the index. Not cached: the index changes while the dashboard runs."""
    return store(config).query(request)


def notes(config: StoreConfig, trace_id: str) -> list[Note]:
    """A trace's notes. Not cached: anyone may add one while the dashboard runs."""
    return store(config).notes(trace_id)


def note_summaries(config: StoreConfig, trace_ids: list[str]) -> dict[str, tuple[int, str]]:
    """Note count and newest note per trace, for a page of the Browse table (one query)."""
    return store(config).note_summaries(trace_ids)


def info(config: StoreConfig, trace_id: str) -> TraceInfo:
    return store(config).get(trace_id)


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail_url(config: StoreConfig, trace_id: str) -> str | None:
    """A small inline image for the Browse table; ``None`` when the trace file is unreadable."""
    try:
        picture = images.thumbnail(trace(config, trace_id).image.images[0].pixels, size=64)
    except Exception:  # a broken file must not break the table
        return None
    return images.data_url(picture, "JPEG")


@st.cache_data(show_spinner=False, max_entries=256)
def layer_rows(
    config: StoreConfig, trace_id: str, layer: int, answer_tokens: tuple[int, ...]
) -> np.ndarray:
    """[H, T] attention of the selected answer tokens at one layer, averaged over the tokens."""
    handle = trace(config, trace_id)
    rows = [handle.tokens.answer_row(k) for k in answer_tokens]
    return handle.attention_rows(rows, layers=[layer])[0].mean(axis=1)


@st.cache_data(show_spinner=False, max_entries=64)
def answer_rows(config: StoreConfig, trace_id: str, answer_tokens: tuple[int, ...]) -> np.ndarray:
    """[L, H, T] attention of the selected answer tokens at every layer, averaged over tokens."""
    handle = trace(config, trace_id)
    rows = [handle.tokens.answer_row(k) for k in answer_tokens]
    return handle.attention_rows(rows).mean(axis=2)


@st.cache_data(show_spinner=False, max_entries=64)
def patch_attention(
    config: StoreConfig,
    trace_id: str,
    rows: tuple[int, ...],
    cols: tuple[int, ...],
    weights: tuple[float, ...],
) -> np.ndarray:
    """[L, H, len(rows)]: how much each query row attends to chosen patches, through the
    image columns ``cols`` weighted by how much of each column's token reads them."""
    block = trace(config, trace_id).attention_block(rows, cols)
    return analysis.attention_to_patches(block, np.asarray(weights))


@st.cache_data(show_spinner=False, max_entries=64)
def vision_layer(config: StoreConfig, trace_id: str, layer: int, sequence: int) -> np.ndarray:
    """[Hv, V, V] attention of one vision-tower layer over one vision sequence."""
    return trace(config, trace_id).vision_attention_layer(layer, sequence=sequence)


@st.cache_data(show_spinner=False, max_entries=16)
def vision_rollout(config: StoreConfig, trace_id: str, sequence: int) -> np.ndarray:
    """[V, V] attention rollout through the whole vision tower (read layer by layer)."""
    handle = trace(config, trace_id)
    layers = handle.vision_shape[0]
    return analysis.rollout(
        handle.vision_attention_layer(i, sequence=sequence) for i in range(layers)
    )


@st.cache_data(show_spinner=False, max_entries=64)
def cross_rows(
    config: StoreConfig, trace_id: str, layer: int, answer_tokens: tuple[int, ...]
) -> np.ndarray:
    """[H, K] cross-attention of the selected answer tokens to the vision keys at the
    ``layer``-th cross-attention layer, averaged over the tokens."""
    handle = trace(config, trace_id)
    rows = [handle.tokens.answer_row(k) for k in answer_tokens]
    return handle.cross_attention_rows(layer, rows).mean(axis=1)
