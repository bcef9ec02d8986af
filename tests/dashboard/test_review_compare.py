"""Compare opened from a hostile link (found in review)."""

from __future__ import annotations


def test_a_trace_compared_with_itself_asks_for_another(app, demo_store):
    """``?trace=X&compare=X`` drew a comparison of nothing (zero differences everywhere)
    without a word; it now says so and offers the picker instead."""
    for compare in (demo_store.main, demo_store.main.upper()):
        at = app("compare", trace=demo_store.main, compare=compare)
        assert not at.exception
        assert any("with itself" in i.value for i in at.info), [i.value for i in at.info]
        assert [s.label for s in at.selectbox] == ["Compare with"]
        assert not any(h.value == "Answer diff" for h in at.subheader)
