"""Live mode's job queue: questions the dashboard asks, answered by worker processes.

The dashboard never loads a model. It stores the user's image under ``uploads/`` in the
store, puts a :class:`LiveRequest` into the ``jobs`` table of the store's own SQL index, and
polls it; a worker (``lvlm-interpret worker``, engine/worker.py) claims the job, records the
trace into the same store and marks the job done with the trace's id.

Why a table in the index and not a task queue such as huey (or Celery with a broker): the
dashboard and every worker already share exactly one database — the store's index, SQLite
beside the files or PostgreSQL for a team — so the queue needs nothing else to run, install
or secure; it works on PostgreSQL unchanged (many workers, many machines); and jobs are rows
anyone can read with SQL next to the traces they produced. A worker that dies is noticed by
its heartbeat and its job is retried once (:meth:`JobQueue.recover`).

Torch-free: the dashboard imports this module. Every statement uses bound parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import secrets
import socket
import stat
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from PIL import Image, UnidentifiedImageError

from ._index import jobs, workers
from ._paths import check_trace_id, fsync_dir, is_link
from ._store import TraceStore
from .errors import InvalidTraceId, StoreError
from .schema import utc_now

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_IMAGE_SIDE = 4096
MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS_LIMIT = 512
MAX_SEED = 2**63 - 1
MAX_SCENE_SEED = 10**9  # the Ask page's scene seed field
MAX_EDIT_CHARS = 500
METHODS = ("relevancy", "causal")
STATES = ("queued", "running", "done", "failed")
WORKER_TIMEOUT_S = 30.0  # a worker silent this long is presumed dead (it beats every few s)
MAX_ATTEMPTS = 2  # a job whose worker died is retried once, then failed
UPLOADS_DIR = "uploads"
IMAGE_PLACEHOLDER = "<image>"

_KEY = re.compile(r"[0-9a-f]{64}")
# what save_upload writes: the upload, or its temp file left by a killed process
_UPLOAD_NAME = re.compile(r"[0-9a-f]{64}\.png|\.[0-9a-f]{64}\.\d+\.[0-9a-f]{8}\.tmp")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and newline are text


class JobError(Exception):
    """Base of the queue's errors; the message is one line for the user."""


class InvalidRequest(JobError, ValueError):
    """A question that cannot be asked as given (empty prompt, bad setting, unknown image)."""


