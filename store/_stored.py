"""Lazy, read-only access to one stored trace: small parts on first use, attention by slice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np

from . import _blocks, _h5
from ._codec import Precision
from .errors import CorruptTrace, StoreError
from .schema import ImageGeometry, Relevancy, Summaries, TokenTable, TopK, Trace, TraceInfo

Indices = Sequence[int] | np.ndarray | range | slice
T = TypeVar("T")


def _selector(idx: Indices, size: int, what: str) -> tuple[slice | np.ndarray, np.ndarray | None]:
    """Turn requested positions into an h5py selector plus the reorder that restores them.

    h5py wants increasing, unique index lists (and reads a slice fastest), so a contiguous
    run becomes a slice and anything else a sorted unique array; the second value maps the
    read back to the order (and duplicates) the caller asked for.
    """
    if isinstance(idx, slice):
        idx = range(*idx.indices(size))
    arr = np.asarray(idx, dtype=np.int64).reshape(-1)
    if arr.size == 0:
        raise IndexError(f"no {what} requested")
    arr = np.where(arr < 0, arr + size, arr)
    if arr.min() < 0 or arr.max() >= size:
        raise IndexError(f"{what} out of range 0..{size - 1}: {idx}")
    if arr.size == arr[-1] - arr[0] + 1 and np.all(np.diff(arr) == 1):
        return slice(int(arr[0]), int(arr[-1]) + 1), None
    uniq, inverse = np.unique(arr, return_inverse=True)
    if uniq.size == uniq[-1] - uniq[0] + 1:
        return slice(int(uniq[0]), int(uniq[-1]) + 1), inverse
    return uniq, inverse


def _check(i: int, size: int, what: str) -> int:
    i = int(i)
    if not -size <= i < size:
        raise IndexError(f"{what} {i} out of range 0..{size - 1}")
    return i % size


class StoredTrace:
    """One trace file opened read-only. Use as a context manager or call :meth:`close`.

    ``info`` comes from the index when opened through a store (so tags and metrics edited
    after recording show), else from the file itself. Attention methods return float32.
    """

    def __init__(self, path: str | Path, info: TraceInfo | None = None) -> None:
        self.path = Path(path)
        self._f: h5py.File = _h5.open_file(str(self.path))
        self.format_version = int(self._f.attrs["format_version"])
        self._lm = _h5.attention_datasets(self._f, "lm_attention")
        shape = self._lm[0].values.shape
        self.num_layers, self.num_heads, self.seq_len = (int(n) for n in shape[:3])
        if info is not None:
            self.info = info

    # Everything else is read on first use: opening must stay well under 3 ms.
    def _part(self, read: Callable[[h5py.File], T]) -> T:
        """A small part of the file; HDF5 errors (e.g. a failed Fletcher-32 checksum, a
        missing group) become :class:`CorruptTrace`."""
        try:
            return read(self._f)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise CorruptTrace(
                f"{self.path}: cannot read it ({exc}); the trace file is damaged "
                "(run `lvlm-interpret store verify`)"
            ) from None

    @cached_property
    def info(self) -> TraceInfo:
        return self._part(_h5.read_info)

    @cached_property
    def trace_id(self) -> str:
        return str(self._f.attrs["trace_id"])

    @cached_property
    def precision(self) -> Precision:
        return Precision(str(self._f.attrs.get("precision", "lossless")))

    @cached_property
    def _vision(self) -> tuple[_blocks.BlockedDataset, h5py.Dataset | None] | None:
        if "vision_attention" not in self._f:
            return None
        return _h5.attention_datasets(self._f, "vision_attention")

    @cached_property
    def vision_shape(self) -> tuple[int, int, int, int] | None:
        return None if self._vision is None else tuple(int(n) for n in self._vision[0].values.shape)

    # -- context manager -------------------------------------------------------------------
    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> StoredTrace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- small parts, read on first use -------------------------------------------------------
    @cached_property
    def tokens(self) -> TokenTable:
        return self._part(_h5.read_tokens)

    @cached_property
    def image(self) -> ImageGeometry:
        return self._part(_h5.read_image)

    @cached_property
    def top_k(self) -> TopK:
        return self._part(_h5.read_top_k)

    @cached_property
    def summaries(self) -> Summaries:
        return self._part(_h5.read_summaries)

    @cached_property
    def relevancy(self) -> Relevancy | None:
        return self._part(_h5.read_relevancy)

    @property
    def has_vision_attention(self) -> bool:
        return self.vision_shape is not None

    @cached_property
    def prompt_length(self) -> int:
        return self._part(lambda f: int(f["tokens"].attrs["prompt_length"]))

    @property
    def answer_length(self) -> int:
        return self.seq_len - self.prompt_length

    # -- language-model attention -------------------------------------------------------------
    def attention(self, layer: int, head: int) -> np.ndarray:
        """[T, T] heatmap of one LM head."""
        layer = _check(layer, self.num_layers, "layer")
        head = _check(head, self.num_heads, "head")
        return _h5.read_attention(*self._lm, (layer, head, slice(None), slice(None)))

    def attention_heads(self, layer: int, heads: Indices) -> np.ndarray:
        """[len(heads), T, T]: heatmaps of chosen heads of one LM layer, read together (a
        contiguous run of heads reads only those heads' blocks)."""
        layer = _check(layer, self.num_layers, "layer")
        head_sel, head_inv = _selector(heads, self.num_heads, "heads")
        out = _h5.read_attention(*self._lm, (layer, head_sel, slice(None), slice(None)))
        return out if head_inv is None else out[head_inv]

    def answer_attention(self, k: int) -> np.ndarray:
        """[L, H, T]: the row that produced answer token ``k`` (row P-1+k), every layer/head."""
        k = _check(k, self.answer_length, "answer token")
        row = self.prompt_length - 1 + k
        return _h5.read_attention(*self._lm, (slice(None), slice(None), row, slice(None)))

    def attention_rows(self, rows: Indices, layers: Indices | None = None) -> np.ndarray:
        """[l, H, len(rows), T]: chosen query rows of every head, for all or chosen layers."""
        row_sel, row_inv = _selector(rows, self.seq_len, "rows")
        layer_ids = range(self.num_layers) if layers is None else layers
        layer_sel, layer_inv = _selector(layer_ids, self.num_layers, "layers")
        if isinstance(layer_sel, slice):
            out = _h5.read_attention(*self._lm, (layer_sel, slice(None), row_sel, slice(None)))
        else:
            out = np.stack(
                [
                    _h5.read_attention(*self._lm, (int(i), slice(None), row_sel, slice(None)))
                    for i in layer_sel
                ]
            )
        if layer_inv is not None:
            out = out[layer_inv]
        return out if row_inv is None else out[:, :, row_inv]

    def attention_block(self, rows: Indices, cols: Indices) -> np.ndarray:
        """[L, H, len(rows), len(cols)], e.g. answer rows x image columns, every layer/head."""
        row_sel, row_inv = _selector(rows, self.seq_len, "rows")
        col_sel, col_inv = _selector(cols, self.seq_len, "columns")
        # h5py allows one index list per read: columns are read as their bounding slice.
        if isinstance(col_sel, slice):
            col_read, col_take = col_sel, None
        else:
            col_read = slice(int(col_sel[0]), int(col_sel[-1]) + 1)
            col_take = col_sel - col_sel[0]
        out = _h5.read_attention(*self._lm, (slice(None), slice(None), row_sel, col_read))
        if col_take is not None:
            out = out[..., col_take]
        if row_inv is not None:
            out = out[:, :, row_inv]
        return out if col_inv is None else out[..., col_inv]

    # -- vision tower -----------------------------------------------------------------------
    def vision_attention(self, layer: int, head: int) -> np.ndarray | None:
        """[V, V] heatmap of one vision-tower head, or None when not recorded."""
        if self.vision_shape is None:
            return None
        layer = _check(layer, self.vision_shape[0], "vision layer")
        head = _check(head, self.vision_shape[1], "vision head")
        return _h5.read_attention(*self._vision, (layer, head, slice(None), slice(None)))

    def vision_attention_layer(self, layer: int) -> np.ndarray | None:
        """[Hv, V, V]: every head of one vision layer, or None when not recorded."""
        if self.vision_shape is None:
            return None
        layer = _check(layer, self.vision_shape[0], "vision layer")
        return _h5.read_attention(*self._vision, (layer, slice(None), slice(None), slice(None)))

    # -- everything -------------------------------------------------------------------------
    @staticmethod
    def _full(blocked: _blocks.BlockedDataset, row_max: h5py.Dataset | None) -> np.ndarray:
        """The whole tensor, a layer at a time through the checked reads."""
        out = np.empty(blocked.values.shape, np.float16)
        every = slice(None)
        for layer in range(out.shape[0]):
            out[layer] = _h5.read_attention(blocked, row_max, (layer, every, every, every))
        return out

    def damage(self) -> str | None:
        """Read every part of the file, checking every checksum it carries; what failed,
        or None. (Files written before checksums existed can only fail to decode.)"""
        try:
            self.read()
        except StoreError as exc:
            return str(exc)
        return None

    def read(self) -> Trace:
        """The whole trace in memory (attention as float16, as the schema says)."""
        vision = self._full(*self._vision) if self._vision is not None else None
        return Trace(
            info=self.info,
            tokens=self.tokens,
            image=self.image,
            top_k=self.top_k,
            lm_attention=self._full(*self._lm),
            vision_attention=vision,
            relevancy=self.relevancy,
            summaries=self.summaries,
        )
