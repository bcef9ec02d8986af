"""The sections of one trace in a report: what was asked and answered, the maps, the numbers
recorded for it, its causal explanation, the analysts' notes and where it came from.

A section shows what the store holds and nothing else: a trace without relevancy has no
relevancy maps, a trace without metrics says "no metrics recorded". Figures come from
:mod:`dashboard.figures` (the dashboard's own drawing), embedded as ``data:`` images.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from dashboard import figures
from dashboard.components import charts, explanation, results, text
from dashboard.components.overlay import OverlayStyle
from dashboard.figures import Figure
from dashboard.figures import faithfulness as faith_figures
from dashboard.report import page
from methods.cleann import CausalExplanation
from methods.cleann.trace import KIND as CLEANN
from store import Note, RelevancyMode, StoredTrace, TraceStore

# Result kinds a report shows by their shape (numbers, a map per patch, a chart per answer
# token, else JSON): "causal" (other tools' causal results, as the Causal page shows them) and
# the kinds evaluations store their numbers under. Results of this project's methods
# (methods/) have sections of their own (Faithfulness, Flagged tokens) and are not repeated.
RESULT_KINDS = ("causal", "faithfulness", "methods")
FLAG_KIND = "flags"  # flagged tokens, where another tool recorded them
_CLEANN_KEY = re.compile(r"^L(\d+)/H(\d+)/T(\d+)/(.+)$")


@dataclass(frozen=True)
class ReportOptions:
    """What a report draws. Defaults give a complete but compact report of a trace.

    ``tokens``: answer token indices the maps explain (default: the first). ``modes``:
    relevancy modes (default: every mode the trace holds — the method comparison).
    ``layer``: the attention layer (default: the most image-attending); ``heads``: how many
    of its heads, ranked by attention on the image. ``scale``: resolution of embedded
    pictures (1 = screen, 2 = print). ``photo_format``: ``"jpeg"`` (smaller; maps are smooth
    colour fields) or ``"png"``. ``limit``: most traces a set report lists and shows a
    thumbnail of. ``causal``: include stored causal explanations. ``title``: the page title.
    """

    tokens: tuple[int, ...] = ()
    modes: tuple[str, ...] = ()
    layer: int | None = None
    heads: int = 4
    style: OverlayStyle = field(default_factory=OverlayStyle)
    scale: float = 1.5
    photo_format: str = "jpeg"
    limit: int = 100
    causal: bool = True
    title: str | None = None


def embed(fig: Figure, options: ReportOptions) -> str:
    """A figure as a self-contained ``<figure>``: charts as vector SVG, pictures as JPEG or
    PNG at the report's scale (graphs always PNG: thin lines and text)."""
    if fig.kind == "chart":
        url = fig.data_url("svg")
    elif fig.kind == "graph" or options.photo_format == "png":
        url = fig.data_url("png", options.scale)
    else:
        picture = Image.open(io.BytesIO(fig.png(options.scale)))
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="JPEG", quality=88)
        url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return page.figure(url, fig.title, fig.caption)


def _attempt(build: Callable[[], Figure], options: ReportOptions) -> str:
    """A figure, or the one line saying why this trace cannot draw it."""
    try:
        return embed(build(), options)
    except ValueError as error:
        return page.empty(f"Not drawn: {error}.")


def anchor(trace_id: str, part: str) -> str:
    return f"t{trace_id}-{part}"


def overview(trace: StoredTrace) -> str:
    info = trace.info
    correct = {True: "yes", False: "no", None: "not judged"}[info.correct]
    pairs = [
        ("Prompt", info.prompt),
        ("Answer", info.answer),
        ("Reference answer", info.reference_answer or "none"),
        ("Correct", correct),
        ("Tags", ", ".join(info.tags) or "none"),
        ("Model", f"{info.model_id} @ {info.model_revision}"),
        ("Recorded", text.short_time(info.created_at)),
        ("Trace id", info.trace_id),
    ]
    return page.facts(pairs)