class InvalidUpload(InvalidRequest):
    """An uploaded file that is not an image this store takes."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _check_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{what} contains characters that are not UTF-8 text") from None
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise InvalidRequest(f"{what} is empty")
    if len(text) > limit:
        raise InvalidRequest(f"{what} has {len(text)} characters; the limit is {limit}")
    if _CONTROL.search(text):
        raise InvalidRequest(f"{what} contains control characters")
    return text


def _check_id(value: object, what: str) -> str:
    try:
        return check_trace_id(value)
    except InvalidTraceId:
        raise InvalidRequest(f"{what} {value!r} is not a trace id (32 hex digits)") from None


def _check_int(value: object, what: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(f"{what} must be a whole number from {lo} to {hi}, not {value!r}")


@dataclass(frozen=True)
class LiveRequest:
    """What the user asked; stored as JSON in ``jobs.request_json``."""

    image: str  # an upload key returned by JobQueue.save_upload (sha256 hex)
    prompt: str
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    methods: tuple[str, ...] = ("relevancy",)  # optional methods to record: relevancy, causal
    parent_trace_id: str | None = None  # a follow-up: continues that trace's conversation
    edited_from: str | None = None  # counterfactual: the trace whose image was edited
    edit: str | None = None  # what was done to the image, for display
    # (seed, shapes) of the shapes-world scene the image was drawn from: the worker checks
    # the pixels against a fresh drawing and stores the scene's ground truth with the trace
    scene: tuple[int, int] | None = None

    def check(self) -> None:
        """Raise :class:`InvalidRequest` (one line) on the first field that is not usable."""
        if not isinstance(self.image, str) or not _KEY.fullmatch(self.image):
            raise InvalidRequest(
                f"image {self.image!r} is not an upload key (64 hex digits from save_upload)"
            )
        prompt = _check_text(self.prompt, "The prompt", MAX_PROMPT_CHARS)
        if IMAGE_PLACEHOLDER in prompt:
            raise InvalidRequest(
                f"Remove {IMAGE_PLACEHOLDER!r} from the prompt: the chat template places the image"
            )
        _check_int(self.max_new_tokens, "max_new_tokens", 1, MAX_NEW_TOKENS_LIMIT)
        _check_int(self.seed, "seed", 0, MAX_SEED)
        if not isinstance(self.do_sample, bool):
            raise InvalidRequest(f"do_sample must be true or false, not {self.do_sample!r}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequest(f"{name} must be a number, not {value!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequest(
                f"temperature must be a finite number >= 0, not {self.temperature}"
            )
        if self.do_sample and not self.temperature:
            raise InvalidRequest("temperature must be above 0 when sampling")
        if not 0 <= self.top_p <= 1:  # also refuses nan
            raise InvalidRequest(f"top_p must be 0-1, not {self.top_p}")
        if not isinstance(self.methods, tuple) or any(m not in METHODS for m in self.methods):
            raise InvalidRequest(f"methods must be a tuple of {METHODS}, not {self.methods!r}")
        if len(set(self.methods)) != len(self.methods):
            raise InvalidRequest(f"methods {self.methods!r} names one method twice")
        if self.parent_trace_id is not None:
            _check_id(self.parent_trace_id, "parent_trace_id")
        if self.edited_from is not None:
            _check_id(self.edited_from, "edited_from")
        if self.parent_trace_id is not None and self.edited_from is not None:
            raise InvalidRequest(
                "a question either follows a trace up or asks about an edited image, not both"
            )
        if self.scene is not None:
            if not isinstance(self.scene, tuple) or len(self.scene) != 2:
                raise InvalidRequest(f"scene must be (seed, shapes), not {self.scene!r}")
            _check_int(self.scene[0], "the scene's seed", 0, MAX_SCENE_SEED)
            _check_int(self.scene[1], "the scene's shape count", 2, 4)
        if self.edit is not None:
            if self.edited_from is None:
                raise InvalidRequest("edit describes an edited image: give edited_from too")
            _check_text(self.edit, "The edit description", MAX_EDIT_CHARS)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> LiveRequest:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["methods"] = tuple(fields.get("methods", ()))
        if isinstance(fields.get("scene"), list):
            fields["scene"] = tuple(fields["scene"])
        return cls(**fields)


def _request_image(text: str) -> str:
    """The upload key a stored request asks about; an unreadable request stops a clean-up
    rather than letting it remove an upload a job may still need."""
    try:
        return str(json.loads(text)["image"])
    except (TypeError, ValueError, KeyError) as error:
        raise StoreError(
            "a queued or running job's request cannot be read; no upload was removed"
        ) from error


@dataclass(frozen=True)
class Job:
    job_id: str
    state: str  # queued, running, done, failed
    request: LiveRequest
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    progress: float | None  # 0..1 while running
    progress_text: str | None
    error: str | None  # one line when failed
    trace_id: str | None  # the recorded trace when done
    attempts: int  # how many times a worker started it
    worker_id: str | None


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    model_id: str
    model_revision: str | None
    host: str
    pid: int
    started_at: str
    heartbeat_at: str
    alive: bool  # heart-beat within WORKER_TIMEOUT_S and not stopped


def _job(row: sa.Row) -> Job:
    m = row._mapping
    return Job(
        job_id=m["job_id"],
        state=m["state"],
        request=LiveRequest.from_json(m["request_json"]),
        submitted_at=m["submitted_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        progress=m["progress"],
        progress_text=m["progress_text"],
        error=m["error"],
        trace_id=m["trace_id"],
        attempts=int(m["attempts"]),
        worker_id=m["worker_id"],
    )


def _ago(seconds: float) -> str:
    then = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    return then.isoformat(timespec="microseconds")


def _pid_gone(pid: int) -> bool:
    """Whether no process has this id on this machine (a worker here that was killed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as RGB PNG bytes without metadata: the same pixels give the same bytes, so
    the same picture uploaded twice (or copied out of a trace again) has one key."""
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def decode_upload(data: bytes, filename: str = "") -> Image.Image:
    """The image in ``data``, fully decoded, or :class:`InvalidUpload`.

    The header's size is checked before any pixel is decoded (a decompression bomb claims
    a huge size in a tiny file); ``verify`` catches a broken file, ``load`` a truncated one.
    """
    shown = repr(filename) if filename else "the upload"
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidUpload(f"{shown} is not file data")
    if not data:
        raise InvalidUpload(f"{shown} is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidUpload(
            f"{shown} is {len(data):,} bytes; the limit is {MAX_UPLOAD_BYTES:,} (20 MiB)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
                    raise InvalidUpload(
                        f"{shown} is {width}x{height} pixels; each side must be 1-"
                        f"{MAX_IMAGE_SIDE}: downscale it first"
                    )
                probe.verify()
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                return opened.convert("RGB")
    except InvalidUpload:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as error:
        raise InvalidUpload(
            f"{shown} is not a readable image ({_one_line(error)}); use PNG, JPEG, WebP, BMP or GIF"
        ) from None


class JobQueue:
    """The queue on one store: the dashboard submits and polls, workers claim and report.

    Holds its own writable connection to the store's index (opening the store writable
    creates or upgrades the index, so the ``jobs`` and ``workers`` tables exist).
    """

    def __init__(self, store_dir: str | Path, db_url: str | None = None) -> None:
        self._store = TraceStore(store_dir, db_url=db_url, mode="a")
        self._engine = self._store._index.engine
        self.is_postgres = self._engine.dialect.name == "postgresql"

    @property
    def root(self) -> Path:
        return self._store.root

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- uploads -----------------------------------------------------------------------------
    def _uploads(self) -> Path:
        """``uploads/`` under the root, a real directory (created; never a link)."""
        layout = self._store.layout
        folder = layout.no_links(layout.root / UPLOADS_DIR)
        with contextlib.suppress(FileExistsError):  # a file there: refused just below
            folder.mkdir(exist_ok=True)
        if is_link(folder) or not folder.is_dir():
            raise StoreError(f"{folder} is not a directory; move it away to take uploads")
        return folder

    def save_upload(self, data: bytes, filename: str = "") -> str:
        """Store an uploaded image as ``uploads/<sha256>.png``; return that key.

        The file name is only quoted in messages, never used as a path. The image is decoded
        and written again as PNG (nothing but pixels reaches the store), placed atomically
        with ``link`` (which never replaces a name, so a link planted at the target is
        refused, not followed) from a temp file opened with ``O_NOFOLLOW|O_EXCL``.
        """
        return self._put_png(png_bytes(decode_upload(data, filename)))

    def _put_png(self, png: bytes) -> str:
        key = hashlib.sha256(png).hexdigest()
        folder = self._uploads()
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            final = f"{key}.png"
            if self._existing(dir_fd, final, folder):
                return key
            temp = f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(temp, flags, 0o644, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(png)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(temp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except FileExistsError:
                    self._existing(dir_fd, final, folder)
            finally:
                os.unlink(temp, dir_fd=dir_fd)
            fsync_dir(folder)
        finally:
            os.close(dir_fd)
        return key

    @staticmethod
    def _existing(dir_fd: int, name: str, folder: Path) -> bool:
        """Whether ``name`` is already an upload (same key: same bytes); a link or other
        thing in its place is an error, never followed or replaced."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(
                f"{folder / name} is not a regular file (a link?); the store never follows "
                "links: remove it"
            )
        return True

    def upload_path(self, key: str) -> Path:
        """The stored upload with this key (a regular file inside the store)."""
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise InvalidUpload(f"{key!r} is not an upload key (64 hex digits)")
        layout = self._store.layout
        path = layout.no_links(layout.root / UPLOADS_DIR / f"{key}.png")
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise InvalidUpload(f"no upload {key} in this store; upload the image again") from None
        if not stat.S_ISREG(mode):
            raise StoreError(f"{path} is not a regular file; the store never follows links")
        return path

    def remove_stale_uploads(self, older_than: dt.timedelta) -> list[str]:
        """Delete uploads (and leftover temp files) last written more than ``older_than``
        ago that no queued or running job asks about; return the removed names.

        Why this is safe: a stored trace keeps its own copy of the image, so a removed upload
        only costs Ask's "from the store" its full-resolution original (it falls back to the
        trace's copy, at most 1024 pixels on a side). Only regular files named as this queue
        names them are removed, through the folder's descriptor (a link is never followed);
        anything else in ``uploads/`` is left alone.
        """
        cutoff = dt.datetime.now(dt.UTC).timestamp() - older_than.total_seconds()
        with self._engine.connect() as conn:
            asked = conn.execute(
                sa.select(jobs.c.request_json).where(jobs.c.state.in_(("queued", "running")))
            ).scalars()
            keep = {f"{_request_image(text)}.png" for text in asked}
        folder = self._uploads()
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        removed = []
        try:
            for name in sorted(os.listdir(dir_fd)):
                if name in keep or not _UPLOAD_NAME.fullmatch(name):
                    continue
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    os.unlink(name, dir_fd=dir_fd)
                    removed.append(name)
            if removed:
                fsync_dir(folder)
        finally:
            os.close(dir_fd)
        return removed

    def image_of_trace(self, trace_id: str) -> str:
        """The upload key of a stored trace's image (copied into uploads).

        A live trace names the upload it was asked about (``extra["upload"]``), which is
        used while it is there: the trace itself keeps a display copy at most 1024 pixels on
        a side. Otherwise that copy is stored as the upload.
        """
        with self._store.open(trace_id) as trace:
            key = trace.info.extra.get("upload")
            if isinstance(key, str) and _KEY.fullmatch(key):
                try:
                    self.upload_path(key)
                    return key
                except InvalidUpload:
                    pass
            images = trace.image.images
            if len(images) != 1:
                raise InvalidRequest(
                    f"trace {trace.trace_id} shows {len(images)} images; live questions take one"
                )
            return self._put_png(png_bytes(Image.fromarray(images[0].pixels)))

    # -- asking ------------------------------------------------------------------------------
    def submit(self, request: LiveRequest) -> str:
        """Queue ``request`` (checked; its upload must exist) and return the new job's id."""
        request.check()
        self.upload_path(request.image)
        job_id = secrets.token_hex(16)
        row = {
            "job_id": job_id,
            "state": "queued",
            "request_json": request.to_json(),
            "submitted_at": utc_now(),
            "attempts": 0,
        }
        with self._engine.begin() as conn:
            conn.execute(jobs.insert(), row)
        return job_id

    def get(self, job_id: str) -> Job | None:
        """The job, or None when this queue has no job with that id."""
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            return None
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).first()
        return None if row is None else _job(row)

    def position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of this one (0: next); None unless it is queued."""
        job = self.get(job_id)
        if job is None or job.state != "queued":
            return None
        ahead = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(
                jobs.c.state == "queued",
                sa.tuple_(jobs.c.submitted_at, jobs.c.job_id) < (job.submitted_at, job.job_id),
            )
        )
        with self._engine.connect() as conn:
            return int(conn.execute(ahead).scalar_one())

    def recent(self, limit: int = 20) -> list[Job]:
        """The newest jobs, newest first."""
        stmt = (
            sa.select(jobs)
            .order_by(jobs.c.submitted_at.desc(), jobs.c.job_id.desc())
            .limit(max(0, int(limit)))
        )
        with self._engine.connect() as conn:
            return [_job(row) for row in conn.execute(stmt)]

    def workers(self) -> list[WorkerInfo]:
        """Workers that have not said they stopped, newest first; ``alive``: beat lately."""
        fresh = _ago(WORKER_TIMEOUT_S)
        stmt = (
            sa.select(workers)
            .where(workers.c.stopped_at.is_(None))
            .order_by(workers.c.started_at.desc())
        )
        with self._engine.connect() as conn:
            rows = [r._mapping for r in conn.execute(stmt)]
        return [
            WorkerInfo(
                worker_id=m["worker_id"],
                model_id=m["model_id"],
                model_revision=m["model_revision"],
                host=m["host"],
                pid=int(m["pid"]),
                started_at=m["started_at"],
                heartbeat_at=m["heartbeat_at"],
                alive=m["heartbeat_at"] >= fresh,
            )
            for m in rows
        ]

    # -- the worker's side -------------------------------------------------------------------
    def register_worker(self, model_id: str, model_revision: str) -> str:
        now = utc_now()
        worker_id = secrets.token_hex(16)
        row = {
            "worker_id": worker_id,
            "model_id": model_id,
            "model_revision": model_revision,
            "host": socket.gethostname()[:256],
            "pid": os.getpid(),
            "started_at": now,
            "heartbeat_at": now,
        }
        with self._engine.begin() as conn:
            conn.execute(workers.insert(), row)
        return worker_id

    def unregister_worker(self, worker_id: str) -> None:
        """A worker that stops cleanly says so (it is no longer listed as a worker)."""
        with self._engine.begin() as conn:
            conn.execute(
                workers.update().where(workers.c.worker_id == worker_id),
                {"stopped_at": utc_now()},
            )

    def heartbeat(self, worker_id: str) -> None:
        """The worker is alive, and so is the job it runs."""
        now = utc_now()
        with self._engine.begin() as conn:
            conn.execute(
                workers.update().where(workers.c.worker_id == worker_id), {"heartbeat_at": now}
            )
            conn.execute(
                jobs.update().where(jobs.c.worker_id == worker_id, jobs.c.state == "running"),
                {"heartbeat_at": now},
            )

    def claim(self, worker_id: str) -> Job | None:
        """The oldest queued job, now running for ``worker_id``; None when none is queued.

        One statement: ``UPDATE ... WHERE job_id = (oldest queued) AND state = 'queued'``.
        SQLite runs it holding the database's write lock from the read to the write (as
        ``BEGIN IMMEDIATE`` would); PostgreSQL's subquery takes the row ``FOR UPDATE SKIP
        LOCKED``, so two workers each get a different job without waiting on each other.
        """
        now = utc_now()
        oldest = (
            sa.select(jobs.c.job_id)
            .where(jobs.c.state == "queued")
            .order_by(jobs.c.submitted_at, jobs.c.job_id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            jobs.update()
            .where(jobs.c.job_id == oldest, jobs.c.state == "queued")
            .values(
                state="running",
                worker_id=worker_id,
                started_at=now,
                heartbeat_at=now,
                attempts=jobs.c.attempts + 1,
                progress=0.0,
                progress_text="starting",
            )
            .returning(*jobs.c)
        )
        with self._engine.begin() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else _job(row)

    def report_progress(self, job_id: str, fraction: float, text: str) -> None:
        share = min(max(float(fraction), 0.0), 1.0) if math.isfinite(fraction) else 0.0
        with self._engine.begin() as conn:
            conn.execute(
                jobs.update().where(jobs.c.job_id == job_id, jobs.c.state == "running"),
                {
                    "progress": share,
                    "progress_text": _one_line(text)[:200],
                    "heartbeat_at": utc_now(),
                },
            )

    def finish(self, job_id: str, trace_id: str) -> None:
        trace_id = check_trace_id(trace_id)
        self._end(job_id, {"state": "done", "trace_id": trace_id, "progress": 1.0})

    def fail(self, job_id: str, message: str) -> None:
        line = _one_line(message) or "the worker gave no reason"
        self._end(job_id, {"state": "failed", "error": line[:1000]})

    def _end(self, job_id: str, values: dict[str, Any]) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                jobs.update().where(jobs.c.job_id == job_id, jobs.c.state == "running"),
                {**values, "finished_at": utc_now()},
            )

    def _dead_workers(self, conn: sa.Connection) -> set[str]:
        """Workers presumed dead: silent past the timeout, or on this machine and their
        process is gone (a worker killed and restarted at once need not wait the timeout)."""
        here = socket.gethostname()[:256]
        stale = _ago(WORKER_TIMEOUT_S)
        dead = set()
        for worker_id, host, pid, beat, stopped in conn.execute(
            sa.select(
                workers.c.worker_id,
                workers.c.host,
                workers.c.pid,
                workers.c.heartbeat_at,
                workers.c.stopped_at,
            )
        ):
            if stopped is not None or beat < stale or (host == here and _pid_gone(pid)):
                dead.add(worker_id)
        return dead

    def recover(self) -> list[str]:
        """Running jobs whose worker stopped beating: back in the queue after a first start,
        failed after a second (a question that kills its worker twice is not tried again).
        Returns the ids of the jobs it changed."""
        changed = []
        with self._engine.begin() as conn:
            dead = self._dead_workers(conn)
            stale = _ago(WORKER_TIMEOUT_S)
            running = conn.execute(
                sa.select(jobs.c.job_id, jobs.c.worker_id, jobs.c.heartbeat_at, jobs.c.attempts)
                .where(jobs.c.state == "running")
                .with_for_update(skip_locked=True)
            ).all()
            for job_id, worker_id, beat, attempts in running:
                if worker_id not in dead and (beat or "") >= stale:
                    continue
                where = (jobs.c.job_id == job_id, jobs.c.state == "running")
                if attempts >= MAX_ATTEMPTS:
                    values = {
                        "state": "failed",
                        "finished_at": utc_now(),
                        "error": f"the worker stopped while recording this question, "
                        f"{attempts} times; it is not tried again",
                    }
                else:
                    values = {
                        "state": "queued",
                        "worker_id": None,
                        "started_at": None,
                        "heartbeat_at": None,
                        "progress": None,
                        "progress_text": None,
                    }
                if conn.execute(jobs.update().where(*where), values).rowcount:
                    changed.append(job_id)
        return changed


__all__ = [
    "MAX_IMAGE_SIDE",
    "MAX_NEW_TOKENS_LIMIT",
    "MAX_PROMPT_CHARS",
    "MAX_UPLOAD_BYTES",
    "METHODS",
    "WORKER_TIMEOUT_S",
    "InvalidRequest",
    "InvalidUpload",
    "Job",
    "JobError",
    "JobQueue",
    "LiveRequest",
    "WorkerInfo",
    "decode_upload",
    "png_bytes",
]
