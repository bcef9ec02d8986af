"""Benchmark live mode: a question through the queue to a stored trace, on the demo model.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_live.py [--latency 8] [--jobs 20]

A real worker process (``lvlm-interpret worker``, one CPU thread) serves a fresh store and
is warmed up with one job. Then: **latency** — one question at a time, from ``submit`` to
the job being done (the trace stored, so its first heatmap can be drawn) and to a relevancy
map read from the opened trace; **throughput** — ``--jobs`` questions queued at once, jobs
per minute until the last is done. Beside them, the same recordings made in this process
with ``record_into_store`` (no queue) give the queue's share of the time. Every question is
a different scene, so no job finds its trace already stored.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.demo.world import demo_items
from store import open_store
from store.jobs import JobQueue, LiveRequest, png_bytes

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "engine" / "demo" / "checkpoint"
POLL_S = 0.005


def wait_done(
    queue: JobQueue, job_id: str, worker: subprocess.Popen, timeout: float = 600.0
) -> None:
    deadline = time.monotonic() + timeout
    while (job := queue.get(job_id)).state not in ("done", "failed"):
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not done after {timeout:.0f}s")
        time.sleep(POLL_S)
    if job.state == "failed":
        raise RuntimeError(f"job {job_id} failed: {job.error}")


def requests(queue: JobQueue, count: int, seed: int) -> list[LiveRequest]:
    return [
        LiveRequest(image=queue.save_upload(png_bytes(scene.image)), prompt=question.text)
        for scene, question in demo_items(count, seed)
    ]


def direct_seconds(store_dir: Path, asked: list[LiveRequest], queue: JobQueue) -> list[float]:
    """The same kind of recording in this process, without the queue (one thread)."""
    import torch

    from engine.inputs import load_image
    from engine.loading import load_model
    from engine.recorder import RecordOptions
    from engine.recording import RecordRequest, record_into_store

    torch.set_num_threads(1)
    loaded = load_model(str(CHECKPOINT))
    times = []
    with open_store(store_dir, writable=True) as st:
        for i, live in enumerate(asked):
            image = load_image(queue.upload_path(live.image))
            request = RecordRequest((image,), live.prompt, RecordOptions(), tags=(f"d{i}",))
            start = time.perf_counter()
            record_into_store(st, loaded, request)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=int, default=8, help="questions asked one at a time")
    parser.add_argument("--jobs", type=int, default=20, help="questions queued at once")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-live-"))
    store = folder / "store"
    queue = JobQueue(store)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "engine.cli", "worker", "--store", str(store)]
    command += ["--model", str(CHECKPOINT), "--poll-interval", "0.02"]
    worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)  # its log: noise
    try:
        warm = requests(queue, 1, seed=1)[0]
        started = time.perf_counter()
        wait_done(queue, queue.submit(warm), worker)
        print(f"worker start + first job: {time.perf_counter() - started:.1f} s", flush=True)

        latency, to_map = [], []
        asked = requests(queue, args.latency, seed=2)
        for live in asked:
            start = time.perf_counter()
            job_id = queue.submit(live)
            wait_done(queue, job_id, worker)
            latency.append(time.perf_counter() - start)
            with open_store(store) as st, st.open(queue.get(job_id).trace_id) as trace:
                assert trace.relevancy is not None and trace.relevancy.llm[0].size
            to_map.append(time.perf_counter() - start)

        batch = requests(queue, args.jobs, seed=3)
        start = time.perf_counter()
        ids = [queue.submit(live) for live in batch]
        for job_id in ids:
            wait_done(queue, job_id, worker)
        throughput = len(ids) / (time.perf_counter() - start) * 60
    finally:
        worker.terminate()
        worker.wait(60)
    direct = direct_seconds(folder / "direct", asked, queue)
    queue.close()

    med, direct_med = statistics.median(latency), statistics.median(direct)
    rows = [
        ("submit -> trace stored, median (s)", f"{med:.3f}"),
        ("submit -> trace stored, min / max (s)", f"{min(latency):.3f} / {max(latency):.3f}"),
        ("submit -> relevancy map read from the trace (s)", f"{statistics.median(to_map):.3f}"),
        ("same recording in-process, no queue, median (s)", f"{direct_med:.3f}"),
        ("queue + worker overhead (latency / in-process)", f"{med / direct_med:.2f}x"),
        (f"throughput, 1 worker, {args.jobs} queued (jobs/min)", f"{throughput:.1f}"),
        ("in-process rate, same recordings (traces/min)", f"{60 / direct_med:.1f}"),
    ]
    for label, value in rows:
        print(f"{label:<52} {value:>15}")


if __name__ == "__main__":
    main()