def maps_section(trace: StoredTrace, options: ReportOptions) -> str:
    """The chosen maps: image, relevancy in each mode (the method comparison), attention."""
    parts = [embed(figures.image_figure(trace), options)]
    if trace.tokens.answer_length == 0:
        return parts[0] + page.empty("This trace has no answer tokens: no maps to draw.")
    tokens = figures.check_tokens(trace, options.tokens)
    relevancy = trace.relevancy
    if relevancy is None:
        parts.append(page.empty("Relevancy was not recorded for this trace."))
    else:
        held = [m for m in relevancy.modes if not options.modes or m.value in options.modes]
        # side by side (two or more a row on screen): the modes are the method comparison
        modes = (
            _attempt(
                lambda m=mode: figures.relevancy_figure(
                    trace, tokens, RelevancyMode(m), options.style
                ),
                options,
            )
            for mode in held
        )
        parts.append(f'<div class="modes">{"".join(modes)}</div>')
        parts.append(_attempt(lambda: figures.text_relevancy_chart(trace, tokens), options))
    if trace.image.token_patches.rows.size:
        parts.append(
            _attempt(
                lambda: figures.attention_figure(
                    trace, options.layer, options.heads, tokens, options.style
                ),
                options,
            )
        )
    elif trace.cross_layers:
        parts.append(
            _attempt(
                lambda: figures.cross_attention_figure(trace, 0, None, tokens, options.style),
                options,
            )
        )
    parts.append(_attempt(lambda: figures.probability_chart(trace, tokens), options))
    return "".join(parts)


def _payload(trace: StoredTrace, name: str, payload: dict, options: ReportOptions) -> str:
    """A stored result shown by its shape, like the Causal page's "other results"."""
    numbers, rest, parts = [], {}, []
    count, answer = trace.image.num_patches, figures.answer_labels(trace)
    for key, value in payload.items():
        array = np.asarray(value) if isinstance(value, list) else None
        numeric = array is not None and array.dtype.kind in "fiu"
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers.append((key, value))
        elif numeric and array.size == count:
            values = array.ravel().astype(np.float64)
            fig = figures.map_figure(
                trace,
                values,
                name=f"{text.short_id(trace.trace_id)}-result",
                title=f"{name}: {key} (per image patch)",
                style=options.style,
                scale_title=f"{key} (score)",
            )
            parts.append(embed(fig, options))
        elif numeric and array.ndim == 1 and array.size == len(answer):
            chart = charts.token_bars(answer, array, f"{key}", f"{key} (score)")
            fig = figures.chart_figure(chart, "result", f"{name}: {key} (per answer token)", "")
            parts.append(embed(fig, options))
        else:
            rest[key] = value
    head = page.table(["value", "number"], numbers) if numbers else ""
    return head + "".join(parts) + (page.json_text(rest) if rest else "")


def numbers_section(trace: StoredTrace, store: TraceStore, options: ReportOptions) -> str:
    """Metrics on the trace and evaluation results stored for it, as recorded."""
    metrics = trace.info.metrics
    parts = [
        page.table(["metric", "value"], sorted(metrics.items()))
        if metrics
        else page.empty("No metrics recorded for this trace.")
    ]
    found = False
    for kind in RESULT_KINDS:
        for key, payload in sorted(store.list_results(trace.trace_id, kind).items()):
            if results.method_of(payload) is not None:
                continue  # drawn by the Faithfulness section
            found = True
            parts.append(f"<h4>{page.esc(kind)}: {page.esc(key)}</h4>")
            parts.append(_payload(trace, key, payload, options))
    if not found:
        kinds = ", ".join(RESULT_KINDS)
        parts.append(page.empty(f"No stored results of kind {kinds} for this trace."))
    return "".join(parts)


def _cell(value: object) -> object:
    """A table cell: a score, or a dash where it was not computed (NaN)."""
    return "–" if isinstance(value, float) and not np.isfinite(value) else value


