"""Benchmark the Dataset page's queries on an index of 10,000 traces.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_dataset.py

Two checkpoints answer the same 5,000 questions (image + prompt), so the index holds 10,000
rows and 5,000 pairs, five question kinds as tags, a verdict on every row, and a stored
dataset summary per trace shaped like a 7B LLaVA's (32 x 32 head shares, a 16 x 16 grid).
Rows are written straight into the index (no trace files): these figures are the SQL and
the aggregation the page runs on every view. The one part that reads files, summarising a
trace the first time it is sampled, is timed on real synthetic traces at the end. Figures
are medians of warm runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_store import ROWS, report
from dashboard.components import dataset as summaries
from dashboard.config import STORE_ENV
from store import TraceQuery, open_store
from store._index import results, tags, traces
from store.dataset import (
    SUMMARY_KEY,
    SUMMARY_KIND,
    Checkpoint,
    accuracy_by_checkpoint,
    accuracy_by_tag,
    paired_sample,
    pairs_page,
    summary_sample,
)
from store.synthetic import make_synthetic_trace

MODEL = "org/llava-7b"
CHECKPOINTS = (Checkpoint(MODEL, "rev-strong"), Checkpoint(MODEL, "rev-weak"))
KINDS = ("colour", "shape", "position", "count", "existence")
ANSWERS = ("red", "green", "blue", "circle", "square", "top left", "two", "yes", "no")
SAMPLE = 200  # as the page reads


def build(root: Path, questions: int) -> Path:
    """An index of ``2 * questions`` rows: every question on both checkpoints."""
    rng = np.random.default_rng(0)
    directory = root / "dataset"
    with open_store(directory, writable=True) as store:
        index = store._index
        rows, tag_rows, result_rows = [], [], []
        for q in range(questions):
            image = hashlib.sha256(f"scene-{q}".encode()).hexdigest()
            kind = KINDS[q % len(KINDS)]
            prompt = f"question {q} about the {kind}?"
            reference = ANSWERS[q % len(ANSWERS)]
            for c, checkpoint in enumerate(CHECKPOINTS):
                right = rng.random() < (0.95 if c == 0 else 0.7)
                answer = reference if right else ANSWERS[(q + 1 + c) % len(ANSWERS)]
                tid = f"{2 * q + c:032x}"
                info = {"trace_id": tid, "model_id": MODEL, "prompt": prompt, "answer": answer}
                rows.append(
                    dict(
                        trace_id=tid,
                        model_id=MODEL,
                        model_revision=checkpoint.model_revision,
                        prompt=prompt,
                        answer=answer,
                        image_name=f"scene-{q}.png",
                        image_sha256=image,
                        created_at=f"2026-01-01T00:00:{q % 60:02d}.000000+00:00",
                        adapter="llava",
                        reference_answer=reference,
                        correct=bool(right),
                        precision="lossless",
                        num_layers=32,
                        num_heads=32,
                        prompt_length=636,
                        answer_length=2,
                        file_size=0,
                        file_checksum="-",
                        info_json=json.dumps(info),
                    )
                )
                tag_rows += [dict(trace_id=tid, tag="demo"), dict(trace_id=tid, tag=kind)]
                grid = rng.random((summaries.GRID, summaries.GRID))
                payload = {
                    summaries.SHARE: summaries.encode(rng.random((32, 32))),
                    summaries.RELEVANCY: summaries.encode(grid / grid.sum()),
                }
                result_rows.append(
                    dict(
                        trace_id=tid,
                        kind=SUMMARY_KIND,
                        key=SUMMARY_KEY,
                        payload=json.dumps(payload),
                        updated_at="2026-01-01T00:00:00+00:00",
                    )
                )
        with index.begin() as conn:
            conn.execute(traces.insert(), rows)
            conn.execute(tags.insert(), tag_rows)
            conn.execute(results.insert(), result_rows)
            if index.is_sqlite:
                conn.exec_driver_sql("ANALYZE")
    return directory


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm the page cache and SQLite's statement cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_queries(directory: Path, repeats: int) -> None:
    strong, weak = CHECKPOINTS
    every, colour = TraceQuery(), TraceQuery(tag="colour")
    with open_store(directory) as store:
        first = pairs_page(store, every, limit=10, left=strong, right=weak)
        print(f"  {first.total:,} pairs, {first.differing:,} answered differently")
        figures = [
            ("accuracy per checkpoint", lambda: accuracy_by_checkpoint(store, every), 100),
            ("accuracy per tag and checkpoint", lambda: accuracy_by_tag(store, every), 100),
            (
                "pairs: first page of 10",
                lambda: pairs_page(store, every, limit=10, left=strong, right=weak),
                100,
            ),
            (
                "pairs: page 250 of 500",
                lambda: pairs_page(store, every, limit=10, offset=2490, left=strong, right=weak),
                100,
            ),
            (
                "pairs of one tag: first page",
                lambda: pairs_page(store, colour, limit=10, left=strong, right=weak),
                100,
            ),
            (
                f"mean head shares, {SAMPLE} stored summaries x 2",
                lambda: [
                    summaries.mean_of(
                        [r.summary for r in summary_sample(store, every, SAMPLE, checkpoint=c)],
                        summaries.SHARE,
                    )
                    for c in CHECKPOINTS
                ],
                500,
            ),
            (
                f"head divergence over {SAMPLE} pairs",
                lambda: summaries.head_divergence(
                    (p.left.summary, p.right.summary)
                    for p in paired_sample(store, every, strong, weak, SAMPLE)
                ),
                500,
            ),
            (
                f"mean relevancy of one kind, {SAMPLE} x 2",
                lambda: [
                    summaries.mean_of(
                        [
                            r.summary
                            for r in summary_sample(
                                store, every, SAMPLE, checkpoint=c, tag="colour"
                            )
                        ],
                        summaries.RELEVANCY,
                    )
                    for c in CHECKPOINTS
                ],
                500,
            ),
        ]
        for name, fn, target in figures:
            report(name, median_ms(fn, repeats), "ms", target)


def bench_page(directory: Path, repeats: int) -> None:
    """The whole Dataset page in Streamlit's AppTest (no browser): filters, both accuracy
    tables, a page of pairs and the aggregates from stored summaries."""
    from streamlit.testing.v1 import AppTest

    os.environ[STORE_ENV] = str(directory)
    app = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"

    def run() -> None:
        at = AppTest.from_file(str(app), default_timeout=120)
        at.switch_page("views/dataset.py")
        at.run()
        if at.exception or at.error:
            raise RuntimeError("the Dataset page failed")

    report("Dataset page, whole run (AppTest)", median_ms(run, max(3, repeats // 2)), "ms", 2000)


def bench_summarise(root: Path, repeats: int) -> None:
    """First view of a sample: each trace's summary read from its file (7B-like head count,
    LLaVA-1.5's 24 x 24 grid)."""
    shape = dict(num_layers=32, num_heads=32, prompt_len=636, answer_len=16, grid=(24, 24))
    shape.update(image_start=35, vision_layers=0)
    with open_store(root / "files", writable=True) as store:
        ids = [store.add(make_synthetic_trace(**shape, seed=s)) for s in range(repeats)]
        times = []
        for trace_id in ids:
            t0 = time.perf_counter()
            with store.open(trace_id) as trace:
                summaries.summarise(trace)
            times.append((time.perf_counter() - t0) * 1000)
    per_trace = statistics.median(times)
    report("summarise one trace from its file (cold open)", per_trace, "ms")
    report(f"first view: {SAMPLE} traces summarised", per_trace * SAMPLE / 1000, "s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        directory = build(Path(tmp), args.questions)
        print(f"index of {2 * args.questions:,} traces built in {time.perf_counter() - t0:.1f} s")
        bench_queries(directory, args.repeats)
        bench_page(directory, args.repeats)
        bench_summarise(Path(tmp), args.repeats)
    print("\n| figure | value | unit | vs target |\n|---|---:|---|---|")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
