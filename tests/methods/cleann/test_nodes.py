"""Node selection rule of the seed tool."""

import numpy as np
import pytest

from methods.cleann.nodes import select_nodes

IMAGE = np.arange(10, 30)
TEXT = np.concatenate([np.arange(10), np.arange(30, 40)])


def _row(values: dict[int, float], size: int = 40) -> np.ndarray:
    row = np.full(size, 1e-4)
    for pos, v in values.items():
        row[pos] = v
    return row


def test_top_image_tokens_text_above_threshold_and_target():
    # as the seed tool: five tokens of the row exceed 0.01 (two of them text), so the five
    # most attended image tokens are kept, ties broken by position; text strictly above
    row = _row({12: 0.2, 25: 0.1, 17: 0.05, 0: 0.4, 33: 0.02, 34: 0.01})
    nodes = select_nodes(row, IMAGE, TEXT, target=36)
    np.testing.assert_array_equal(nodes, [0, 10, 11, 12, 17, 25, 33, 36])


def test_at_least_two_image_tokens_when_none_is_attended():
    row = _row({0: 0.9})
    nodes = select_nodes(row, IMAGE, TEXT, target=36)
    assert np.isin(nodes, IMAGE).sum() == 2
    np.testing.assert_array_equal(nodes, [0, 10, 11, 36])  # ties broken by position


def test_image_tokens_capped():
    row = _row({p: 0.03 for p in IMAGE})
    assert np.isin(select_nodes(row, IMAGE, TEXT, 36, max_image_tokens=5), IMAGE).sum() == 5


def test_invalid_inputs():
    row = _row({})
    with pytest.raises(ValueError, match="outside"):
        select_nodes(row, IMAGE, TEXT, target=40)
    with pytest.raises(ValueError, match="image_positions"):
        select_nodes(row, np.array([50]), TEXT, target=36)
    with pytest.raises(ValueError, match="max_image_tokens"):
        select_nodes(row, IMAGE, TEXT, target=36, max_image_tokens=1)
