"""Lazy, read-only access to one stored trace: small parts on first use, attention by slice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np

from . import _blocks, _h5
from ._codec import Precision
from .errors import CorruptTrace, MissingData, StoreError
from .schema import (
    CrossAttention,
    ImageGeometry,
    RecordingPolicy,
    Relevancy,
    Summaries,
    TokenTable,
    TopK,
    Trace,
    TraceInfo,
    answer_row,
)
from .views import AttentionView

Indices = Sequence[int] | np.ndarray | range | slice
T = TypeVar("T")
Attention = tuple[_blocks.BlockedDataset, h5py.Dataset | None]


def _positions(idx: Indices, what: str) -> Sequence[int] | np.ndarray | slice:
    """``idx`` as the view takes it; an empty request is an error (it is always a bug)."""
    if isinstance(idx, range):
        idx = np.arange(idx.start, idx.stop, idx.step)
    if not isinstance(idx, slice) and np.size(idx) == 0:
        raise IndexError(f"no {what} requested")
    return idx


def _check(i: int, size: int, what: str) -> int:
    i = int(i)
    if not -size <= i < size:
        raise IndexError(f"{what} {i} out of range 0..{size - 1}")
    return i % size


def _view(attention: Attention, rows: np.ndarray | None = None, policy: str = "full"):
    """The :class:`AttentionView` of a stored attention tensor (reads checked, float32)."""
    return AttentionView(
        partial(_h5.read_attention, *attention), attention[0].values.shape, rows, policy
    )


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
        self.num_layers, self.num_heads, self.seq_len = (int(shape[i]) for i in (0, 1, 3))
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
    def policy(self) -> RecordingPolicy | None:
        """The recording policy (formats 1-2: full); None for rows of no named policy."""
        return self._part(_h5.read_policy)

    @cached_property
    def lm_rows(self) -> np.ndarray | None:
        """The query rows kept, sorted; None when every row is (policy full)."""
        return self._part(_h5.read_lm_rows)

    @cached_property
    def lm_attention(self) -> AttentionView:
        """``[layer, head, rows, cols]`` over the [L, H, T, T] LM attention, rows absolute
        whatever the policy kept (see :mod:`store.views`); float32."""
        policy = self.policy.value if self.policy is not None else "custom"
        return _view(self._lm, self.lm_rows, policy)

    def has_rows(self, rows: int | Indices) -> bool:
        """Whether the LM attention holds every query row in ``rows``."""
        return self.lm_attention.has_rows(rows)

    @cached_property
    def _vision(self) -> list[Attention]:
        return self._part(_h5.vision_datasets)

    @cached_property
    def vision_shapes(self) -> list[tuple[int, int, int, int]]:
        """[Lv, Hv, V, V] of each vision sequence's attention ([] when not recorded)."""
        return [tuple(int(n) for n in blocked.values.shape) for blocked, _ in self._vision]

    @property
    def vision_shape(self) -> tuple[int, int, int, int] | None:
        """The first vision sequence's shape (every sequence has the same Lv and Hv)."""
        return self.vision_shapes[0] if self.vision_shapes else None

    @cached_property
    def cross_layers(self) -> list[int] | None:
        """The LM layers holding cross-attention (Mllama), None when the trace has none."""
        return self._part(_h5.read_cross_layers)

    @cached_property
    def cross_attention(self) -> AttentionView | None:
        """``[i, head, rows, keys]`` over the [Lx, H, T, K] cross-attention (``i`` indexes
        :attr:`cross_layers`), or None."""
        if self.cross_layers is None:
            return None
        return _view(_h5.attention_datasets(self._f, "cross_attention"))

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
        return bool(self._vision)

    @cached_property
    def prompt_length(self) -> int:
        return self._part(lambda f: int(f["tokens"].attrs["prompt_length"]))

    @property
    def answer_length(self) -> int:
        return self.seq_len - self.prompt_length

    # -- language-model attention (float32, through the view) ----------------------------------
    def attention(self, layer: int, head: int) -> np.ndarray:
        """[T, T] heatmap of one LM head (every row: a policy other than full lacks some)."""
        layer = _check(layer, self.num_layers, "layer")
        head = _check(head, self.num_heads, "head")
        return self.lm_attention[layer, head]

    def attention_heads(self, layer: int, heads: Indices) -> np.ndarray:
        """[len(heads), T, T]: heatmaps of chosen heads of one LM layer, read together (a
        contiguous run of heads reads only those heads' blocks)."""
        layer = _check(layer, self.num_layers, "layer")
        return self.lm_attention[layer, _positions(heads, "heads")]

    def answer_attention(self, k: int) -> np.ndarray:
        """[L, H, T]: the row that produced answer token ``k``, every layer and head."""
        k = _check(k, self.answer_length, "answer token")
        return self.lm_attention[:, :, answer_row(self.prompt_length, k)]

    def attention_rows(self, rows: Indices, layers: Indices | None = None) -> np.ndarray:
        """[l, H, len(rows), T]: chosen query rows of every head, for all or chosen layers."""
        layers = slice(None) if layers is None else _positions(layers, "layers")
        return self.lm_attention[layers, :, _positions(rows, "rows")]

    def attention_block(self, rows: Indices, cols: Indices) -> np.ndarray:
        """[L, H, len(rows), len(cols)], e.g. answer rows x image columns, every layer/head."""
        return self.lm_attention[:, :, _positions(rows, "rows"), _positions(cols, "columns")]

    # -- vision tower -----------------------------------------------------------------------
    def _vision_of(self, sequence: int) -> Attention | None:
        if not self._vision:
            return None
        return self._vision[_check(sequence, len(self._vision), "vision sequence")]

    def vision_attention(self, layer: int, head: int, sequence: int = 0) -> np.ndarray | None:
        """[V, V] heatmap of one vision-tower head over one vision sequence (see
        ``ImageGeometry.vision_sequences``), or None when not recorded."""
        attention = self._vision_of(sequence)
        if attention is None:
            return None
        shape = attention[0].values.shape
        layer = _check(layer, shape[0], "vision layer")
        head = _check(head, shape[1], "vision head")
        return _h5.read_attention(*attention, (layer, head, slice(None), slice(None)))

    def vision_attention_layer(self, layer: int, sequence: int = 0) -> np.ndarray | None:
        """[Hv, V, V]: every head of one vision layer over one sequence, or None."""
        attention = self._vision_of(sequence)
        if attention is None:
            return None
        layer = _check(layer, attention[0].values.shape[0], "vision layer")
        every = slice(None)
        return _h5.read_attention(*attention, (layer, every, every, every))

    # -- cross-attention --------------------------------------------------------------------
    def cross_attention_rows(self, layer: int, rows: Indices) -> np.ndarray:
        """[H, len(rows), K]: the ``layer``-th cross-attention layer's query ``rows``."""
        view = self.cross_attention
        if view is None:
            raise MissingData(
                f"{self.path.name} holds no cross-attention: its model reads the image through "
                "image tokens (use the LM attention views)"
            )
        return view[
            _check(layer, view.shape[0], "cross-attention layer"), :, _positions(rows, "rows")
        ]

    # -- everything -------------------------------------------------------------------------
    @staticmethod
    def _full(attention: Attention) -> np.ndarray:
        """The whole stored tensor, a layer at a time through the checked reads."""
        blocked, row_max = attention
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
        cross = None
        if self.cross_layers is not None:
            weights = self._full(_h5.attention_datasets(self._f, "cross_attention"))
            cross = CrossAttention(self.cross_layers, weights)
        return Trace(
            info=self.info,
            tokens=self.tokens,
            image=self.image,
            top_k=self.top_k,
            lm_attention=self._full(self._lm),
            vision_attention=[self._full(a) for a in self._vision] if self._vision else None,
            relevancy=self.relevancy,
            summaries=self.summaries,
            lm_rows=self.lm_rows,
            cross_attention=cross,
        )
