import numpy as np
import pytest

from store._codec import (
    LOG8_RELATIVE_ERROR,
    LOG8_ZERO_BELOW,
    SPARSE_THRESHOLD,
    Precision,
    log8_decode,
    log8_encode,
    resolve,
    sparsify,
)


def _softmax_rows(rng, shape):
    x = np.exp(rng.normal(0, 3, size=shape))
    return (x / x.sum(-1, keepdims=True)).astype(np.float16)


def test_log8_within_stated_bound_over_many_decades():
    rng = np.random.default_rng(0)
    x = _softmax_rows(rng, (8, 64, 300)).astype(np.float32)
    x[:, :, :40] = 0  # exact zeros stay zero
    codes, row_max = log8_encode(x)
    y = log8_decode(codes, row_max)
    assert codes.dtype == np.uint8 and y.dtype == np.float32
    big = x >= LOG8_ZERO_BELOW * x.max(-1, keepdims=True)
    rel = np.abs(y[big] - x[big]) / x[big]
    assert rel.max() <= LOG8_RELATIVE_ERROR
    assert rel.max() > 0.5 * LOG8_RELATIVE_ERROR, "the bound should be tight, not vacuous"
    small_err = np.abs(y - x)[~big]
    assert (
        small_err <= LOG8_ZERO_BELOW * np.broadcast_to(x.max(-1, keepdims=True), x.shape)[~big]
    ).all()
    assert (y[:, :, :40] == 0).all()


def test_log8_refuses_negative_or_nan():
    with pytest.raises(ValueError):
        log8_encode(np.array([[0.5, -0.1]]))
    with pytest.raises(ValueError):
        log8_encode(np.array([[0.5, np.nan]]))


def test_sparse_drops_only_tiny_values():
    rng = np.random.default_rng(1)
    x = _softmax_rows(rng, (4, 50, 200))
    y = sparsify(x)
    keep = x >= SPARSE_THRESHOLD
    assert np.array_equal(y[keep], x[keep])
    assert (y[~keep] == 0).all()
    assert np.abs(y.astype(np.float32) - x.astype(np.float32)).max() < SPARSE_THRESHOLD


def test_resolve():
    assert resolve(False) is Precision.LOSSLESS
    assert resolve(True) is Precision.LOG8
    assert resolve("sparse") is Precision.SPARSE
    with pytest.raises(ValueError):
        resolve("linear8")
