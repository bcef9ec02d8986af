"""The method contract: a named, versioned analysis with frozen parameters, and the record
it returns.

Why: a stored number is only comparable with another if both say which method, which version
of it and which parameters produced them. :func:`params_key` hashes the parameters as
canonical JSON (sorted keys, no spaces), so equal parameters give equal keys on every machine
and a re-run replaces its own result instead of adding a duplicate; a changed parameter or a
bumped version stores beside the old result rather than over it.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from store import TraceStore
    from store._stored import StoredTrace


class Needs(str, enum.Enum):
    """What a method reads besides the trace's tokens: decides what the CLI must load or
    check before running it (a model is loaded only when a chosen method needs it)."""

    MODEL = "model"  # re-runs the model (perturbation)
    ATTENTION = "attention"  # stored LM attention
    RELEVANCY = "relevancy"  # stored relevancy maps
    GROUND_TRUTH = "ground_truth"  # object boxes in TraceInfo.extra


def canonical_json(value: Any) -> str:
    """The one JSON form hashed for keys: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def params_key(params: Any) -> str:
    """First 12 hex digits of SHA-256 over the parameters' canonical JSON."""
    data = asdict(params) if params is not None else {}
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()[:12]


def json_number(value: float) -> float | None:
    """A float JSON can hold: NaN and infinities (a score that does not apply) become null."""
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class MethodResult:
    """One method's output on one trace.

    ``per_token``: named series, one JSON-safe list per answer token or per curve step (the
    shape is the method's to document); ``headline``: the few numbers worth filtering traces
    by, stored as metrics named ``<number>.<map>``; ``provenance``: what else a reader needs
    to trust the numbers (model identity, library versions, stated conventions).
    """

    method: str
    version: str
    kind: str  # the store's result kind ("faithfulness", "methods", "flags")
    params: dict[str, Any]
    params_key: str
    per_token: dict[str, Any]
    headline: dict[str, float]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.method}@{self.version}/{self.params_key}"

    def payload(self) -> dict[str, Any]:
        """The JSON the store keeps: everything, provenance inside, so a result read back
        alone still says how it was made."""
        return {
            "method": self.method,
            "version": self.version,
            "params": self.params,
            "params_key": self.params_key,
            "per_token": self.per_token,
            "headline": {k: json_number(v) for k, v in self.headline.items()},
            "provenance": self.provenance,
        }


class Method(ABC):
    """A named, versioned analysis. Subclasses set the class attributes and ``run``.

    ``version`` is bumped whenever the numbers a method produces would change for the same
    trace and parameters (a fixed bug, a new convention): results of both versions are kept.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    kind: ClassVar[str] = "faithfulness"
    # When a method runs among others on one trace: 0 makes maps other methods score
    # (occlusion, CLEANN), 1 scores maps, 2 combines scores (evidence).
    stage: ClassVar[int] = 1
    needs: ClassVar[frozenset[Needs]] = frozenset()
    Params: ClassVar[type]  # a frozen dataclass with defaults for every field

    def result(
        self,
        params: Any,
        per_token: dict[str, Any],
        headline: dict[str, float],
        provenance: dict[str, Any] | None = None,
    ) -> MethodResult:
        """The record of one run, keyed by this method's name, version and ``params``."""
        return MethodResult(
            self.name,
            self.version,
            self.kind,
            asdict(params),
            params_key(params),
            per_token,
            headline,
            provenance or {},
        )

    def skip_reason(self, trace: StoredTrace) -> str | None:
        """Why this method cannot run on ``trace`` (None: it can); checked for every trace
        before any model loads. A trace without what the method reads (a counting question
        has no object box) is skipped, not an error: datasets mix such traces."""
        return None

    @abstractmethod
    def run(self, trace: StoredTrace, params: Any, **resources: Any) -> MethodResult:
        """Analyse one stored trace. ``resources`` carries what ``needs`` names beyond the
        trace: ``model=`` a loaded model for :attr:`Needs.MODEL`; ``store=`` the open store,
        for methods that read other methods' results (:func:`methods.maps.stored_maps`)."""


def model_mismatch(info: Any, model_id: str, revision: str | None) -> str | None:
    """Why a model is not the one that recorded the trace (None: it is). A method that
    re-runs the model explains the recorded answer only with the same weights; the revision
    (hub commit or weights hash) decides, the id too where no revision is known."""
    if revision is not None and info.model_revision:
        if revision != info.model_revision:
            return (
                f"trace {info.trace_id} was recorded by {info.model_id} {info.model_revision}, "
                f"not by the given model ({model_id} {revision})"
            )
        return None
    if model_id != info.model_id:
        return f"trace {info.trace_id} was recorded by {info.model_id}, not by {model_id}"
    return None


def recording_model(trace: StoredTrace, resources: dict[str, Any]) -> Any:
    """The loaded model in ``resources`` (``model=``), checked to be the one that recorded
    ``trace``: what every method that re-runs the model starts with. ``ValueError`` (one
    line, from :func:`model_mismatch`) otherwise."""
    loaded = resources["model"]
    wrong = model_mismatch(trace.info, loaded.model_id, loaded.revision)
    if wrong:
        raise ValueError(wrong)
    return loaded


def save_result(store: TraceStore, trace_id: str, result: MethodResult) -> str:
    """Store ``result`` under its key (replacing an earlier run with the same key) and its
    finite headline numbers as metrics; returns the key. The one results channel."""
    store.put_result(trace_id, result.kind, result.key, result.payload())
    finite = {k: v for k, v in result.headline.items() if json_number(v) is not None}
    store.set_metrics(trace_id, finite)
    return result.key
