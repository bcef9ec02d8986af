"""CLEANN on recorded traces: which row to explain, and results cached in the store.

The explained node for answer token ``k`` is query row ``P - 1 + k``: in CLEANN the
explained token is the attention output whose representation yields the prediction, and
in a causal LM that is the position *before* the generated token (the token at ``P + k``
is only an input from step ``k + 1`` on). It is also the row the rest of the workbench
calls "the attention of answer token k" (see :mod:`store.schema`), so relevancy maps and
causal explanations of the same token line up. The graph spans the full ``[T, T]``
matrix (prompt square plus answer rows): candidate nodes are every image token and every
text or answer token between the image and the explained row (as in the seed tool),
filtered by :func:`methods.cleann.select_nodes`.

Results are stored with ``TraceStore.put_result(trace_id, KIND, result_key(...), payload)``
so the dashboard can show any (layer, head, token) computed at record time or by an
earlier viewer, and compute the rest on demand with :func:`cached_explanations`.
Pure numpy: the dashboard imports this without torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from methods.cleann.explain import (
    DEFAULT_ALPHA,
    DEFAULT_DOF,
    DEFAULT_MAX_RADIUS,
    CausalExplanation,
    ExplainParams,
)
from methods.cleann.heads import ProgressCallback, explain_heads
from methods.cleann.nodes import DEFAULT_MAX_IMAGE_TOKENS, DEFAULT_THRESHOLD, MIN_IMAGE_TOKENS
from store import StoredTrace, StoreReadOnly, Trace, TraceStore
from store.schema import TokenRole, TokenTable

KIND = "cleann"
# Bump when a change to the algorithm would change stored results: old keys then miss.
# 2: the learner follows causality-lab's LearnStructOrderedICD (the seed tool's CLEANN).
ALGORITHM_VERSION = 2

TraceLike = Trace | StoredTrace


@dataclass(frozen=True)
class CausalParams:
    """Everything a trace-level CLEANN result depends on besides (layer, head, token).

    The defaults are the seed tool's (IntelLabs/lvlm-interpret with causality-lab):
    alpha 1e-5, 128 pseudo-samples, search radius 3, ICD's possible-ancestor condition on
    and no cap on the conditioning-set size, so a result equals the reference's on the
    same nodes (``bench/cleann_reference.py``, tests/methods/cleann/test_reference_agreement.py).
    ``ancestor_pruning=False`` (order alone decides who may be an ancestor) and
    ``max_cond_size`` (an anytime cap on ``r``) remain available as variants, and
    ``set_order="ascending"`` gives results that do not depend on where the tokens sit
    (the reference's do; see :mod:`methods.cleann.structure`).
    """

    alpha: float = DEFAULT_ALPHA
    dof: float = DEFAULT_DOF
    max_radius: int = DEFAULT_MAX_RADIUS
    threshold: float = DEFAULT_THRESHOLD
    max_image_tokens: int = DEFAULT_MAX_IMAGE_TOKENS
    ancestor_pruning: bool = True
    max_cond_size: int | None = None
    set_order: str = "reference"

    def validate(self) -> None:
        ExplainParams(
            self.alpha, self.dof, self.max_radius, self.max_cond_size, set_order=self.set_order
        ).validate()
        if not self.threshold >= 0.0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.max_image_tokens < MIN_IMAGE_TOKENS:
            raise ValueError(
                f"max_image_tokens must be >= {MIN_IMAGE_TOKENS}, got {self.max_image_tokens}"
            )

    def key(self) -> str:
        """Stable text naming these parameters (``repr`` of a float round-trips exactly)."""
        return (
            f"v{ALGORITHM_VERSION},a={float(self.alpha)!r},dof={float(self.dof)!r},"
            f"r={int(self.max_radius)},thr={float(self.threshold)!r},"
            f"img={int(self.max_image_tokens)},anc={int(bool(self.ancestor_pruning))},"
            f"cond={'all' if self.max_cond_size is None else int(self.max_cond_size)},"
            f"ord={self.set_order}"
        )


def result_key(layer: int, head: int, token: int, params: CausalParams) -> str:
    """Store key of one result: ``L{layer}/H{head}/T{token}/{params.key()}``."""
    return f"L{int(layer)}/H{int(head)}/T{int(token)}/{params.key()}"


def target_position(tokens: TokenTable, token: int) -> int:
    """Query row that produced answer token ``token`` (``P - 1 + token``)."""
    n = tokens.answer_length
    if not 0 <= token < n:
        raise IndexError(f"answer token {token} out of range 0..{n - 1}")
    return tokens.answer_row(int(token))


def explain_token(
    trace: TraceLike,
    layer: int,
    head: int,
    token: int,
    params: CausalParams | None = None,
) -> CausalExplanation:
    """CLEANN explanation of answer token ``token`` in one head (reads only that head)."""
    layer = _index(layer, _shape(trace)[0], "layer")
    head = _index(head, _shape(trace)[1], "head")
    if isinstance(trace, StoredTrace):
        attention = trace.attention(layer, head)[None]
    else:
        attention = np.asarray(trace.lm_attention[layer, head])[None]
    return _explain(attention, [head], trace.tokens, token, params or CausalParams(), 1, None)[0]


def explain_layer(
    trace: TraceLike,
    layer: int,
    token: int,
    params: CausalParams | None = None,
    *,
    heads: Sequence[int] | None = None,
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[CausalExplanation]:
    """Explanations of answer token ``token`` for ``heads`` (default all) of one layer.

    Results follow ``heads`` order and carry ``head`` set to the real head index.
    ``workers`` and ``on_progress(done, total)`` are as in :func:`explain_heads`.
    """
    layer = _index(layer, _shape(trace)[0], "layer")
    n_heads = _shape(trace)[1]
    chosen = list(range(n_heads)) if heads is None else [_index(h, n_heads, "head") for h in heads]
    if not chosen:
        return []
    if isinstance(trace, StoredTrace):
        attention = trace.attention_heads(layer, chosen)  # only these heads' blocks
    else:
        attention = np.asarray(trace.lm_attention[layer])[chosen]
    return _explain(
        attention,
        chosen,
        trace.tokens,
        token,
        params or CausalParams(),
        workers,
        on_progress,
    )


def head_ranking(explanations: Iterable[CausalExplanation]) -> list[tuple[int, float]]:
    """``(head, head_importance)`` from most to least important (ties: lower head first);
    results without a head index are left out."""
    pairs = [(int(e.head), e.head_importance) for e in explanations if e.head is not None]
    return sorted(pairs, key=lambda p: (-p[1], p[0]))


def cached_explanations(
    store: TraceStore,
    trace_id: str,
    layer: int,
    token: int,
    params: CausalParams | None = None,
    heads: Sequence[int] | None = None,
    on_progress: ProgressCallback | None = None,
    *,
    workers: int | None = None,
) -> list[CausalExplanation]:
    """Stored explanations of (``layer``, ``token``) for ``heads`` (default all), computing
    and storing the missing ones.

    When everything is cached the trace file is not opened (the head count comes from
    the stored payloads) and a read-only store is fine; otherwise it raises
    :class:`store.StoreReadOnly` before computing anything. ``on_progress(done, total)``
    counts only the heads computed now, so it is never called on a full cache hit.
    ``layer``, ``token`` and ``heads`` must be non-negative: they are part of the key.
    """
    params = params or CausalParams()
    params.validate()
    _non_negative("layer", [layer])
    _non_negative("token", [token])
    wanted = None if heads is None else [int(h) for h in heads]
    if wanted is None:
        first = store.get_result(trace_id, KIND, result_key(layer, 0, token, params))
        wanted = None if _decode(first) is None else list(range(int(first["num_heads"])))
    found: dict[int, CausalExplanation] = {}
    if wanted is not None:
        _non_negative("head", wanted)
        for h in wanted:
            cached = _decode(store.get_result(trace_id, KIND, result_key(layer, h, token, params)))
            if cached is not None:
                found[h] = cached
    if wanted is None or any(h not in found for h in wanted):
        if store.mode != "a":
            raise StoreReadOnly(
                f"explanations of layer {layer}, token {token} are not all stored and store "
                f"{store.root} is read-only; reopen it with mode='a' to compute them"
            )
        with store.open(trace_id) as trace:
            wanted = list(range(trace.num_heads)) if wanted is None else wanted
            missing = list(dict.fromkeys(h for h in wanted if h not in found))
            found |= _compute_and_store(
                store, trace, trace_id, layer, token, params, missing, workers, on_progress
            )
    return [found[h] for h in wanted]


def record_causal(
    store: TraceStore,
    trace_id: str,
    layers: Sequence[int] | None = None,
    params: CausalParams | None = None,
    on_progress: ProgressCallback | None = None,
    *,
    workers: int | None = None,
) -> int:
    """Compute and store every head of ``layers`` (default: the last; negative indices
    count from the end) for every answer token, skipping results already stored.

    ``on_progress(done, total)`` counts heads over all layers and tokens. Returns how
    many explanations were computed.
    """
    params = params or CausalParams()
    params.validate()
    computed = 0
    with store.open(trace_id) as trace:
        n_heads = trace.num_heads
        chosen = dict.fromkeys(_index(x, trace.num_layers, "layer") for x in (layers or [-1]))
        jobs = [(x, k) for x in chosen for k in range(trace.answer_length)]
        total = len(jobs) * n_heads
        for done_jobs, (layer, token) in enumerate(jobs):
            missing = [
                h
                for h in range(n_heads)
                if _decode(store.get_result(trace_id, KIND, result_key(layer, h, token, params)))
                is None
            ]
            base = done_jobs * n_heads + n_heads - len(missing)
            progress = None if on_progress is None else _shifted(on_progress, base, total)
            _compute_and_store(
                store, trace, trace_id, layer, token, params, missing, workers, progress
            )
            computed += len(missing)
            if on_progress is not None and not missing:
                on_progress(base, total)
    return computed


def _shifted(callback: ProgressCallback, base: int, total: int) -> ProgressCallback:
    """Report one batch's ``(done, _)`` as ``(base + done, total)`` of the whole job."""
    return lambda done, _: callback(base + done, total)


def _compute_and_store(
    store: TraceStore,
    trace: StoredTrace,
    trace_id: str,
    layer: int,
    token: int,
    params: CausalParams,
    heads: list[int],
    workers: int | None,
    on_progress: ProgressCallback | None,
) -> dict[int, CausalExplanation]:
    results = explain_layer(
        trace, layer, token, params, heads=heads, workers=workers, on_progress=on_progress
    )
    for head, res in zip(heads, results, strict=True):
        payload = _payload(res, layer, token, trace.num_heads, params)
        store.put_result(trace_id, KIND, result_key(layer, head, token, params), payload)
    return dict(zip(heads, results, strict=True))


def _decode(payload: dict | None) -> CausalExplanation | None:
    """A stored result, or None when absent or not in the form this code writes (so a
    half-written or foreign entry is recomputed and replaced rather than crashing a page)."""
    if payload is None:
        return None
    try:
        _ = int(payload["num_heads"])
        return CausalExplanation.from_dict(payload)
    except (KeyError, TypeError, ValueError):
        return None


def _payload(
    res: CausalExplanation, layer: int, token: int, num_heads: int, params: CausalParams
) -> dict[str, Any]:
    """The library's JSON form plus what locates it (``from_dict`` ignores the extras)."""
    return res.to_dict() | {
        "layer": layer,
        "token": token,
        "num_heads": num_heads,
        "causal_params": asdict(params),
    }


def _explain(
    attention: np.ndarray,
    heads: list[int],
    tokens: TokenTable,
    token: int,
    params: CausalParams,
    workers: int | None,
    on_progress: ProgressCallback | None,
) -> list[CausalExplanation]:
    """Run :func:`explain_heads` on ``attention [len(heads), T, T]`` and relabel heads."""
    params.validate()
    target = target_position(tokens, token)
    roles = np.asarray(tokens.roles)
    image = np.flatnonzero(roles == TokenRole.IMAGE)
    # text after the image only, as the seed tool: the prompt before it holds the
    # attention sink and the system prompt
    after_image = int(image[-1]) + 1 if image.size else 0
    text = np.arange(after_image, target)
    results = explain_heads(
        attention,
        target,
        image[image < target],
        text,
        params.threshold,
        params.max_image_tokens,
        params.alpha,
        params.dof,
        params.max_radius,
        max_cond_size=params.max_cond_size,
        ancestor_pruning=params.ancestor_pruning,
        set_order=params.set_order,
        workers=workers,
        on_progress=on_progress,
    )
    for res, head in zip(results, heads, strict=True):
        res.head = head
    return results


def _shape(trace: TraceLike) -> tuple[int, int]:
    if isinstance(trace, StoredTrace):
        return trace.num_layers, trace.num_heads
    return int(trace.lm_attention.shape[0]), int(trace.lm_attention.shape[1])


def _index(i: int, size: int, what: str) -> int:
    """Normalise ``i`` (negative counts from the end) so results get one key per head."""
    i = int(i)
    if not -size <= i < size:
        raise IndexError(f"{what} {i} out of range 0..{size - 1}")
    return i % size


def _non_negative(what: str, values: Sequence[int]) -> None:
    for value in values:
        if int(value) < 0:
            raise ValueError(f"{what} must be >= 0 for a stored result, got {value}")
