"""``lvlm-interpret record-dataset MANIFEST``: many traces, one model load, resumable.

Every row is checked before the model loads (engine/dataset.py); bad rows are reported with
their line and left out. Each trace's id is derived from what it records
(engine/recording.py), so a re-run or a retried shard skips what the store holds, and an
interruption loses at most the trace in flight (the store's add is atomic).
With ``--ray ADDRESS`` the rows are recorded on a Ray cluster (engine/distributed.py) by
the same per-row code, and summed up the same way.
Exit code: 0 when every row was recorded or already stored, 1 when some row was bad or
failed, 2 when the manifest is unusable (or another usage error), 130 on Ctrl-C.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from engine.cli.messages import fail, note, one_line
from engine.cli.options import (
    AllowPickle,
    DbUrl,
    Device,
    Dtype,
    LossyStorage,
    MaxNewTokens,
    Revision,
    RowPolicy,
    Sample,
    Seed,
    StoreDir,
    Temperature,
    TopP,
    TrustRemoteCode,
    WeightsDtype,
    WithRelevancy,
    WithVisionAttention,
)
from engine.cli.record import checked_source
from engine.inputs import MAX_NEW_TOKENS

if TYPE_CHECKING:
    from engine.dataset import ManifestRow, RowOutcome
    from engine.distributed import RaySettings, RecordJob
    from engine.loading import LoadedModel
    from engine.recorder import RecordOptions
    from store import TraceStore

INTERRUPTED = 130


@dataclass
class Summary:
    """What a run did: failures keep their line and reason (invalid rows were reported with
    theirs before the model loaded, and are counted here)."""

    recorded: int = 0
    skipped: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)

    def add(self, outcome: RowOutcome) -> None:
        if outcome.status == "failed":
            self.failed.append((outcome.line, outcome.reason))
        elif outcome.status == "skipped":
            self.skipped += 1
        else:
            self.recorded += 1

    def lines(self) -> list[str]:
        head = (
            f"recorded {self.recorded}, already stored {self.skipped}, "
            f"failed {len(self.failed)}, invalid rows {len(self.invalid)}"
        )
        return [head, *(f"line {n}: failed: {one_line(r)}" for n, r in self.failed)]


def record_dataset(
    manifest: Annotated[
        Path,
        typer.Argument(help="JSONL or CSV manifest, or a folder of images (with --prompt)."),
    ],
    model: Annotated[str, typer.Option(help="Hub id or local checkpoint folder.")],
    prompt: Annotated[
        str | None, typer.Option(help="The prompt for every image of a folder.")
    ] = None,
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tag every trace (repeatable).")] = None,
    allow_outside: Annotated[
        bool,
        typer.Option(help="Accept absolute image paths and paths leading out of its folder."),
    ] = False,
    max_new_tokens: MaxNewTokens = 32,
    sample: Sample = False,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    seed: Seed = 0,
    relevancy: WithRelevancy = True,
    vision_attention: WithVisionAttention = True,
    lossy: LossyStorage = None,
    policy: RowPolicy = None,
    revision: Revision = None,
    dtype: WeightsDtype = Dtype.float32,
    device: Device = "cpu",
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Record on a Ray cluster: local (start one here), auto (the one running "
            "here), HOST:PORT or ray://HOST:PORT. Needs pip install 'lvlm-interpret[ray]'.",
        ),
    ] = None,
    ray_workers: Annotated[
        int | None,
        typer.Option(
            help="Recording actors on Ray, each loading the model once (default: one per GPU "
            "with --device cuda, else as many as the cluster's CPUs allow)."
        ),
    ] = None,
    ray_cpus: Annotated[float, typer.Option(help="CPUs per recording actor on Ray.")] = 1.0,
) -> None:
    """Record a trace for every row of a manifest, skipping those already stored."""
    from engine.dataset import read_manifest
    from engine.distributed import RaySettings, check_ray, connected
    from engine.errors import EngineError
    from engine.inputs import check_generation, check_tags, check_text
    from store import StoreError, open_store
    from store.schema import GenerationSettings, RecordingPolicy

    if max_new_tokens > MAX_NEW_TOKENS:
        note(f"note: --max-new-tokens {max_new_tokens} capped at {MAX_NEW_TOKENS}")
        max_new_tokens = MAX_NEW_TOKENS
    try:
        settings = check_generation(
            GenerationSettings(
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )
        )
        extra_tags = tuple(check_tags(tag or ()))
        check_text(str(store), "The --store path")
        if db is not None:
            check_text(db, "The --db URL")
        cluster = None if ray is None else RaySettings(ray, ray_workers, ray_cpus)
        if cluster is not None:
            check_text(cluster.address, "The --ray address")
            check_ray(cluster, device)
        rows = read_manifest(manifest, prompt, allow_outside=allow_outside)
        summary = Summary(invalid=[(p.line, p.reason) for p in rows.problems])
        for problem in rows.problems:
            note(f"line {problem.line}: skipped: {problem.reason}")
        source, family = checked_source(
            model,
            revision=revision,
            allow_pickle=allow_pickle,
            device=device if cluster is None else "cpu",  # Ray: the workers' GPUs, checked there
            device_map=None,
            quantize=None,
        )
        if not family.multi_image:
            for row in [r for r in rows.rows if len(r.images) > 1]:
                reason = f"{family.name} models take one image per prompt"
                note(f"line {row.line}: skipped: {reason}")
                summary.invalid.append((row.line, reason))
                rows.rows.remove(row)
        # connected first: a cluster that cannot be reached leaves no store behind
        with (
            nullcontext() if cluster is None else connected(cluster),
            open_store(store, db_url=db, writable=True) as opened,
        ):
            from engine.recorder import RecordOptions

            options = RecordOptions(
                settings,
                relevancy=relevancy,
                vision_attention=vision_attention,
                policy=RecordingPolicy(policy.value) if policy else None,
            )
            load = {
                "revision": revision,
                "dtype": dtype.value,
                "trust_remote_code": trust_remote_code,
                "allow_pickle": allow_pickle,
            }
            kept = rows.rows
            lossy_name = lossy.value if lossy else None
            if cluster is None:
                from engine.loading import load_model

                note(f"loading {model} ...")
                loaded = load_model(model, device=device, source=source, **load)
                outcomes = _record_rows(opened, loaded, kept, options, extra_tags, lossy_name)
                interrupted = _show(outcomes, len(kept), summary)
            else:
                from engine.distributed import RecordJob

                job = RecordJob(
                    model, source, store, db, options, extra_tags, lossy_name, device=device, **load
                )
                interrupted = _record_on_ray(job, kept, cluster, summary)
    except (EngineError, StoreError) as error:
        fail(error)
    for line in summary.lines():
        note(line)
    if interrupted:
        note("interrupted: re-run the same command to record the rest")
        raise typer.Exit(INTERRUPTED)
    if summary.failed or summary.invalid:
        raise typer.Exit(1)


class _Interrupts:
    """Ctrl-C stops the run after the trace in flight is stored, not inside it: an interrupt
    raised while the store writes a trace file is swallowed by HDF5's callbacks (the run went
    on and later crashed). A second Ctrl-C stops at once, dropping the trace in flight."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        self._previous = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _on_interrupt(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        note("stopping after the trace in flight (Ctrl-C again: stop now, losing it)")


