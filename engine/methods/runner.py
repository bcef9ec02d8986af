"""Run chosen methods on stored traces: the one loop behind ``analyse`` and ``record --metrics``.

Why one loop: the order matters (a trace's maps, stage 0, are stored before the methods that
score them, stage 1, read them back; combinations, stage 2, come last), the skip rule and the
parameter overrides must be the same wherever methods run, and each result is stored as soon
as it ends, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from methods import get, save_result
from methods.base import Method, MethodResult

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from store import TraceStore
    from store._stored import StoredTrace

Progress = Callable[[str, int, int], None]  # (stage, done, total), as the recorder reports


def chosen_methods(metrics: str) -> dict[str, type[Method]]:
    """``"a,b,..."`` -> the registered classes (importing this module registered the ones
    that re-run the model), in the given order, duplicates dropped. ``KeyError`` names an
    unknown method and the known ones; ``ValueError``: none named."""
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise ValueError("--metrics is empty: name at least one method")
    return {name: get(name) for name in dict.fromkeys(names)}


@dataclass(frozen=True)
class Job:
    """One method on one trace."""

    trace: StoredTrace
    method: Method


def plan(
    opened: TraceStore, trace_ids: list[str], classes: Mapping[str, type[Method]]
) -> tuple[list[Job], list[str]]:
    """The applicable jobs, per trace in stage order (maps before scores before
    combinations), and one note per (trace, method) skipped with its reason."""
    ordered = sorted(classes.values(), key=lambda cls: cls.stage)
    jobs, skipped = [], []
    for trace_id in trace_ids:
        trace = opened.open(trace_id)
        for cls in ordered:
            method = cls()
            reason = method.skip_reason(trace)
            if reason:
                skipped.append(f"skipped {cls.name} on {trace_id}: {reason}")
            else:
                jobs.append(Job(trace, method))
    return jobs, skipped


def method_params(method: Method, overrides: Mapping[str, Any]) -> Any:
    """The method's default parameters with the overrides it has a field for (``steps`` and
    ``batch`` reach deletion, insertion and occlusion; localisation has neither)."""
    params = method.Params()
    names = {f.name for f in fields(params)}
    return replace(params, **{k: v for k, v in overrides.items() if k in names})


def run_jobs(
    opened: TraceStore,
    jobs: list[Job],
    loaded: LoadedModel | None,
    overrides: Mapping[str, Any],
    progress: Progress,
) -> Iterator[tuple[str, MethodResult, str]]:
    """Run and store every job in order, yielding (trace id, result, stored key) as each
    ends. A method's ``ValueError`` (the model is not the trace's, say) propagates."""
    for done, job in enumerate(jobs):
        progress("methods", done, len(jobs))
        params = method_params(job.method, overrides)
        result = job.method.run(job.trace, params, model=loaded, store=opened)
        yield job.trace.trace_id, result, save_result(opened, job.trace.trace_id, result)
    progress("methods", len(jobs), len(jobs))
