"""Causal explanations: CLEANN graphs learned from the stored attention, and other results.

CLEANN (Rohekar et al., NeurIPS 2023) explains one answer token in one head of one layer:
a causal graph (PAG) learned over the tokens that token attends to, and the tokens within a
few PDS steps of it. Results live in the store (kind ``cleann``) keyed by layer, head, token
and parameters, so what anyone computed before shows at once; a missing result is computed
here on request, with a progress bar, and kept. Results of kind ``causal`` written by other
tools are drawn by shape below.
"""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import context, data, export, figures, render, state
from dashboard.components import causal_graph, charts, explanation, patches, stitch, text
from dashboard.components.overlay import Scale
from dashboard.config import StoreConfig
from methods.cleann import CausalExplanation
from methods.cleann.nodes import MIN_IMAGE_TOKENS
from methods.cleann.trace import KIND, CausalParams, cached_explanations, head_ranking, result_key
from store import ImageGeometry, StoredTrace, StoreError, TraceStore

ALL_HEADS = "all heads, ranked"
PARAMS = "causal:params"  # session key: parameters survive page switches
COMPUTE_ERRORS = (StoreError, ValueError, IndexError, OSError)
# Heads are explained in the server process, one after another: a process pool costs ~2 s
# to start (more than a whole small layer takes), the server's cores are shared by every
# viewer, and the bar still moves once per head (~0.3 s on a dense 7B head).
WORKERS = 1


def _param_input(values: dict, field: str, label: str, **bounds: object) -> None:
    st.number_input(
        label,
        **bounds,
        **state.widget(f"causal:{field}", values[field], lambda v: values.__setitem__(field, v)),
    )


def params_controls() -> CausalParams:
    """CLEANN parameters in an expander; the defaults are the paper's."""
    values = st.session_state.setdefault(PARAMS, asdict(CausalParams()))
    with st.expander("Parameters"):
        left, middle, right = st.columns(3)
        with left:
            _param_input(
                values,
                "alpha",
                "Significance level α",
                min_value=1e-12,
                max_value=0.5,
                format="%.1e",
                step=1e-5,
            )
            _param_input(
                values,
                "dof",
                "Degrees of freedom (pseudo-samples)",
                min_value=4.0,
                max_value=1e6,
                step=16.0,
            )
        with middle:
            _param_input(values, "max_radius", "Largest PDS radius", min_value=1, max_value=6)
            _param_input(
                values,
                "threshold",
                "Attention threshold for graph nodes",
                min_value=0.0,
                max_value=1.0,
                step=0.001,
                format="%.4f",
            )
        with right:
            _param_input(
                values,
                "max_image_tokens",
                "Most image tokens in the graph",
                min_value=MIN_IMAGE_TOKENS,
                max_value=4096,
            )
    return CausalParams(**{f.name: values[f.name] for f in fields(CausalParams)})


def head_choice(trace: StoredTrace) -> int | None:
    """One head, or ``None`` for all heads ranked by importance (URL parameter ``head``)."""
    options = [ALL_HEADS, *range(trace.num_heads)]
    current = state.as_int(state.get("head"))
    seed = current if current in options else ALL_HEADS
    picked = st.selectbox(
        "Head",
        options,
        format_func=str,
        **state.widget(
            f"causal:head:{trace.trace_id}",
            seed,
            lambda v: state.put("head", None if v == ALL_HEADS else str(v)),
        ),
    )
    return None if picked == ALL_HEADS else int(picked)


def _stored(store: TraceStore, trace_id: str, keys: list[str]) -> bool:
    return all(store.get_result(trace_id, KIND, key) is not None for key in keys)


