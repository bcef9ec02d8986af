"""Dataset page links with hostile page numbers (found in review)."""

from __future__ import annotations

import dataclasses

import pytest

from store import open_store
from store.synthetic import make_synthetic_trace

QUESTIONS = 12  # two pages of pairs (10 a page)
SHAPE = dict(num_layers=2, num_heads=2, prompt_len=36, answer_len=3, grid=(3, 4))


@pytest.fixture(scope="module")
def twelve_pairs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("twelve-pairs")
    with open_store(directory, writable=True) as store:
        for q in range(QUESTIONS):
            for revision in ("rev-a", "rev-b"):
                trace = make_synthetic_trace(**SHAPE, seed=500 + q, model_revision=revision)
                info = dataclasses.replace(trace.info, reference_answer=trace.info.answer)
                store.add(dataclasses.replace(trace, info=info))
    return directory


def _compare_buttons(at) -> int:
    assert not at.exception, [e.value for e in at.exception]
    return sum(b.label == "Compare" for b in at.button)


def test_page_numbers_past_the_end_clip_to_the_last_page(app, twelve_pairs):
    """pairs=2 and pairs=1000000 (7 digits) showed the last page, but 10**7 and longer fell
    back to the FIRST page: the clipping rule depended on how many digits were typed."""
    assert _compare_buttons(app("dataset", store_dir=twelve_pairs)) == 10
    for pairs in ("2", "1000000", "10000000", "9" * 25):
        assert _compare_buttons(app("dataset", store_dir=twelve_pairs, pairs=pairs)) == 2, pairs
    for pairs in ("0", "-3", "abc", "nan", "1e400", "\u0661\u0662", "' OR 1=1--"):
        assert _compare_buttons(app("dataset", store_dir=twelve_pairs, pairs=pairs)) == 10, pairs
