"""``lvlm-interpret worker``: load a model once and answer the dashboard's live questions.

Everything is checked before the model loads (poll interval, text of --store and --db, the
model folder and device, then the store and its index opened for writing): a mistake is one
line and exit code 2, not a model load followed by a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.messages import fail, note
from engine.cli.options import (
    AllowPickle,
    DbUrl,
    Device,
    Dtype,
    Revision,
    StoreDir,
    TrustRemoteCode,
    WeightsDtype,
)

MIN_POLL_S = 0.01
MAX_POLL_S = 3600.0


def worker(
    model: Annotated[str, typer.Option(help="Hub id or local checkpoint folder.")],
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    device: Device = "cpu",
    dtype: WeightsDtype = Dtype.float32,
    revision: Revision = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between looks at an empty queue (0.01-3600).")
    ] = 1.0,
    once: Annotated[
        bool, typer.Option(help="Answer the questions queued now, then exit (no waiting).")
    ] = False,
) -> None:
    """Answer live questions from the dashboard's queue with one loaded model."""
    from engine.cli.record import checked_source
    from engine.errors import EngineError
    from engine.inputs import check_text
    from store import StoreError

    if not (math.isfinite(poll_interval) and MIN_POLL_S <= poll_interval <= MAX_POLL_S):
        fail(f"--poll-interval must be {MIN_POLL_S}-{MAX_POLL_S:.0f} seconds, not {poll_interval}.")
    try:
        check_text(str(store), "The --store path")
        if db is not None:
            check_text(db, "The --db URL")
        source, _family = checked_source(
            model,
            revision=revision,
            allow_pickle=allow_pickle,
            device=device,
            device_map=None,
            quantize=None,
        )
        from store.jobs import JobQueue

        queue = JobQueue(store, db)
    except (EngineError, StoreError) as error:
        fail(error)
    from engine.loading import load_model
    from engine.worker import Worker, stop_on_signals
    from store import open_store

    try:
        with queue, open_store(store, db, writable=True) as opened:
            note(f"loading {model} ...")
            loaded = load_model(
                model,
                revision=revision,
                dtype=dtype.value,
                device=device,
                trust_remote_code=trust_remote_code,
                allow_pickle=allow_pickle,
                source=source,
            )
            serving = Worker(queue, opened, loaded, poll_interval, once, on_event=note)
            note(f"worker ready: {loaded.model_id} @ {loaded.revision} on {opened.root}")
            with stop_on_signals(serving):
                serving.run()
    except (EngineError, StoreError) as error:
        fail(error)
    except KeyboardInterrupt:
        note("stopped; the job in flight was abandoned (the next worker retries it)")
        raise typer.Exit(130) from None
    note(f"worker stopped: {serving.answered} answered, {serving.failed} failed")
