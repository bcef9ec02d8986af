"""The live-mode job queue on a real index (SQLite and PostgreSQL), real files, real processes."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from store import open_store
from store._index import jobs, workers
from store.errors import StoreError, TraceNotFound
from store.jobs import (
    MAX_IMAGE_SIDE,
    MAX_NEW_TOKENS_LIMIT,
    MAX_PROMPT_CHARS,
    MAX_UPLOAD_BYTES,
    WORKER_TIMEOUT_S,
    InvalidRequest,
    InvalidUpload,
    JobQueue,
    LiveRequest,
)

REPO = Path(__file__).resolve().parents[2]


def png(size=(24, 16), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def queue(tmp_path, index_url):
    q = JobQueue(tmp_path / "store", index_url)
    yield q
    q.close()


def ask(queue: JobQueue, prompt: str = "What colour is it?", **fields) -> str:
    key = queue.save_upload(png(), "photo.png")
    return queue.submit(LiveRequest(image=key, prompt=prompt, **fields))


def test_submit_claim_finish_in_order(queue):
    first, second = ask(queue, "one"), ask(queue, "two")
    assert queue.get(first).state == "queued"
    assert (queue.position(first), queue.position(second)) == (0, 1)
    worker = queue.register_worker("demo", "sha256:1")
    job = queue.claim(worker)
    assert (job.job_id, job.state, job.attempts, job.worker_id) == (first, "running", 1, worker)
    assert job.request.prompt == "one"
    assert queue.position(first) is None and queue.position(second) == 0
    queue.report_progress(first, 0.25, "relevancy 3/8\nmore")
    running = queue.get(first)
    assert (running.progress, running.progress_text) == (0.25, "relevancy 3/8 more")
    queue.finish(first, "ab" * 16)
    done = queue.get(first)
    assert (done.state, done.trace_id, done.progress) == ("done", "ab" * 16, 1.0)
    assert done.finished_at >= done.started_at >= done.submitted_at
    assert queue.claim(worker).job_id == second
    queue.fail(second, "CUDA out of memory.\nTraceback ...")
    failed = queue.get(second)
    assert (failed.state, failed.error) == ("failed", "CUDA out of memory. Traceback ...")
    assert queue.claim(worker) is None
    assert [j.job_id for j in queue.recent(10)] == [second, first]
    assert queue.get("0" * 32) is None and queue.get("../x") is None


def test_request_round_trips_through_sql(queue):
    job_id = ask(
        queue,
        max_new_tokens=7,
        do_sample=True,
        temperature=0.5,
        top_p=0.9,
        seed=3,
        methods=("relevancy", "causal"),
        edited_from="cd" * 16,
        edit="erase box (1, 2, 3, 4)",
    )
    request = queue.get(job_id).request
    assert request.methods == ("relevancy", "causal") and request.edit.startswith("erase")
    assert request == LiveRequest.from_json(request.to_json())
    drawn = queue.get(ask(queue, scene=(5, 3))).request
    assert drawn.scene == (5, 3) and drawn == LiveRequest.from_json(drawn.to_json())


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"prompt": "  "}, "empty"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "limit"),
        ({"prompt": "look <image> here"}, "<image>"),
        ({"prompt": "a\x00b"}, "control"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": MAX_NEW_TOKENS_LIMIT + 1}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"seed": -1}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"do_sample": True, "temperature": 0.0}, "sampling"),
        ({"top_p": 1.5}, "top_p"),
        ({"methods": ("relevancy", "magic")}, "methods"),
        ({"methods": ["relevancy"]}, "methods"),
        ({"methods": ("causal", "causal")}, "twice"),
        ({"parent_trace_id": "../../etc"}, "trace id"),
        ({"edited_from": "ab" * 16, "parent_trace_id": "cd" * 16}, "not both"),
        ({"edit": "blur"}, "edited_from"),
        ({"image": "../../etc/passwd"}, "upload key"),
        ({"scene": (1,)}, "scene"),
        ({"scene": [1, 3]}, "scene"),
        ({"scene": (-1, 3)}, "seed"),
        ({"scene": (1, 9)}, "shape count"),
    ],
)
def test_bad_requests_are_one_line(queue, fields, says):
    base = {"image": "0" * 64, "prompt": "What is it?"}
    request = LiveRequest(**{**base, **fields})
    with pytest.raises(InvalidRequest) as caught:
        queue.submit(request)
    message = str(caught.value)
    assert says in message and "\n" not in message
    with queue._engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 0


def test_submit_needs_an_existing_upload(queue):
    with pytest.raises(InvalidUpload, match="no upload"):
        queue.submit(LiveRequest(image="0" * 64, prompt="What is it?"))


def test_recover_retries_once_then_fails(queue):
    job_id = ask(queue)
    for attempt in (1, 2):
        worker = queue.register_worker("demo", "r")
        assert queue.claim(worker).attempts == attempt
        with queue._engine.begin() as conn:  # the worker falls silent
            old = "2000-01-01T00:00:00.000000+00:00"
            conn.execute(workers.update(), {"heartbeat_at": old})
            conn.execute(jobs.update(), {"heartbeat_at": old})
        assert queue.recover() == [job_id]
        job = queue.get(job_id)
        if attempt == 1:
            assert (job.state, job.worker_id, job.progress) == ("queued", None, None)
    assert job.state == "failed" and "2 times" in job.error
    assert queue.recover() == []
    assert not any(w.alive for w in queue.workers())


def test_recover_leaves_live_workers_alone(queue):
    job_id = ask(queue)
    worker = queue.register_worker("demo", "r")
    queue.claim(worker)
    queue.heartbeat(worker)
    assert queue.recover() == []
    assert queue.get(job_id).state == "running"
    [info] = queue.workers()
    assert info.alive and info.pid == os.getpid() and WORKER_TIMEOUT_S > 5
    queue.unregister_worker(worker)
    assert queue.workers() == []


def test_a_killed_worker_here_is_recovered_at_once(queue):
    job_id = ask(queue)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    worker = queue.register_worker("demo", "r")
    with queue._engine.begin() as conn:  # its process has exited; its beat is fresh
        conn.execute(workers.update(), {"pid": int(gone.stdout)})
    queue.claim(worker)
    assert queue.recover() == [job_id]


CLAIMER = """
import json, sys
from store.jobs import JobQueue
q = JobQueue(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
me = q.register_worker("demo", "r")
got = []
print("ready", flush=True)
sys.stdin.readline()
while (job := q.claim(me)) is not None:
    got.append(job.job_id)
print(json.dumps(got), flush=True)
"""


def test_two_processes_never_claim_one_job(tmp_path, index_url):
    store = tmp_path / "store"
    with JobQueue(store, index_url) as q:
        submitted = {ask(q, f"question {i}") for i in range(40)}
    args = [sys.executable, "-c", CLAIMER, str(store), *([index_url] if index_url else [])]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # start both claim loops at once
        p.stdin.write("go\n")
        p.stdin.flush()
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    every = claimed[0] + claimed[1]
    assert len(every) == len(set(every)) == 40 and set(every) == submitted


# -- uploads: hostile files never escape the store ---------------------------------------------


def test_upload_is_stored_as_png_by_content(queue):
    key = queue.save_upload(png(), "../../etc/passwd")
    path = queue.upload_path(key)
    assert path == queue.root / "uploads" / f"{key}.png" and path.is_file()
    assert queue.save_upload(png(), "other name.png") == key  # same pixels, same key
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(jpeg, format="JPEG")
    other = queue.save_upload(jpeg.getvalue(), "a.jpg")
    with Image.open(queue.upload_path(other)) as stored:
        assert stored.format == "PNG" and stored.size == (8, 8)
    assert sorted(p.name for p in (queue.root / "uploads").iterdir()) == sorted(
        [f"{key}.png", f"{other}.png"]
    )


def _huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge size, with almost no data (a decompression bomb)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"x" * (MAX_UPLOAD_BYTES + 1), "limit"),
        (b"#!/bin/sh\nrm -rf /\n", "not a readable image"),
        (png((64, 64))[:-40], "not a readable image"),
        (_huge_png(MAX_IMAGE_SIDE + 1, 10), "each side"),
        (_huge_png(60000, 60000), "decompression bomb"),
        ("text, not bytes", "not file data"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(queue, data, says):
    with pytest.raises(InvalidUpload) as caught:
        queue.save_upload(data, "evil.png")
    assert says in str(caught.value) and "\n" not in str(caught.value)
    uploads = queue.root / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_truncated_image_data_is_refused(queue):
    big = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(big, format="PNG")
    with pytest.raises(InvalidUpload):
        queue.save_upload(big.getvalue()[: len(big.getvalue()) // 2])


@pytest.mark.parametrize("key", ["../" + "a" * 61, "A" * 64, "a" * 63, "a" * 64 + "/x", 7])
def test_upload_path_refuses_bad_keys(queue, key):
    with pytest.raises(InvalidUpload):
        queue.upload_path(key)


def test_a_link_planted_at_uploads_is_never_followed(queue, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (queue.root / "uploads").symlink_to(outside)
    with pytest.raises(StoreError, match="symbolic link"):
        queue.save_upload(png())
    with pytest.raises(StoreError, match="symbolic link"):
        queue.upload_path("a" * 64)
    assert list(outside.iterdir()) == []


def test_a_link_planted_at_the_target_name_is_never_followed(queue, tmp_path):
    data = png()
    key = queue.save_upload(data)
    target = queue.upload_path(key)
    target.unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target.symlink_to(victim)
    with pytest.raises(StoreError, match="not a regular file"):
        queue.save_upload(data)
    with pytest.raises(StoreError, match="symbolic link"):
        queue.upload_path(key)
    assert victim.read_text() == "keep me" and target.is_symlink()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp file left


def test_image_of_trace_copies_a_stored_image(tmp_path, make_trace):
    store_dir = tmp_path / "store"
    trace = make_trace(seed=1)
    with open_store(store_dir, writable=True) as st:
        st.add(trace)
    with JobQueue(store_dir) as q:
        key = q.image_of_trace(trace.info.trace_id)
        with Image.open(q.upload_path(key)) as copied:
            pixels = trace.image.images[0].pixels
            assert copied.size == (pixels.shape[1], pixels.shape[0])
        assert q.image_of_trace(trace.info.trace_id) == key
        with pytest.raises(TraceNotFound):
            q.image_of_trace("0" * 32)


def test_stale_uploads_go_unless_a_pending_job_needs_them(queue, tmp_path):
    old = os.path.getmtime(queue.root) - 30 * 86400
    pending = ask(queue)  # queued: its upload stays however old
    needed = queue.get(pending).request.image
    stale = queue.save_upload(png(colour=(1, 2, 3)))
    fresh = queue.save_upload(png(colour=(4, 5, 6)))
    folder = queue.root / "uploads"
    leftover = folder / f".{stale}.123.abcdef01.tmp"  # a killed writer's temp file
    leftover.write_bytes(b"x")
    stranger = folder / "notes.txt"  # not ours: never touched
    stranger.write_text("keep")
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep")
    link = folder / f"{'c' * 64}.png"
    link.symlink_to(victim)
    for path in (queue.upload_path(needed), queue.upload_path(stale), leftover, stranger):
        os.utime(path, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    removed = queue.remove_stale_uploads(dt.timedelta(days=7))
    assert sorted(removed) == sorted([f"{stale}.png", leftover.name])
    left = {p.name for p in folder.iterdir()}
    assert left == {f"{needed}.png", f"{fresh}.png", "notes.txt", link.name}
    assert victim.read_bytes() == b"keep"
    assert queue.claim(queue.register_worker("demo", "sha256:1")).job_id == pending
    assert f"{needed}.png" not in queue.remove_stale_uploads(dt.timedelta(days=7))  # running
    queue.fail(pending, "gave up")  # no longer pending: its upload may go too
    assert f"{needed}.png" in queue.remove_stale_uploads(dt.timedelta(days=7))


def test_gc_uploads_command_is_one_line_on_a_missing_store(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "store", "gc-uploads", "--store", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "x").exists()
