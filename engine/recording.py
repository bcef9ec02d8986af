"""Record one request into a store, once: the step ``record``, ``demo record`` and
``record-dataset`` share.

A trace's id is derived from what determines its contents, so recording the same request
again (a re-run, a retried shard, two machines on one store) finds it stored and skips it
instead of storing a duplicate. The identity fields, hashed as canonical JSON (sorted keys,
no spaces) with SHA-256, of which the first 32 hex digits are the id:

- ``model``: the model id, its revision (hub commit or weights hash) and how it was loaded
  (dtype, quantization, device map: another measurement of the attention);
- ``images``: the SHA-256 of each image file's bytes, in prompt order;
- ``prompt``: the checked prompt text;
- ``generation``: every generation setting (length, sampling, temperature, top-p, seed);
- ``recording``: relevancy, vision attention, the attention-row policy and lossy storage;
- ``history`` (only for a follow-up question): the earlier (question, answer) turns the
  prompt follows in the chat — another conversation is another measurement.

Reference answers, tags and extra metadata are labels about a trace, not part of what was
measured, so they are not in the identity: a re-run with a corrected reference skips.
Causal explanations (CLEANN) are results derived from a stored trace, not part of it either:
asking for them again computes those missing, on a new trace or one stored before (after a
crash between storing and explaining, say).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.inputs import ImageInput, check_generation, check_prompt
from engine.loading import LoadedModel
from engine.recorder import Progress, RecordOptions, record
from methods.cleann.trace import record_causal
from store import TraceStore
from store.schema import Trace, TraceInfo


def stored_history(extra: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The earlier (question, answer) turns a follow-up trace was asked after, as recording
    wrote them into ``extra["history"]``: what a method re-reading the trace must put back
    in the chat, or its prompt would not tokenise to the stored tokens. Malformed entries
    (``extra`` is free-form JSON read back from a file) are left out."""
    turns = extra.get("history")
    if not isinstance(turns, list):
        return ()
    return tuple(
        (str(turn[0]), str(turn[1]))
        for turn in turns
        if isinstance(turn, list | tuple) and len(turn) == 2
    )


@dataclass(frozen=True)
class RecordRequest:
    """Everything one trace is recorded from, apart from the loaded model."""

    images: tuple[ImageInput, ...]
    prompt: str
    options: RecordOptions = field(default_factory=RecordOptions)
    reference: str | None = None
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    lossy: str | None = None  # "log8" or "sparse"; None keeps fp16 attention exactly
    causal: tuple[int, ...] | None = None  # CLEANN layers; () the last; None: no explanations
    history: tuple[tuple[str, str], ...] = ()  # earlier (question, answer) turns: a follow-up


@dataclass(frozen=True)
class Recorded:
    """The outcome of :func:`record_into_store`: ``info`` is None when the trace was stored
    already (nothing was recorded)."""

    trace_id: str
    info: TraceInfo | None

    @property
    def skipped(self) -> bool:
        return self.info is None


def trace_identity(loaded: LoadedModel, request: RecordRequest) -> dict[str, Any]:
    """The fields a trace's id is derived from (see the module docstring)."""
    options = request.options
    return {
        "model": {
            "id": loaded.model_id,
            "revision": loaded.revision,
            "dtype": loaded.dtype,
            "device_map": loaded.device_map,
            "quantization": loaded.quantization.describe() if loaded.quantization else None,
        },
        "images": [image.sha256 for image in request.images],
        "prompt": check_prompt(request.prompt),
        "generation": asdict(check_generation(options.generation)),
        "recording": {
            "relevancy": options.relevancy,
            "vision_attention": options.vision_attention,
            "policy": options.policy.value if options.policy else None,
            "lossy": request.lossy,
        },
    } | _history_extra(request.history)


def _history_extra(history: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """``{"history": [[question, answer], ...]}`` for a follow-up, nothing otherwise: the form
    :func:`stored_history` reads back."""
    return {"history": [list(turn) for turn in history]} if history else {}


def identity_trace_id(identity: dict[str, Any]) -> str:
    """First 32 hex digits of SHA-256 over the identity's canonical JSON."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def record_into_store(
    store: TraceStore,
    loaded: LoadedModel,
    request: RecordRequest,
    progress: Progress | None = None,
) -> Recorded:
    """Record ``request`` and add it under its identity's id, unless that id is stored; then
    compute the causal explanations it asks for that are not stored yet.

    The store is asked before recording (a re-run costs a lookup per trace) and again by the
    add itself, which is atomic and refuses a second copy: an interruption loses at most the
    trace in flight, and a concurrent writer of the same trace wins without a duplicate.
    """
    trace_id = identity_trace_id(trace_identity(loaded, request))
    report = progress or (lambda stage, done, total: None)
    recorded = (
        Recorded(trace_id, None)
        if trace_id in store
        else _record(store, loaded, request, trace_id, report)
    )
    if request.causal is not None:
        layers = list(request.causal) or None
        record_causal(store, trace_id, layers, on_progress=lambda d, t: report("causal", d, t))
    return recorded


def record_trace(
    loaded: LoadedModel,
    request: RecordRequest,
    trace_id: str,
    progress: Progress | None = None,
) -> Trace:
    """``request`` recorded under ``trace_id``, not stored: the step that a pipeline storing
    traces in a stage of its own (engine/distributed.py) shares with :func:`record_into_store`."""
    trace = record(
        loaded,
        list(request.images),
        request.prompt,
        request.options,
        reference_answer=request.reference,
        tags=request.tags,
        # the turns go with the trace: whatever re-reads it must rebuild the same chat
        extra=request.extra | _history_extra(request.history),
        progress=progress,
        history=request.history,
    )
    return replace(trace, info=replace(trace.info, trace_id=trace_id))


def _record(
    store: TraceStore,
    loaded: LoadedModel,
    request: RecordRequest,
    trace_id: str,
    progress: Progress,
) -> Recorded:
    trace = record_trace(loaded, request, trace_id, progress)
    if not store.add_new(trace, lossy=request.lossy or False):
        return Recorded(trace_id, None)
    return Recorded(trace_id, trace.info)
