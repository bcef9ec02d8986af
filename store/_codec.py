"""How attention tensors are encoded on disk: lossless fp16 (default) or an opt-in lossy form.

Measured on 7B-shaped synthetic attention (spike): lossless fp16 + Blosc2-zstd tops out near
2.5x. The two lossy forms offered trade a stated, tested error bound for size. 8-bit *linear*
quantisation is deliberately not offered: it zeroes most of a 700-wide softmax row.
"""

from __future__ import annotations

import enum
import math

import numpy as np


class Precision(str, enum.Enum):
    """Attention precision of a stored trace (chosen at ``TraceStore.add``)."""

    LOSSLESS = "lossless"  # fp16 exactly as recorded
    SPARSE = "sparse"  # values < SPARSE_THRESHOLD become 0, all others exact fp16
    LOG8 = "log8"  # 8-bit log scale per row, see LOG8_RELATIVE_ERROR


SPARSE_THRESHOLD = 1e-4
"""SPARSE: a value below this is stored as 0 (absolute error < 1e-4); others are exact."""

LOG8_DYNAMIC_RANGE = 2.0**16
"""LOG8 codes 1..255 span [row_max / 2**16, row_max] on a log scale; code 0 is exact zero."""

_LOG8_STEP = math.log(LOG8_DYNAMIC_RANGE) / 254.0

LOG8_RELATIVE_ERROR = 0.0221
"""LOG8 bound: |decoded - v| <= 2.21% of v for every v >= LOG8_ZERO_BELOW * row_max.

Half a log step is expm1(step / 2) = 2.2072%; the stated bound leaves room for float32
rounding in the decoder."""

LOG8_ZERO_BELOW = math.exp(-254.5 * _LOG8_STEP)
"""LOG8: values below this fraction of their row's max decode as 0 (abs. error < 1.6e-5·max)."""

assert math.expm1(_LOG8_STEP / 2) < LOG8_RELATIVE_ERROR

_LUT = np.concatenate([[0.0], np.exp(_LOG8_STEP * (np.arange(1, 256) - 255.0))]).astype(np.float32)


def resolve(lossy: bool | str | Precision) -> Precision:
    """``False`` -> LOSSLESS, ``True`` -> LOG8 (the smallest), or a Precision / its name."""
    if lossy is False:
        return Precision.LOSSLESS
    if lossy is True:
        return Precision.LOG8
    return Precision(lossy)


def sparsify(x: np.ndarray) -> np.ndarray:
    """SPARSE encoding: zero the values below the threshold (fp16 stays fp16)."""
    out = np.array(x, dtype=np.float16, copy=True)
    out[out < SPARSE_THRESHOLD] = 0
    return out


def log8_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode non-negative ``x[..., T]`` as uint8 codes plus the float32 max of each row."""
    x = np.asarray(x, dtype=np.float32)
    if x.size and not (np.isfinite(x).all() and x.min() >= 0):
        raise ValueError("log8 needs finite, non-negative values (attention probabilities)")
    row_max = x.max(axis=-1) if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)
    safe_max = np.where(row_max > 0, row_max, 1.0)[..., None]
    with np.errstate(divide="ignore"):
        level = 255.0 + np.log(x / safe_max) / _LOG8_STEP
    codes = np.rint(level)
    codes = np.where(level < 0.5, 0, np.clip(codes, 1, 255))
    return codes.astype(np.uint8), row_max.astype(np.float32)


def log8_decode(codes: np.ndarray, row_max: np.ndarray) -> np.ndarray:
    """Inverse of :func:`log8_encode` (float32); ``row_max`` lacks the last axis of codes."""
    return _LUT[codes] * np.asarray(row_max, dtype=np.float32)[..., None]