def faithfulness_section(trace: StoredTrace, store: TraceStore, options: ReportOptions) -> str:
    """What ``lvlm-interpret analyse`` stored, as the Faithfulness page shows it: the method
    table over the whole answer, the first chosen token's deletion and insertion curves, and
    the stored maps (occlusion, CLEANN) of that token."""
    stored = results.latest(store.list_results(trace.trace_id, results.FAITHFULNESS))
    table = results.method_table(stored)
    if not len(table):
        return page.empty(
            "No faithfulness results stored for this trace: lvlm-interpret analyse "
            f"{trace.trace_id} --metrics localisation,deletion,insertion --model CHECKPOINT"
        )
    rows = [[_cell(v) for v in row] for row in table.itertuples(index=False)]
    parts = [
        page.table(list(table.columns), rows),
        page.empty("Mean over the answer's tokens; ↑ higher is better, ↓ lower is better."),
    ]
    if trace.tokens.answer_length == 0:
        return "".join(parts)
    token = figures.check_tokens(trace, options.tokens)[0]
    if results.DELETION in stored or results.INSERTION in stored:
        parts.append(_attempt(lambda: faith_figures.curves_figure(trace, store, token), options))
    if store.list_results(trace.trace_id, results.EVIDENCE):
        parts.append(
            _attempt(
                lambda: faith_figures.evidence_figure(trace, store, token, options.style),
                options,
            )
        )
    for method in results.latest(store.list_results(trace.trace_id, results.MAPS)):
        parts.append(
            _attempt(
                lambda m=method: faith_figures.stored_map_figure(
                    trace, store, m, token, options.style
                ),
                options,
            )
        )
    return "".join(parts)


def flags_section(trace: StoredTrace, store: TraceStore) -> str:
    """The answer's words with their visual grounding and hallucination flags, from the
    newest readable grounding result (``lvlm-interpret analyse --metrics grounding``), then
    flags other tools stored (kind ``flags``) as they wrote them."""
    parts = [_grounding_flags(trace, store)]
    parts += [
        f"<h4>{page.esc(key)}</h4>{page.json_text(payload)}"
        for key, payload in sorted(store.list_results(trace.trace_id, FLAG_KIND).items())
    ]
    return "".join(parts)


def _grounding_flags(trace: StoredTrace, store: TraceStore) -> str:
    labels = trace.tokens.text[trace.prompt_length :]
    grounded = results.latest(store.list_results(trace.trace_id, results.GROUNDING))
    for payload in reversed(grounded.values()):
        try:
            found = results.grounding(payload, labels)
        except results.Unreadable:
            continue
        words, threshold = found.words, found.threshold
        flagged = [w for w, f in zip(words["word"], words["flagged"], strict=True) if f]
        below = "" if threshold is None else f" (grounding below {threshold:g})"
        summary = (
            f"Flagged content words{below}: {', '.join(flagged)}."
            if flagged
            else f"No content word is flagged{below}."
        )
        rows = [[_cell(v) for v in row] for row in words.itertuples(index=False)]
        return page.empty(summary) + page.table(list(words.columns), rows)
    return page.empty(
        "No grounding result stored for this trace: lvlm-interpret analyse "
        f"{trace.trace_id} --metrics grounding --model CHECKPOINT"
    )


def stored_explanations(store: TraceStore, trace_id: str) -> dict[tuple, list[CausalExplanation]]:
    """Stored CLEANN results grouped by (layer, token, parameters), heads in order; entries
    not in the form CLEANN writes are left out (the Causal page recomputes those)."""
    groups: dict[tuple, list[tuple[int, CausalExplanation]]] = {}
    for key, payload in store.list_results(trace_id, CLEANN).items():
        match = _CLEANN_KEY.match(key)
        if not match:
            continue
        try:
            result = CausalExplanation.from_dict(payload)
        except (KeyError, TypeError, ValueError):
            continue
        layer, head, token, params = match.groups()
        groups.setdefault((int(layer), int(token), params), []).append((int(head), result))
    return {k: [r for _, r in sorted(v, key=lambda p: p[0])] for k, v in sorted(groups.items())}


