"""The live-mode worker: answers the questions the dashboard queues (store/jobs.py).

One process holds one loaded model and takes jobs from the store's queue one at a time,
recording each through the same :func:`~engine.recording.record_into_store` as ``record``,
so a live trace is an ordinary trace (tagged ``live``; ``extra`` links it to the trace it
follows up or whose image was edited). A job that cannot be recorded — an unreadable
upload, a conversation longer than the model's context, out of memory, any exception —
fails alone with one line in ``jobs.error``, and the worker takes the next.

A thread beats every :data:`HEARTBEAT_S` while the worker lives, so the queue can tell a
dead worker from a slow one; on start, and every :data:`RECOVER_S` while idle, the worker
puts back the jobs of workers that died (:meth:`~store.jobs.JobQueue.recover`). The first
SIGTERM / Ctrl-C lets the job in flight finish, then the worker stops; a second abandons it
(still "running": the next worker's recover puts it back in the queue).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.demo import world
from engine.errors import EngineError
from engine.inputs import ImageInput, load_image
from engine.loading import LoadedModel
from engine.recorder import RecordOptions
from engine.recording import RecordRequest, record_into_store
from store import TraceStore
from store.errors import StoreError, TraceNotFound
from store.jobs import Job, JobError, JobQueue, LiveRequest
from store.schema import GenerationSettings

HEARTBEAT_S = 5.0
RECOVER_S = 15.0
PROGRESS_EVERY_S = 0.25  # progress rows written at most this often (relevancy is per token)
LIVE_TAG = "live"
# Where each recording stage sits on the job's 0..1 progress bar.
STAGES = {
    "generate": (0.0, 0.35, "generating"),
    "forward": (0.35, 0.45, "attention pass"),
    "relevancy": (0.45, 0.9, "relevancy"),
    "causal": (0.9, 1.0, "causal"),
}


class JobFailed(Exception):
    """A job that cannot be recorded as asked; the message is the user's one line."""


