"""Relevancy (Chefer et al.): what each answer token relied on, in every recorded mode.

For the selected tokens: the image map in the chosen mode (with that mode's definition) and
the text relevancy of the prompt's words against the image's share. Across the answer: a
gallery of maps and the answer shaded by how much each token relied on the image.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import context, export, figures, notes, render, state
from dashboard.components import analysis, charts, html, text
from dashboard.components.overlay import Scale
from store import Relevancy, RelevancyMode, StoredTrace, TokenRole
from store.frames import relevancy_image_share

SCORE = "relevancy (normalised score)"


def mode_maps(trace: StoredTrace, mode: RelevancyMode) -> np.ndarray:
    """[N, G] relevancy maps of every answer token in ``mode`` (a held mode), per patch as
    ``store relevancy`` prints them (``Relevancy.on_patches``)."""
    return np.asarray(trace.relevancy.on_patches(mode, trace.image), np.float64)


def text_relevancy(trace: StoredTrace, selected: list[int], hide_template: bool) -> None:
    """Top prompt words by relevancy, next to the share the image got as a whole."""
    tokens = trace.tokens
    row = trace.relevancy.llm[selected].mean(axis=0)
    template = context.template_positions(trace) if hide_template else set()
    prompt_words = [
        w
        for w in text.words(tokens.text, tokens.roles, tokens.word_ids, TokenRole.TEXT)
        if w.positions[0] < tokens.prompt_length and not template.issuperset(w.positions)
    ]
    values = analysis.grouped_sum(np.clip(row, 0, None), [w.positions for w in prompt_words])
    image_total = float(np.clip(row[tokens.image_positions], 0, None).sum())
    total = values.sum() + image_total
    labels = ["⟨image⟩", *(w.text for w in prompt_words)]
    shares = np.concatenate([[image_total], values]) / (total if total > 0 else 1.0)
    st.altair_chart(
        charts.token_bars(
            labels,
            shares,
            "Relevancy of the prompt's words and the image",
            "share of relevancy (%)",
            top=15,
            percent=True,
        ),
        width="stretch",
    )


def choose_mode(relevancy: Relevancy) -> RelevancyMode:
    """The mode picker (URL parameter ``mode``) over the modes this trace holds.

    An old trace (format 1) has no seed-defined ``all``; a link asking for it gets the map
    that trace called "all" (``llm_through_vision``) with a note saying so.
    """
    held = relevancy.modes
    asked = state.get("mode")
    note = relevancy.legacy_note
    if asked == RelevancyMode.ALL.value and RelevancyMode.ALL not in held and note:
        st.info(
            text.markdown_literal(
                "This link asks for 'all', which this trace does not hold. " + note
            )
            + "  \nShowing LLM through vision, the map this trace called 'all'."
        )
        seed = RelevancyMode.LLM_THROUGH_VISION
    else:
        seed = next((m for m in held if m.value == asked), held[0])
    mode = st.segmented_control(
        "Mode",
        held,
        format_func=lambda m: m.label,
        **state.widget("rel:mode", seed, lambda v: state.put("mode", v.value if v else None)),
    )
    mode = mode or seed
    st.caption(text.markdown_literal(mode.definition))
    absent = [m for m in RelevancyMode if m not in held]
    if absent:
        names = ", ".join(m.label for m in absent)
        why = note or "These maps were not recorded for this trace."
        st.caption(text.markdown_literal(f"Not available for this trace: {names}. {why}"))
    return mode


def all_vs_vision(relevancy: Relevancy, selected: list[int]) -> str | None:
    """How far the seed's "all" is from the vision map for the selected tokens (L1, %)."""
    seed_all, vision = relevancy.map(RelevancyMode.ALL), relevancy.map(RelevancyMode.VISION)
    if seed_all is None or vision is None:
        return None
    a = np.asarray(seed_all, np.float64)[selected].mean(axis=0)
    v = np.asarray(vision, np.float64)[selected].mean(axis=0)
    gap = analysis.relative_l1(a, v)
    if gap is None:
        return None
    return (
        f"For these tokens, 'all' differs from 'vision' by {gap:.1%} (L1, relative to vision): "
        "the seed's 'all' mostly repeats the vision map when the LM's image-by-image "
        "relevancy is close to the identity."
    )


def render_page() -> None:
    config, trace = context.trace_page("Relevancy")
    if trace.relevancy is None:
        st.info(
            "Relevancy was not recorded for this trace (record with relevancy enabled to see it)."
        )
    else:
        export.figure_gallery(trace.trace_id, relevancy_views(trace))
    notes.panel(config, trace)


def relevancy_views(trace: StoredTrace) -> list[export.Offer]:
    """The selected tokens' map and text relevancy, the answer's image reliance, the gallery;
    returns those figures for export, drawn with the same settings."""
    style = context.overlay_style()
    views = render.choose_views(trace)
    hide_template = context.hide_template_toggle()
    selected = context.answer_selection(trace)
    mode = choose_mode(trace.relevancy)
    maps = mode_maps(trace, mode)
    scale = Scale.of(maps, SCORE, zero=True)
    answer = [text.token_label(t) for t in trace.tokens.text[trace.tokens.prompt_length :]]
    left, right = st.columns(2)
    with left:
        st.text(f"Mode {mode.label} · " + ", ".join(f"{k}: {answer[k]}" for k in selected))
        render.heatmap(trace, maps[selected].mean(axis=0), style, scale, views)
        closeness = all_vs_vision(trace.relevancy, selected)
        if closeness:
            st.caption(closeness)
    with right:
        text_relevancy(trace, selected, hide_template)
    st.subheader("How much each answer token relied on the image")
    reliance = relevancy_image_share(trace.relevancy.llm, trace.tokens.image_positions)
    st.html(
        html.shaded_tokens(
            trace.tokens.text[trace.tokens.prompt_length :], reliance, style.colormap
        )
    )
    st.caption("Background: share of each token's relevancy on image tokens (0 = text, 1 = image).")
    st.subheader("Across the answer")
    st.caption(f"One map per answer token, mode {mode.label}; each is captioned with its token.")
    render.gallery(
        trace,
        list(maps),
        [f"token {k}: {t}" for k, t in enumerate(answer)],
        style,
        scale,
        views,
        columns=6,
        key="gallery",
    )
    return [
        export.Offer(
            f"Relevancy map ({mode.label}) of the selected tokens",
            f"relevancy-{mode.value}",
            lambda: figures.relevancy_figure(trace, selected, mode, style, views),
        ),
        export.Offer(
            "Relevancy of the prompt's words and the image",
            "text-relevancy",
            lambda: figures.text_relevancy_chart(trace, selected, hide_template),
        ),
        export.Offer(
            f"Gallery: one map per answer token ({mode.label})",
            f"relevancy-gallery-{mode.value}",
            lambda: figures.relevancy_gallery(trace, mode, style, views),
        ),
    ]


render_page()