def _record_rows(
    opened: TraceStore,
    loaded: LoadedModel,
    rows: list[ManifestRow],
    options: RecordOptions,
    extra_tags: tuple[str, ...],
    lossy: str | None,
) -> Iterator[RowOutcome]:
    """Each row's outcome, recorded in this process, one row after the other."""
    from engine.dataset import record_row

    for row in rows:
        yield record_row(opened, loaded, row, options, extra_tags, lossy)


def _record_on_ray(
    job: RecordJob, rows: list[ManifestRow], cluster: RaySettings, summary: Summary
) -> bool:
    """Record ``rows`` on the connected Ray cluster; True when Ctrl-C stopped the run."""
    from engine.distributed import pool_size, record_rows

    workers, waiting = pool_size(cluster, job.device)
    note(f"recording on Ray: {workers} workers loading {job.model} ...")
    if waiting:
        note(waiting)
    return _show(record_rows(rows, job, workers, cluster.cpus), len(rows), summary)


def _show(outcomes: Iterable[RowOutcome], total: int, summary: Summary) -> bool:
    """Count every outcome into ``summary`` with progress, rate and ETA; True when Ctrl-C
    stopped the run (see :class:`_Interrupts`; the store never holds half a trace)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar, _Interrupts() as interrupts:
        task = bar.add_task("recording", total=total, rate="")
        try:
            for outcome in outcomes:
                summary.add(outcome)
                if outcome.status == "failed":
                    line = f"line {outcome.line}: failed: {one_line(outcome.reason)}"
                    bar.console.print(line, markup=False)
                bar.advance(task)
                speed = bar.tasks[0].speed
                bar.update(task, rate=f"{speed * 60:.1f}/min" if speed else "")
                if interrupts.requested:
                    return True
        except KeyboardInterrupt:
            return True
    return interrupts.requested