def explanations(
    store: TraceStore,
    trace: StoredTrace,
    layer: int,
    token: int,
    params: CausalParams,
    heads: list[int] | None,
) -> list[CausalExplanation] | None:
    """Stored explanations at once; missing ones after "Compute", with a progress bar."""
    wanted = list(range(trace.num_heads)) if heads is None else heads
    keys = [result_key(layer, h, token, params) for h in wanted]
    bar = None
    if not _stored(store, trace.trace_id, keys):
        which = f"all {len(wanted)} heads" if heads is None else f"head {wanted[0]}"
        if store.mode != "a":
            st.info(
                f"No stored explanation for {which} of layer {layer} with these parameters, "
                "and the store is read-only, so none can be computed here."
            )
            return None
        offer = st.empty()  # cleared once computing starts: the results replace it
        with offer.container():
            st.caption(f"Not computed yet for {which} of layer {layer} with these parameters.")
            clicked = st.button("Compute", type="primary", icon=":material/science:")
        if not clicked:
            return None
        offer.empty()
        bar = st.progress(0.0, text=f"Learning causal graphs: 0 of {len(wanted)} heads")
    try:
        return cached_explanations(
            store,
            trace.trace_id,
            layer,
            token,
            params,
            heads,
            workers=WORKERS,
            on_progress=None
            if bar is None
            else lambda done, total: bar.progress(
                done / total, text=f"Learning causal graphs: {done} of {total} heads"
            ),
        )
    except COMPUTE_ERRORS as error:
        st.warning("CLEANN could not explain this token here.")
        st.text(str(error))
        return None
    finally:
        if bar is not None:
            bar.empty()


def explanation_images(view: explanation.TraceView, result: CausalExplanation) -> None:
    """(a) The explanation's patches on the image at each radius, then the minimal set."""
    if not any(view.patches(p) for p in result.explanation):
        st.info(
            "No image patch is in this head's explanation: within the largest radius the "
            "token's graph reaches text only (it may barely attend to the image). Try another "
            "head, a larger radius or a lower threshold."
        )
        return
    geometry = view.image
    shown = stitch.stitched_views(geometry)
    radius = result.params.max_radius
    pictures = [
        (explanation.patch_colours(view, result, r), f"radius ≤ {r}") for r in range(1, radius + 1)
    ]
    minimal = "minimal (separating)" if result.minimal_is_separating else "minimal (not proven)"
    pictures.append((explanation.minimal_colours(view, result), minimal))
    with st.container(key="causal-patches"):
        slots = st.columns(len(pictures))
        for slot, (colours, name) in zip(slots, pictures, strict=True):
            slot.image(
                render.side_by_side([_highlight(geometry, v, colours) for v in shown]),
                caption=f"{name}: {len(colours)} patches",
                width="stretch",
            )


def _highlight(geometry: ImageGeometry, view: stitch.View, colours: dict[int, str]) -> Image.Image:
    """One image with the coloured patches it shows (all its tiles' patches)."""
    boxes = [
        (box, colour)
        for patch, colour in colours.items()
        if (box := stitch.patch_fractions(geometry, view, patch)) is not None
    ]
    return patches.highlight(stitch.frame(geometry, view).pixels, boxes)


def graph_image(view: explanation.TraceView, result: CausalExplanation) -> None:
    """(b) The learned graph, patch crops and words, PAG marks on every edge."""
    whole = st.toggle(f"Show the whole graph ({len(result.nodes)} nodes)", key="causal:whole")
    nodes, edges = explanation.graph(view, result, whole=whole)
    with st.container(key="causal-graph"):
        st.image(
            causal_graph.draw_graph(nodes, edges, result.params.max_radius),
            caption=f"{len(nodes)} nodes, {len(edges)} edges; numbers are token positions",
        )


def facts(results: list[CausalExplanation], result: CausalExplanation) -> None:
    """(d) What was tested: parameters and the number of conditional-independence tests."""
    left, middle, right = st.columns(3)
    left.metric("CI tests (this head)", f"{result.n_ci_tests:,}")
    middle.metric(f"CI tests ({len(results)} heads)", f"{sum(r.n_ci_tests for r in results):,}")
    right.metric("Graph nodes", len(result.nodes))
    used = asdict(result.params)
    st.dataframe(
        pd.DataFrame({"parameter": list(used), "value": [str(v) for v in used.values()]}),
        hide_index=True,
    )


