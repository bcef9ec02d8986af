"""Record a manifest's rows on a Ray cluster (``record-dataset --ray``), through Ray Data.

Ray Data schedules, streams and retries; this module only says what each stage runs:

1. **prepare** (Ray tasks, a quarter of a CPU each): a row's images read in full and hashed
   (:func:`engine.dataset.row_images`), so the GPU actors never wait on files; these
   processes, like the writers', never import torch;
2. **record** (a fixed pool of actors, ``ActorPoolStrategy``): each actor loads the model once
   and holds one GPU (``num_gpus=1``) with ``--device cuda``, or ``--ray-cpus`` CPUs; it
   derives the trace's id from its identity, skips an id the store holds, and records the
   rest (:func:`engine.recording.record_trace`), the same steps as the one-process run;
3. **store** (a smaller pool of writer actors): ``TraceStore.add_new`` with a local
   ``staging_dir``, so HDF5 writes on the worker's own disk and the (possibly network) store
   only receives a finished file's bytes, placed by a link that never replaces a file.

**Exactly once.** Rows travel one per block, so a task is one row. Ray Data restarts a killed
actor (``max_restarts=-1``) and retries its tasks (``max_task_retries=-1``); a retried row has
the identity-derived id it had, so the recorder finds it stored, or the writer's ``add_new``
refuses the second copy: a retry is a no-op, never a duplicate. A writer retried after it
stored a row recognises its own trace (same ``created_at``) and still counts it as recorded.

**Where things run.** The manifest is read and every row checked on the driver, before any
model loads; images, the model folder and the store are then read and written at the same
paths on every node (a shared file system). Across several nodes give the index as a
PostgreSQL URL (``--db postgresql+psycopg://...``): SQLite's locks are not reliable over a
network file system.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.dataset import ROW_ERRORS, ManifestRow, RowOutcome, row_images, row_request
from engine.errors import EngineError, InputError

if TYPE_CHECKING:
    from engine.checkpoint import ModelSource
    from engine.inputs import ImageInput
    from engine.recorder import RecordOptions
    from store.schema import Trace

RAY_MISSING = "--ray needs Ray, which is not installed here: pip install 'lvlm-interpret[ray]'"
CLIENT_MISSING = "a ray:// address needs Ray Client, not installed here: pip install 'ray[client]'"
PREPARE_CPUS = 0.25  # reading and hashing a row's images
WRITER_CPUS = 0.5  # HDF5 compression and the copy into the store
CONNECT_TIMEOUT_S = 5.0  # a probe of host:port; Ray itself retries a dead address for minutes
_ADDRESS = re.compile(r"(?:ray://)?(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})")


@dataclass(frozen=True)
class RaySettings:
    """Which cluster, and how many recording actors with how many CPUs each.

    ``address``: ``local`` starts a cluster on this machine (as ``ray.init()``), ``auto``
    joins the one running here, ``host:port`` or ``ray://host:port`` a remote one.
    ``workers``: recording actors (None: one per GPU with CUDA, else the CPUs the cluster
    has left after preparing and writing, divided by ``cpus``).
    """

    address: str = "local"
    workers: int | None = None
    cpus: float = 1.0


@dataclass(frozen=True)
class RecordJob:
    """Everything a worker needs to load the model and record and store a row: sent to each
    actor once (small: paths and settings, never weights)."""

    model: str
    source: ModelSource
    store: Path
    db: str | None
    options: RecordOptions
    extra_tags: tuple[str, ...] = ()
    lossy: str | None = None
    revision: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    threads: int = 1  # torch intra-op threads per recording actor


@dataclass
class _Work:
    """One row on its way through the stages; ``outcome`` set once its fate is known."""

    row: ManifestRow
    images: tuple[ImageInput, ...] = ()
    trace: Trace | None = None
    outcome: RowOutcome | None = None


def check_ray(settings: RaySettings, device: str) -> None:
    """Everything about ``--ray`` that can be checked before loading or connecting: Ray
    installed, the address well formed and answering, the worker settings, the device."""
    if _missing("ray") or _missing("ray.data"):
        raise InputError(RAY_MISSING)
    if settings.workers is not None and settings.workers < 1:
        raise InputError(f"--ray-workers must be at least 1, not {settings.workers}")
    if not (math.isfinite(settings.cpus) and settings.cpus > 0):
        raise InputError(f"--ray-cpus must be a positive number, not {settings.cpus}")
    if device not in ("cpu", "cuda"):
        raise InputError(
            f"--device {device} with --ray: use cpu, or cuda (Ray gives each worker its GPU)"
        )
    address = settings.address
    if address in ("local", "auto"):
        return
    match = _ADDRESS.fullmatch(address)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise InputError(
            f"--ray {address!r} is not a Ray address: local, auto, HOST:PORT or ray://HOST:PORT"
        )
    host = match["host"].strip("[]")
    try:
        socket.create_connection((host, int(match["port"])), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise InputError(f"cannot reach a Ray cluster at {address}: {_reason(error)}") from None
    if address.startswith("ray://") and _missing("grpc"):
        raise InputError(CLIENT_MISSING)


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package missing, or blocked in sys.modules
        return True


def _reason(error: OSError) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    return error.strerror or str(error)


@contextmanager
def connected(settings: RaySettings) -> Iterator[None]:
    """Connected to the cluster ``settings`` names for the duration; a cluster this call
    started (``local``) is shut down after, with every process it ran. A process connected
    already (a notebook, a test) records on that cluster and stays connected."""
    import ray

    if ray.is_initialized():
        yield
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if settings.address == "local":
            workers = settings.workers
            cpus = None if workers is None else _pool_cpus(workers, settings.cpus)
            ray.init(address="local", num_cpus=cpus, **quiet)
        else:
            quiet.pop("include_dashboard")  # only for a cluster this process starts
            ray.init(address=settings.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise InputError(f"cannot connect to Ray at {settings.address}: {_first(error)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _pool_cpus(workers: int, cpus: float) -> float:
    """CPUs that keep every stage running at once: the recorders, the writers and two
    preparing tasks (fewer and the recorders would hold every CPU while the rows wait)."""
    return workers * cpus + writer_count(workers) * WRITER_CPUS + 2 * PREPARE_CPUS


def writer_count(workers: int) -> int:
    """One writer per two recorders: storing a trace takes a fraction of recording it."""
    return max(1, workers // 2)


def pool_size(settings: RaySettings, device: str) -> tuple[int, str | None]:
    """Recording actors to start on the connected cluster, and a note when the cluster lacks
    what they ask for (an autoscaling cluster adds nodes; a fixed one waits)."""
    import ray

    have = ray.cluster_resources()
    gpus, cpus = int(have.get("GPU", 0)), float(have.get("CPU", 0))
    if settings.workers is not None:
        workers = settings.workers
    elif device == "cuda":
        workers = max(1, gpus)
    else:
        spare = cpus - WRITER_CPUS - 2 * PREPARE_CPUS
        workers = max(1, int(spare // settings.cpus))
    need_gpus = workers if device == "cuda" else 0
    need_cpus = _pool_cpus(workers, settings.cpus)
    if gpus < need_gpus or cpus < need_cpus:
        return workers, (
            f"note: the Ray cluster has {cpus:g} CPUs and {gpus} GPUs; {workers} recording "
            f"workers need {need_cpus:g} CPUs and {need_gpus} GPUs: waiting for them"
        )
    return workers, None


def record_rows(
    rows: list[ManifestRow], job: RecordJob, workers: int, cpus: float = 1.0
) -> Iterator[RowOutcome]:
    """Each row's outcome as it is stored, in completion order, over ``workers`` recording
    actors on the connected cluster. Closing the iterator early stops the pipeline; traces
    stored by then stay stored (a re-run skips them)."""
    import ray
    import ray.data
    import ray.exceptions

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller shows rows done, rate and ETA
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    gpu = job.device == "cuda"
    items = [{"row": row} for row in rows]
    dataset = (
        ray.data.from_items(items, override_num_blocks=len(items))  # one row per task
        .map(_prepare, num_cpus=PREPARE_CPUS)
        .map(
            _Recorder,
            fn_constructor_kwargs={"job": replace(job, threads=max(1, int(cpus)))},
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus,
            num_gpus=1 if gpu else 0,
        )
        .map(
            _Writer,
            fn_constructor_kwargs={"store": job.store, "db": job.db, "lossy": job.lossy},
            compute=ray.data.ActorPoolStrategy(size=writer_count(workers)),
            num_cpus=WRITER_CPUS,
        )
    )
    try:
        for item in dataset.iter_rows():
            yield item["outcome"]
    except ray.exceptions.RayError as error:
        raise EngineError(f"the Ray pipeline stopped: {_first(error)}") from None


def _first(error: BaseException) -> str:
    """The innermost cause's message, first line: Ray wraps a worker's error in several
    layers of its own, each with a traceback."""
    while error.__cause__ is not None:
        error = error.__cause__
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _prepare(item: dict[str, Any]) -> dict[str, Any]:
    row: ManifestRow = item["row"]
    try:
        return {"work": _Work(row, images=row_images(row))}
    except ROW_ERRORS as error:
        return {"work": _Work(row, outcome=RowOutcome(row.line, "failed", reason=str(error)))}


class _Recorder:
    """A recording actor: loads the model once, then records the rows it is given."""

    def __init__(self, job: RecordJob) -> None:
        import torch

        from engine.loading import load_model
        from store import open_store

        torch.set_num_threads(job.threads)
        self.job = job
        self.loaded = load_model(
            job.model,
            revision=job.revision,
            dtype=job.dtype,
            device=job.device,
            trust_remote_code=job.trust_remote_code,
            allow_pickle=job.allow_pickle,
            source=job.source,
        )
        self.store = open_store(job.store, db_url=job.db)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from engine.recording import identity_trace_id, record_trace, trace_identity

        work: _Work = item["work"]
        if work.outcome is not None:
            return item
        job, line = self.job, work.row.line
        try:
            request = row_request(work.row, job.options, job.extra_tags, job.lossy, work.images)
            trace_id = identity_trace_id(trace_identity(self.loaded, request))
            if trace_id in self.store:
                work.outcome = RowOutcome(line, "skipped", trace_id)
            else:
                work.trace = record_trace(self.loaded, request, trace_id)
        except ROW_ERRORS as error:
            work.outcome = RowOutcome(line, "failed", reason=str(error))
        work.images = ()  # in the trace now: not shipped twice
        return {"work": work}


class _Writer:
    """A store-writing actor: stages each trace's HDF5 file on its node's own disk."""

    def __init__(self, store: Path, db: str | None, lossy: str | None) -> None:
        from store import open_store

        self.lossy = lossy or False
        self.store = open_store(store, db_url=db, writable=True)
        # removed when Ray Data ends the actor; a killed actor's stays in the temp folder
        self._staging = tempfile.TemporaryDirectory(prefix="lvlm-interpret-staging-")
        self.staging = Path(self._staging.name)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        work: _Work = item["work"]
        if work.outcome is not None:
            return {"outcome": work.outcome}
        trace = work.trace
        assert trace is not None  # the recorder set a trace or an outcome
        trace_id = trace.info.trace_id
        try:
            added = self.store.add_new(trace, lossy=self.lossy, staging_dir=self.staging)
            mine = added or _same_time(self.store.get(trace_id).created_at, trace.info.created_at)
        except ROW_ERRORS as error:
            return {"outcome": RowOutcome(work.row.line, "failed", trace_id, str(error))}
        return {"outcome": RowOutcome(work.row.line, "recorded" if mine else "skipped", trace_id)}


def _same_time(stored: str, recorded: str) -> bool:
    """Whether the stored trace is this very recording (a retried write of it), not one an
    earlier run stored: the index keeps ``created_at`` normalised, so compare instants."""
    return datetime.fromisoformat(stored) == datetime.fromisoformat(recorded)
