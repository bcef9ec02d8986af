"""One sliceable view of LM attention, the same for a trace in memory and a stored one.

``view[layer, head, rows, cols]`` reads the logical [L, H, T, T] tensor with numpy's basic
indexing (ints, slices, negative positions) plus 1-D integer arrays, each selecting along its
own axis as h5py does (``view[:, :, [3, 5], [0, 2]]`` is a [L, H, 2, 2] block, numpy's
``np.ix_``). Rows are absolute query positions even when a :class:`~store.RecordingPolicy`
kept only some: the view maps them onto the stored rows, and asking for a row that was not
kept raises :class:`~store.errors.MissingData` naming the policy and how to record it.
Values come back as float32 (log8 traces decoded).

Reads are planned so the stored tensor is touched with at most one index array (h5py's rule,
and the block reader's fast path needs none): contiguous runs become slices, close-together
positions their bounding slice, and the request's order and repeats are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import MissingData

# Rows further apart than this many extra rows are read as an index array rather than as
# their bounding slice (16-row chunks: a few chunks of waste at most).
_ROW_GAP = 64

Reader = Callable[[tuple], np.ndarray]  # stored [L, H, R, T] at ints / step-1 slices / 1 array

_HOW_TO_RECORD = {
    "answer_rows": "record it again with `--policy text_rows` or `--policy full`",
    "text_rows": "record it again with `--policy full` (image rows are kept only in full)",
}


@dataclass(frozen=True)
class _Axis:
    """One axis of a request: what to read from storage, then which of those to keep."""

    read: slice | np.ndarray  # a step-1 slice, or sorted unique stored positions
    take: np.ndarray | None  # positions within the read, in request order (None: all)
    squeeze: bool  # the request named one position with an int


def _positions(item: object, size: int, what: str) -> tuple[np.ndarray, bool]:
    """Requested positions on an axis of ``size`` (negatives wrapped), and whether an int."""
    if isinstance(item, (int, np.integer)):
        pos, squeeze = np.array([int(item)]), True
    elif isinstance(item, slice):
        return np.arange(*item.indices(size)), False
    else:
        pos, squeeze = np.asarray(item), False
        if pos.ndim != 1 or not (pos.size == 0 or np.issubdtype(pos.dtype, np.integer)):
            raise IndexError(f"{what}: use an int, a slice or a 1-D array of ints, not {item!r}")
        pos = pos.astype(np.int64)
    wrapped = np.where(pos < 0, pos + size, pos)
    if wrapped.size and (wrapped.min() < 0 or wrapped.max() >= size):
        bad = pos[(wrapped < 0) | (wrapped >= size)][0]
        raise IndexError(f"{what} {bad} out of range 0..{size - 1}")
    return wrapped, squeeze


def _plan(pos: np.ndarray, squeeze: bool, gap: int | None) -> _Axis:
    """Read ``pos`` as a slice when contiguous (or within ``gap`` extra positions), else as
    its sorted unique positions (``gap`` None: always as a slice)."""
    if pos.size == 0:
        return _Axis(slice(0, 0), None, squeeze)
    lo, hi = int(pos.min()), int(pos.max()) + 1
    uniq, inverse = np.unique(pos, return_inverse=True)
    if gap is None or hi - lo - len(uniq) <= gap:
        in_order = len(pos) == hi - lo and bool(np.all(np.diff(pos) == 1))
        return _Axis(slice(lo, hi), None if in_order else pos - lo, squeeze)
    same = len(uniq) == len(pos) and bool(np.all(np.diff(pos) > 0))
    return _Axis(uniq, None if same else inverse.reshape(-1), squeeze)


class AttentionView:
    """[L, H, T, T] attention of a trace, whatever rows it stored ([Lx, H, T, K] for
    cross-attention); see the module doc."""

    ndim = 4

    def __init__(
        self,
        read: Reader,
        stored_shape: tuple[int, int, int, int],
        rows: np.ndarray | None = None,
        policy: str = "full",
    ) -> None:
        self._read = read
        n_layers, n_heads, n_rows, n_cols = (int(n) for n in stored_shape)
        # Kept rows are rows of the square LM attention; without them every row is stored
        # (cross-attention's [T, K] too).
        self.shape = (n_layers, n_heads, n_rows if rows is None else n_cols, n_cols)
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        if self.rows is not None and len(self.rows) != n_rows:
            raise ValueError(f"attention of {n_rows} rows does not match its {len(self.rows)} rows")
        self.policy = policy

    @classmethod
    def of_array(
        cls, array: np.ndarray, rows: np.ndarray | None = None, policy: str = "full"
    ) -> AttentionView:
        """The view of an in-memory [L, H, R, T] array holding ``rows`` (None: every row)."""
        return cls(lambda index: np.asarray(array[index], np.float32), array.shape, rows, policy)

    @property
    def kept_rows(self) -> np.ndarray:
        """The absolute query rows this trace holds, sorted."""
        return np.arange(self.shape[2]) if self.rows is None else self.rows

    def has_rows(self, rows: object) -> bool:
        """Whether every query row in ``rows`` (int, slice or ints) was kept."""
        pos, _ = _positions(rows, self.shape[2], "row")
        if self.rows is None or pos.size == 0:
            return True
        at = np.minimum(np.searchsorted(self.rows, pos), len(self.rows) - 1)
        return bool(np.all(self.rows[at] == pos))

    def _stored_rows(self, pos: np.ndarray) -> np.ndarray:
        if self.rows is None:
            return pos
        at = np.minimum(np.searchsorted(self.rows, pos), max(len(self.rows) - 1, 0))
        missing = np.unique(pos[self.rows[at] != pos] if len(self.rows) else pos)
        if missing.size:
            shown = ", ".join(str(int(r)) for r in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            how = _HOW_TO_RECORD.get(self.policy, "record it again with `--policy full`")
            raise MissingData(
                f"attention rows {shown}{more} were not recorded: this trace keeps the "
                f"'{self.policy}' rows only ({len(self.rows)} of {self.shape[2]}); {how}"
            )
        return at

    def __getitem__(self, key: object) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(item is Ellipsis for item in key):
            at = next(i for i, item in enumerate(key) if item is Ellipsis)
            key = key[:at] + (slice(None),) * (5 - len(key)) + key[at + 1 :]
        if len(key) > 4:
            raise IndexError(f"attention has 4 axes (layer, head, row, column), got {len(key)}")
        key = key + (slice(None),) * (4 - len(key))
        names = ("layer", "head", "row", "column")
        picked = [_positions(k, n, w) for k, n, w in zip(key, self.shape, names, strict=True)]
        layers, heads, rows, cols = (pos for pos, _ in picked)
        squeeze = [sq for _, sq in picked]
        rows = self._stored_rows(rows)
        if min(len(layers), len(heads), len(rows), len(cols)) == 0:
            sizes = (len(layers), len(heads), len(rows), len(cols))
            return np.zeros([n for n, sq in zip(sizes, squeeze, strict=True) if not sq], np.float32)
        plans = [
            _plan(layers, squeeze[0], gap=0),
            _plan(heads, squeeze[1], gap=None),
            _plan(rows, squeeze[2], gap=_ROW_GAP),
            _plan(cols, squeeze[3], gap=None),
        ]
        out = self._fetch(plans)
        for axis, plan in enumerate(plans):
            if plan.take is not None:
                out = np.take(out, plan.take, axis=axis)
        return out[tuple(0 if plan.squeeze else slice(None) for plan in plans)]

    def _fetch(self, plans: list[_Axis]) -> np.ndarray:
        """[l, h, r, c] float32 for the planned reads; scattered layers one at a time, as
        only the row axis may be read with an index array."""
        layer_read, rest = plans[0].read, tuple(plan.read for plan in plans[1:])
        if isinstance(layer_read, slice):
            return self._read((layer_read, *rest))
        return np.stack([self._read((slice(int(i), int(i) + 1), *rest))[0] for i in layer_read])