def cleann_section(config: StoreConfig, trace: StoredTrace) -> None:
    st.header("CLEANN: learned causal graph")
    if trace.num_layers == 0 or trace.num_heads == 0:
        st.info("This trace has no language-model attention to learn a graph from.")
        return
    layer = context.layer_slider("Layer", "layer", trace.num_layers, trace.num_layers - 1)
    selected = context.answer_selection(trace)
    token = selected[0]
    view = explanation.TraceView(trace.tokens, trace.image)
    answer_label = view.label(trace.tokens.prompt_length + token)
    note = " (CLEANN explains one token at a time: the first selected)" if len(selected) > 1 else ""
    st.text(f"Explaining answer token {token}: {answer_label}{note}")
    heads = head_choice(trace)
    params = params_controls()
    results = explanations(
        data.results_store(config),
        trace,
        layer,
        token,
        params,
        None if heads is None else [heads],
    )
    if not results:
        return
    ranking = head_ranking(results)
    shown = results[0] if heads is not None else next(r for r in results if r.head == ranking[0][0])
    st.subheader(f"Head {shown.head}: explanation of token {token} on the image")
    explanation_images(view, shown)
    st.dataframe(explanation.rows(view, shown), hide_index=True)
    st.subheader("Causal graph")
    graph_image(view, shown)
    if heads is None:
        # The title is a heading of its own: Vega's title sat under the graph picture above.
        st.subheader(f"Layer {layer}: heads ranked by causal importance")
        st.altair_chart(charts.head_importance_bars(ranking, shown.head), width="stretch")
    facts(results, shown)
    whole = bool(st.session_state.get("causal:whole"))
    drawn = figures.causal_figures(trace, results, whole=whole)  # lazy: drawn on download
    export.figure_gallery(
        trace.trace_id, [export.Offer(f.title, f.name, lambda f=f: f) for f in drawn]
    )


def show_payload(trace: StoredTrace, payload: dict) -> None:
    """Draw each field of another tool's causal result by what it looks like: a value per
    image patch becomes a map, a value per answer token a bar chart, numbers become
    metrics, anything else is shown as JSON. Field names come from a file: shown as text."""
    count = trace.image.num_patches
    answer = [text.token_label(t) for t in trace.tokens.text[trace.tokens.prompt_length :]]
    style = None  # the sidebar's heatmap controls, drawn once for all maps
    views: tuple[stitch.View, ...] = ()
    rest: dict = {}
    for index, (name, value) in enumerate(payload.items()):
        array = np.asarray(value) if isinstance(value, list) else None
        numeric = array is not None and array.dtype.kind in "fiu"
        if isinstance(value, int | float) and not isinstance(value, bool):
            st.metric(text.markdown_literal(name), f"{value:.4g}")
        elif numeric and array.size == count:
            st.text(f"{name} (per image patch)")
            style = style or context.overlay_style()
            views = views or render.choose_views(trace, key="causal:tiles")
            values = array.ravel().astype(np.float64)
            render.heatmap(
                trace,
                values,
                style,
                Scale.of(values, f"{name} (score)"),
                views,
                key=f"causal-map-{index}",
            )
        elif numeric and array.ndim == 1 and array.size == len(answer):
            st.altair_chart(
                charts.token_bars(answer, array, name, f"{name} (score)"), width="stretch"
            )
        else:
            rest[name] = value
    if rest:
        st.json(rest, expanded=False)


def other_results(config: StoreConfig, trace: StoredTrace) -> None:
    results = data.store(config).list_results(trace.trace_id, "causal")
    if not results:
        return
    st.header("Other recorded causal results")
    keys = sorted(results)
    key = st.selectbox(
        "Result",
        keys,
        **state.widget(
            f"causal:key:{trace.trace_id}",
            context.choice_param("result", keys, keys[0]),
            lambda v: state.put("result", None if v == keys[0] else v),
        ),
    )
    show_payload(trace, results[key])


def render_page() -> None:
    config, trace = context.trace_page("Causal explanations")
    cleann_section(config, trace)
    other_results(config, trace)


render_page()
