"""The live-mode worker as a real process on the bundled demo model: jobs in, traces out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import ImageDraw

from engine.demo.world import make_scene
from store import open_store
from store.jobs import Job, JobQueue, LiveRequest, png_bytes

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 240.0  # a worker's start (torch import, model load) on a busy 2-core machine


@pytest.fixture(autouse=True)
def _stop_workers():
    """Workers a failed test left running are killed."""
    yield
    for process in STARTED:
        if process.poll() is None:
            process.kill()
            process.communicate()
    STARTED.clear()


STARTED: list[subprocess.Popen] = []


def start_worker(store: Path, demo_checkpoint: Path, *more: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["worker", "--store", str(store), "--model", str(demo_checkpoint)]
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args, "--poll-interval", "0.1", *more],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    STARTED.append(process)
    return process


def wait_for(queue: JobQueue, job_id: str, until: Callable[[Job], bool], worker=None) -> Job:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = queue.get(job_id)
        if until(job):
            return job
        if worker is not None and worker.poll() is not None:
            pytest.fail(f"the worker exited early: {worker.stdout.read()}")
        time.sleep(0.02)
    pytest.fail(f"job {job_id} still {queue.get(job_id).state} after {WAIT_S:.0f}s")


def finished(job: Job) -> bool:
    return job.state in ("done", "failed")


def scene_upload(queue: JobQueue, seed: int = 3) -> str:
    return queue.save_upload(png_bytes(make_scene(seed).image), "scene.png")


@pytest.mark.slow
def test_worker_answers_follow_ups_and_edits_and_fails_bad_jobs_alone(tmp_path, demo_checkpoint):
    store = tmp_path / "store"
    queue = JobQueue(store)
    key = scene_upload(queue)
    first = queue.submit(LiveRequest(image=key, prompt="What color is the circle?"))
    too_long = queue.submit(LiveRequest(image=key, prompt="is the red circle there " * 60))
    broken_key = scene_upload(queue, seed=4)
    queue.upload_path(broken_key).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    broken = queue.submit(LiveRequest(image=broken_key, prompt="What shape is it?"))
    after = queue.submit(LiveRequest(image=key, prompt="How many shapes are there?", methods=()))
    worker = start_worker(store, demo_checkpoint)
    try:
        jobs = {j: wait_for(queue, j, finished, worker) for j in (first, too_long, broken, after)}
        assert jobs[too_long].state == "failed" and "context" in jobs[too_long].error
        assert jobs[broken].state == "failed" and "not a readable image" in jobs[broken].error
        assert "\n" not in jobs[too_long].error + jobs[broken].error
        assert jobs[first].state == jobs[after].state == "done"
        parent_id = jobs[first].trace_id
        with open_store(store) as st:
            parent = st.get(parent_id)
            assert "live" in parent.tags and parent.extra["upload"] == key
            assert "parent_trace_id" not in parent.extra
            with st.open(parent_id) as trace:
                assert trace.relevancy is not None and trace.answer_length >= 1
            with st.open(jobs[after].trace_id) as trace:
                assert trace.relevancy is None

        follow = queue.submit(
            LiveRequest(
                image=queue.image_of_trace(parent_id),
                prompt="What shape is the red object?",
                parent_trace_id=parent_id,
            )
        )
        edited = make_scene(3).image.copy()
        ImageDraw.Draw(edited).rectangle((0, 0, 31, 31), fill=(128, 128, 128))
        counterfactual = queue.submit(
            LiveRequest(
                image=queue.save_upload(png_bytes(edited)),
                prompt=parent.prompt,
                edited_from=parent_id,
                edit="erase box (0, 0, 32, 32)",
            )
        )
        follow_job = wait_for(queue, follow, finished, worker)
        edit_job = wait_for(queue, counterfactual, finished, worker)
        assert follow_job.state == edit_job.state == "done", (follow_job.error, edit_job.error)
        with open_store(store) as st:
            child = st.get(follow_job.trace_id)
            assert child.extra["parent_trace_id"] == parent_id
            assert child.extra["history"] == [[parent.prompt, parent.answer]]
            with st.open(child.trace_id) as trace:  # the earlier turn is in the chat
                text = "".join(trace.tokens.text[: trace.prompt_length])
                assert parent.answer.replace(" ", "") in text.replace(" ", "").replace("▁", "")
            changed = st.get(edit_job.trace_id)
            assert changed.extra["edited_from"] == parent_id
            assert changed.extra["edit"] == "erase box (0, 0, 32, 32)"
            assert st.get(parent_id) == parent  # neither changed the trace they came from
        assert [w.alive for w in queue.workers()] == [True]
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0, output
    assert "2 failed" in output and queue.workers() == []
    verify = subprocess.run(
        [sys.executable, "-m", "engine.cli", "store", "verify", "--store", str(store)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    queue.close()


def kill_while_recording(
    queue: JobQueue, job_id: str, worker: subprocess.Popen, attempt: int
) -> Job:
    """SIGKILL the worker once it computes relevancy for ``job_id`` (before storing) on
    its ``attempt``-th start."""

    def recording(job: Job) -> bool:
        return job.attempts == attempt and (job.progress_text or "").startswith("relevancy")

    job = wait_for(queue, job_id, recording, worker)
    worker.kill()
    worker.wait()
    return job


@pytest.mark.slow
def test_killed_worker_job_is_retried_once_then_failed(tmp_path, demo_checkpoint):
    store = tmp_path / "store"
    queue = JobQueue(store)
    key = scene_upload(queue)
    # Sampling near-uniformly makes a long answer: relevancy runs for many tokens.
    slow = LiveRequest(
        image=key, prompt="What is there?", max_new_tokens=150, do_sample=True, temperature=100.0
    )
    doomed = queue.submit(slow)
    waiting = queue.submit(LiveRequest(image=key, prompt="How many shapes are there?"))
    first = start_worker(store, demo_checkpoint)
    assert kill_while_recording(queue, doomed, first, 1).state == "running"
    assert queue.get(waiting).state == "queued"

    second = start_worker(store, demo_checkpoint)  # recover puts the job back: attempt 2
    assert kill_while_recording(queue, doomed, second, 2).state == "running"

    third = start_worker(store, demo_checkpoint, "--once")
    output = third.communicate(timeout=WAIT_S)[0]
    assert third.returncode == 0, output
    failed, done = queue.get(doomed), queue.get(waiting)
    assert failed.state == "failed" and "2 times" in failed.error
    assert done.state == "done" and done.attempts == 1
    with open_store(store) as st:
        assert [info.trace_id for info in st.query().items] == [done.trace_id]
    verify = subprocess.run(
        [sys.executable, "-m", "engine.cli", "store", "verify", "--store", str(store)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    queue.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--poll-interval", "0"], "--poll-interval"),
        (["--poll-interval", "nan"], "--poll-interval"),
        (["--model", "/no/such/folder"], "No folder"),
        (["--device", "cuda:7"], "cuda"),
        (["--db", "sqlite://"], "in-memory"),
    ],
)
def test_bad_arguments_are_one_line_before_loading(tmp_path, demo_checkpoint, args, says):
    base = ["worker", "--store", str(tmp_path / "s"), "--model", str(demo_checkpoint)]
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *base, *args, "--once"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "loading" not in done.stderr


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_serve_with_a_model_runs_a_worker_and_stops_it(tmp_path, demo_checkpoint):
    store = tmp_path / "store"
    queue = JobQueue(store)
    args = ["serve", "--store", str(store), "--model", str(demo_checkpoint)]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args, "--port", str(free_port())],
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    STARTED.append(launcher)
    deadline = time.monotonic() + WAIT_S
    while not [w for w in queue.workers() if w.alive] and time.monotonic() < deadline:
        assert launcher.poll() is None
        time.sleep(0.2)
    [beside] = queue.workers()
    assert beside.model_id == "lvlm-interpret/shapes-demo" and beside.pid != launcher.pid
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(60)  # Streamlit's own exit status after a signal, as serve reports it
    assert queue.workers() == []  # the worker stopped cleanly with the dashboard
    with pytest.raises(ProcessLookupError):
        os.kill(beside.pid, 0)
    queue.close()


def test_serve_refuses_a_bad_model_in_one_line(tmp_path):
    args = ["serve", "--store", str(tmp_path / "s"), "--model", "/no/such/model"]
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *args, "--port", str(free_port())],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "No folder" in lines[0]


def test_ground_truth_comes_from_the_named_scene_or_the_parent_only(tmp_path):
    from dataclasses import replace

    from engine.inputs import load_image
    from engine.worker import JobFailed, ground_truth
    from store.synthetic import make_synthetic_trace

    scene = make_scene(11, 3)
    picture = load_image(scene.image, "scene.png")
    with open_store(tmp_path / "store", writable=True) as st:
        asked = LiveRequest(image="a" * 64, prompt="Where is it?", scene=(11, 3))
        assert ground_truth(st, asked, picture) == scene.ground_truth()
        other = load_image(make_scene(12, 3).image, "other.png")
        with pytest.raises(JobFailed, match="not the shapes-world scene"):
            ground_truth(st, asked, other)  # a seed names a scene; the pixels must match it
        parent = make_synthetic_trace(num_layers=2, prompt_len=24, answer_len=3, grid=(2, 2))
        truth = {"objects": [{"shape": "circle", "colour": "red", "box": [0, 0, 8, 8]}]}
        extra = {"upload": "b" * 64, "ground_truth": truth}
        st.add(replace(parent, info=replace(parent.info, extra=extra)))
        follow = LiveRequest(image="b" * 64, prompt="And?", parent_trace_id=parent.info.trace_id)
        assert ground_truth(st, follow, picture) == truth
        elsewhere = replace(follow, image="c" * 64)  # another image: the parent's truth is not it
        assert ground_truth(st, elsewhere, picture) is None