def causal_section(trace: StoredTrace, store: TraceStore, options: ReportOptions) -> str:
    """The first stored (layer, token) CLEANN explanation: patches, graph, head ranking."""
    groups = stored_explanations(store, trace.trace_id)
    wanted = set(options.tokens or [0])
    chosen = next((k for k in groups if k[1] in wanted), next(iter(groups), None))
    parts = []
    if chosen is None:
        parts.append(page.empty("No CLEANN explanation stored for this trace."))
    else:
        layer, token, _ = chosen
        results = groups[chosen]
        others = len(groups) - 1
        parts.append(
            page.empty(
                f"Layer {layer}, answer token {token}, {len(results)} head(s)"
                + (
                    f"; {others} more stored (layer, token) explanation(s) not shown."
                    if others
                    else "."
                )
            )
        )
        parts += [embed(f, options) for f in figures.causal_figures(trace, results)]
        view = explanation.TraceView(trace.tokens, trace.image)
        shown = max(results, key=lambda r: r.head_importance)
        rows = explanation.rows(view, shown)
        if rows:
            parts.append(page.table(list(rows[0]), [list(r.values()) for r in rows]))
        params = results[0].params
        parts.append(
            page.table(["parameter", "value"], [(k, str(v)) for k, v in asdict(params).items()])
        )
    other = store.list_results(trace.trace_id, "causal")
    if other:
        parts.append(page.empty(f"{len(other)} other causal result(s): see Metrics and results."))
    return "".join(parts)


def _where(trace: StoredTrace, note: Note) -> str:
    if note.token_position is not None:
        position = note.token_position
        texts = trace.tokens.text
        label = text.token_label(texts[position]) if 0 <= position < len(texts) else "?"
        return f"token {position}: {label}"
    if note.region is not None:
        image, (x0, y0, x1, y1) = note.region
        return f"image {image + 1}, x {x0:g}–{x1:g}, y {y0:g}–{y1:g} px"
    return "the trace"


def notes_section(trace: StoredTrace, store: TraceStore) -> str:
    notes = store.notes(trace.trace_id)
    if not notes:
        return page.empty("No notes on this trace.")
    rows = [
        (text.short_time(n.created_at), n.author or "", _where(trace, n), n.text) for n in notes
    ]
    return page.table(["written", "author", "on", "note"], rows)


def provenance_section(trace: StoredTrace) -> str:
    info = trace.info
    extra = info.extra if isinstance(info.extra, dict) else {}
    pairs = [
        ("Model", info.model_id),
        ("Revision", info.model_revision),
        ("Adapter", info.adapter),
        ("Attention implementation", info.attn_implementation),
        ("Recorded", info.created_at),
        ("Image", f"{info.image_name} (sha256 {info.image_sha256})"),
        ("Recording policy", trace.policy.value if trace.policy else "custom rows"),
        (
            "Precision",
            str(trace.precision.value if hasattr(trace.precision, "value") else trace.precision),
        ),
    ]
    parts = [page.facts(pairs), "<h4>Generation settings</h4>"]
    parts.append(
        page.table(["setting", "value"], [(k, str(v)) for k, v in asdict(info.generation).items()])
    )
    for key, title in (
        ("recording", "Recording options"),
        ("loading", "Loading options"),
        ("versions", "Versions"),
    ):
        if key in extra:
            parts.append(f"<h4>{title}</h4>{page.json_text(extra[key])}")
    return "".join(parts)


def trace_sections(
    trace: StoredTrace, store: TraceStore, options: ReportOptions
) -> tuple[str, list[tuple[str, str]]]:
    """Every section of one trace, and its table-of-contents entries."""
    tid, short = trace.trace_id, text.short_id(trace.trace_id)
    parts = [
        ("overview", "Question and answer", overview(trace)),
        ("maps", "Maps", maps_section(trace, options)),
        ("numbers", "Metrics and results", numbers_section(trace, store, options)),
        ("faithfulness", "Faithfulness", faithfulness_section(trace, store, options)),
        ("flags", "Flagged tokens", flags_section(trace, store)),
    ]
    if options.causal:
        parts.append(("causal", "Causal explanation", causal_section(trace, store, options)))
    parts += [
        ("notes", "Notes", notes_section(trace, store)),
        ("provenance", "Provenance", provenance_section(trace)),
    ]
    body = "".join(page.section(anchor(tid, a), t, b, level=3) for a, t, b in parts)
    title = f"Trace {short}: {trace.info.prompt}"
    html = page.section(anchor(tid, "trace"), title, body, kind="trace")
    return html, [(anchor(tid, "trace"), title)]