def one_line(error: BaseException) -> str:
    """An exception as one line: our own errors by their message (written for the user),
    anything else with its type in front (``OutOfMemoryError: CUDA out of memory ...``)."""
    text = " ".join(str(error).split())
    if isinstance(error, (EngineError, StoreError, JobError, JobFailed)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def conversation(store: TraceStore, parent_id: str) -> tuple[tuple[str, str], ...]:
    """The (question, answer) turns before a follow-up of ``parent_id``: the parent's own
    history (kept in its ``extra``) and the parent's question and answer."""
    try:
        parent = store.get(parent_id)
    except TraceNotFound:
        raise JobFailed(
            f"the trace {parent_id} this question follows up is no longer in the store"
        ) from None
    earlier = parent.extra.get("history") or []
    turns = [
        (str(turn[0]), str(turn[1]))
        for turn in earlier
        if isinstance(turn, (list, tuple)) and len(turn) == 2
    ]
    return (*turns, (parent.prompt, parent.answer))


def ground_truth(store: TraceStore, asked: LiveRequest, image: ImageInput) -> dict | None:
    """The objects in the image, when they are known: a shapes-world scene named by the
    request (only if the upload is that scene's exact pixels: the name alone proves
    nothing), or the parent's ground truth for a follow-up about the same upload. Lets
    ``analyse --metrics localisation`` score live traces like recorded demo ones."""
    if asked.scene is not None:
        scene = world.make_scene(*asked.scene)
        if not np.array_equal(np.asarray(scene.image.convert("RGB")), np.asarray(image.image)):
            raise JobFailed(f"the image is not the shapes-world scene {asked.scene} it names")
        return scene.ground_truth()
    if asked.parent_trace_id:
        parent = store.get(asked.parent_trace_id).extra
        if parent.get("upload") == asked.image and isinstance(parent.get("ground_truth"), dict):
            return parent["ground_truth"]
    return None


def live_request(queue: JobQueue, store: TraceStore, job: Job) -> RecordRequest:
    """What to record for ``job``: its upload, prompt, settings, methods and links."""
    asked: LiveRequest = job.request
    asked.check()
    image = load_image(queue.upload_path(asked.image), name=f"{asked.image[:16]}.png")
    history = conversation(store, asked.parent_trace_id) if asked.parent_trace_id else ()
    settings = GenerationSettings(
        max_new_tokens=asked.max_new_tokens,
        do_sample=asked.do_sample,
        temperature=asked.temperature,
        top_p=asked.top_p,
        seed=asked.seed,
    )
    extra: dict[str, Any] = {"live": {"job_id": job.job_id}, "upload": asked.image}
    if history:
        extra |= {"parent_trace_id": asked.parent_trace_id, "history": [list(t) for t in history]}
    if asked.edited_from:
        extra["edited_from"] = asked.edited_from
    if asked.edit:
        extra["edit"] = asked.edit
    truth = ground_truth(store, asked, image)
    if truth is not None:
        extra["ground_truth"] = truth
    return RecordRequest(
        images=(image,),
        prompt=asked.prompt,
        options=RecordOptions(settings, relevancy="relevancy" in asked.methods),
        tags=(LIVE_TAG,),
        extra=extra,
        causal=() if "causal" in asked.methods else None,
        history=history,
    )


def check_context(loaded: LoadedModel, request: RecordRequest) -> None:
    """Fail a question whose prompt (with the conversation so far) plus its answer would not
    fit the model's context, before generating (the model would fail with an index error)."""
    config = loaded.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    if not limit:
        return
    inputs = loaded.adapter.build_inputs(list(request.images), request.prompt, request.history)
    length = int(inputs["input_ids"].shape[-1])
    wanted = request.options.generation.max_new_tokens
    if length + wanted > limit:
        raise JobFailed(
            f"the prompt is {length} tokens (image and conversation so far included) and the "
            f"answer may take {wanted} more: over this model's context of {limit}. Ask a "
            "shorter question, allow fewer new tokens or start a new conversation"
        )


class Progress:
    """Turns the recorder's (stage, done, total) calls into throttled progress rows."""

    def __init__(self, queue: JobQueue, job_id: str) -> None:
        self.queue, self.job_id = queue, job_id
        self.last_stage: str | None = None
        self.last_write = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        lo, hi, label = STAGES.get(stage, (0.0, 1.0, stage))
        now = time.monotonic()
        if stage == self.last_stage and now - self.last_write < PROGRESS_EVERY_S:
            return
        self.last_stage, self.last_write = stage, now
        share = done / total if total else 0.0
        text = f"{label} {done}/{total}" if stage in ("relevancy", "causal") else label
        self.queue.report_progress(self.job_id, lo + (hi - lo) * share, text)


@dataclass
class Worker:
    """One model answering one store's queue; :meth:`run` until stopped."""

    queue: JobQueue
    store: TraceStore
    loaded: LoadedModel
    poll_interval: float = 1.0
    once: bool = False  # stop when the queue is empty instead of waiting for more
    on_event: Callable[[str], None] = lambda line: None

    def __post_init__(self) -> None:
        self.stopping = threading.Event()  # finish the job in flight, then stop
        self._ended = threading.Event()  # the heartbeat stops only when the worker has
        self.worker_id = ""
        self.answered = 0
        self.failed = 0

    def run(self) -> int:
        """Serve jobs; returns how many were taken. Registers, recovers, beats, claims."""
        self.worker_id = self.queue.register_worker(self.loaded.model_id, self.loaded.revision)
        beating = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        beating.start()
        try:
            for job_id in self.queue.recover():
                self.on_event(f"put back job {job_id} of a worker that stopped")
            last_recover = time.monotonic()
            while not self.stopping.is_set():
                job = self.queue.claim(self.worker_id)
                if job is None:
                    if self.once:
                        break
                    if time.monotonic() - last_recover > RECOVER_S:
                        self.queue.recover()
                        last_recover = time.monotonic()
                    self.stopping.wait(self.poll_interval)
                    continue
                self.answer(job)
        finally:
            self._ended.set()
            beating.join(timeout=HEARTBEAT_S)
            self.queue.unregister_worker(self.worker_id)
        return self.answered + self.failed

    def _beat(self) -> None:
        while not self._ended.wait(HEARTBEAT_S):
            try:
                self.queue.heartbeat(self.worker_id)
            except Exception as error:  # a busy database this time: beat again later
                self.on_event(f"heartbeat failed: {one_line(error)}")

    def answer(self, job: Job) -> None:
        """Record ``job`` and mark it done, or failed with one line; never raises (except
        KeyboardInterrupt: the job is abandoned, still running, for recover)."""
        self.on_event(f"job {job.job_id}: {job.request.prompt[:60]!r}")
        try:
            request = live_request(self.queue, self.store, job)
            check_context(self.loaded, request)
            recorded = record_into_store(
                self.store, self.loaded, request, Progress(self.queue, job.job_id)
            )
        except Exception as error:
            self.failed += 1
            _free_memory()
            self.queue.fail(job.job_id, one_line(error))
            self.on_event(f"job {job.job_id} failed: {one_line(error)}")
            return
        self.answered += 1
        self.queue.finish(job.job_id, recorded.trace_id)
        self.on_event(f"job {job.job_id} done: trace {recorded.trace_id}")


def _free_memory() -> None:
    """After a failure (out of memory, say), hand cached GPU memory back for the next job."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def stop_on_signals(worker: Worker) -> Iterator[None]:
    """SIGTERM / SIGINT: the first lets the job in flight finish, the second abandons it."""

    def handle(signum: int, _frame: object) -> None:
        if worker.stopping.is_set():
            raise KeyboardInterrupt
        worker.stopping.set()
        worker.on_event("stopping after the job in flight (again to abandon it)")

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
