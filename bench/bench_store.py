"""Benchmark the trace store against the targets of the store issue.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_store.py          # 7B-shaped, a few minutes
    OMP_WAIT_POLICY=PASSIVE python bench/bench_store.py --quick  # small shapes, ~30 s
    OMP_WAIT_POLICY=PASSIVE python bench/bench_store.py --only files  # trace files only

Reads check every attention block's XXH64 checksum (files written by this version), as the
dashboard's reads do.

Cold reads drop the trace file from the page cache (posix_fadvise DONTNEED) and open a new
reader (empty HDF5 chunk cache) before each timed call. Figures are medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import (
    LOG8_RELATIVE_ERROR,
    LOG8_ZERO_BELOW,
    SPARSE_THRESHOLD,
    StoredTrace,
    TraceQuery,
    open_store,
)
from store._index import answer_tokens, traces
from store.synthetic import make_synthetic_trace

ROWS: list[tuple[str, str, str, str]] = []


def report(name: str, value: float, unit: str, target: float | None = None, higher=False) -> None:
    """Record one figure; the verdict compares against the target in the right direction."""
    if target is None:
        verdict = ""
    else:
        ok = value >= target if higher else value <= target
        factor = value / target if higher else target / max(value, 1e-9)
        verdict = (
            f"{'PASS' if ok else 'MISS'} ({factor:.2f}x target {'≥' if higher else '≤'}{target:g})"
        )
    ROWS.append((name, f"{value:,.4g}", unit, verdict))
    print(f"  {name:48s} {value:>12,.4g} {unit:6s} {verdict}", flush=True)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def cold_and_warm(path: Path, op: Callable[[StoredTrace, int], object], repeats: int):
    """Median (cold, warm) ms of ``op`` with block checksums verified and, interleaved in
    the same run (so both see the same machine load), with verification switched off as
    for files written before checksums: {True: (cold, warm), False: (cold, warm)}."""
    times: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
    for i in range(repeats):
        for verify in (True, False):
            with StoredTrace(path) as tr:
                if not verify:
                    tr._lm[0].verified = False  # overrides the cached property
                drop_cache(path)
                cold, warm = times[verify]
                cold.append(timed(lambda tr=tr, i=i: op(tr, i)))
                warm.append(timed(lambda tr=tr, i=i: op(tr, i)))
    return {v: (statistics.median(c), statistics.median(w)) for v, (c, w) in times.items()}


def bench_files(root: Path, shape: dict, repeats: int) -> None:
    print(f"synthetic trace {shape} ...", flush=True)
    t0 = time.perf_counter()
    trace = make_synthetic_trace(**shape, seed=1)
    print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)
    lm_raw = trace.lm_attention.nbytes
    raw = lm_raw + sum(v.nbytes for v in trace.vision_attention or [])
    n_answer = shape["answer_len"]
    answers = [trace.tokens.answer_row(k) for k in range(n_answer)]
    image = trace.tokens.image_positions

    with open_store(root / "files", writable=True) as store:
        print("lossless (default)")
        t0 = time.perf_counter()
        tid = store.add(trace)
        seconds = time.perf_counter() - t0
        path = store.layout.trace_path(tid)
        with StoredTrace(path) as tr:
            lm_stored = tr._f["lm_attention"].id.get_storage_size()
        report("LM attention: raw fp16 / stored", lm_raw / lm_stored, "x", 2.4, higher=True)
        report("whole file (LM + vision + rest): raw / file", raw / path.stat().st_size, "x")
        report("add() write speed (raw attention bytes)", raw / seconds / 1e6, "MB/s", 300, True)

        opens = []
        for _ in range(max(20, repeats)):
            t0 = time.perf_counter()
            with store.open(tid) as tr:
                _ = (tr.info.model_id, tr.num_layers, tr.num_heads, tr.vision_shape)
            opens.append((time.perf_counter() - t0) * 1000)
        report("open trace + read metadata (warm)", statistics.median(opens), "ms", 3)
        cold_opens = []
        for _ in range(max(9, repeats)):
            drop_cache(path)
            cold_opens.append(timed(lambda: store.open(tid).close()))
        report("open trace + read metadata (cold file)", statistics.median(cold_opens), "ms", 3)

        n_layers, n_heads = shape["num_layers"], shape["num_heads"]

        def heat(tr: StoredTrace, i: int):
            return tr.attention((7 * i) % n_layers, (5 * i) % n_heads)

        def row(tr: StoredTrace, i: int):
            return tr.answer_attention((11 * i) % n_answer)

        def block(tr: StoredTrace, i: int):
            return tr.attention_block(answers, image)

        for label, op, target in (
            ("one (layer, head) heatmap", heat, 20),
            ("one answer token, all layers/heads", row, 30),
            (f"answer x image block [L,H,{n_answer},{len(image)}]", block, 300),
        ):
            medians = cold_and_warm(path, op, repeats)
            (cold, warm), (cold_off, warm_off) = medians[True], medians[False]
            report(f"{label} (cold)", cold, "ms", target)
            report(f"{label} (warm)", warm, "ms")
            report(f"{label} (cold, checksums not verified)", cold_off, "ms")
            report(f"{label} (warm, checksums not verified)", warm_off, "ms")

        with store.open(tid) as tr:
            assert np.array_equal(tr.read().lm_attention, trace.lm_attention), "lossless broken"

        ref = trace.lm_attention.astype(np.float32)
        for lossy, label in (
            ("sparse", "sparse: drop < 1e-4"),
            ("log8", "log8: 8-bit log per row"),
        ):
            print(label)
            t0 = time.perf_counter()
            lid = store.add(replace(trace, info=replace(trace.info, trace_id="")), lossy=lossy)
            seconds = time.perf_counter() - t0
            lpath = store.layout.trace_path(lid)
            with StoredTrace(lpath) as tr:
                stored = tr._f["lm_attention"].id.get_storage_size()
                if "lm_attention_row_max" in tr._f:
                    stored += tr._f["lm_attention_row_max"].id.get_storage_size()
                got = np.stack(
                    [tr.attention_rows(slice(None), [layer])[0] for layer in range(n_layers)]
                )
            report(f"{lossy}: LM raw fp16 / stored", lm_raw / stored, "x")
            report(f"{lossy}: add() write speed", raw / seconds / 1e6, "MB/s")
            err = np.abs(got - ref)
            if lossy == "sparse":
                report("sparse: max abs error (bound 1e-4)", float(err.max()), "", SPARSE_THRESHOLD)
                lost = (ref * (ref < SPARSE_THRESHOLD)).sum(-1).max()
                report("sparse: max row mass lost", float(lost) * 100, "%")
            else:
                row_max = ref.max(-1, keepdims=True)
                big = ref >= LOG8_ZERO_BELOW * row_max
                rel = (err[big] / ref[big]).max()
                report(
                    "log8: max relative error (bound %)",
                    float(rel) * 100,
                    "%",
                    LOG8_RELATIVE_ERROR * 100,
                )
                report(
                    "log8: max abs error below floor (x row max)",
                    float((err / row_max)[~big].max(initial=0)),
                    "",
                )
            store.delete(lid)
            del got, err


WORDS = [
    a + b
    for a in ("ba", "ko", "mi", "ru", "te", "lo", "shi", "va", "de", "pu")
    for b in ("ran", "lek", "mot", "sin", "dar", "pel", "gus", "tov", "fim", "zer", "nak", "qui")
]


def bench_index(root: Path, n_rows: int, repeats: int) -> None:
    print(f"index of {n_rows:,} traces")
    rng = np.random.default_rng(0)
    models = [f"org/model-{i}" for i in range(8)]
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    vocab = np.array([*WORDS, "red", "green", "blue", "car", "dog", "what", "colour", "left"])
    with open_store(root / "index", writable=True) as store:
        index = store._index
        t0 = time.perf_counter()
        with index.begin() as conn:
            for lo in range(0, n_rows, 10_000):
                batch, tok_rows = [], []
                for i in range(lo, min(n_rows, lo + 10_000)):
                    tid = f"{i:032x}"
                    prompt = " ".join(rng.choice(vocab, rng.integers(6, 16)))
                    answer_words = list(rng.choice(vocab, rng.integers(2, 7)))
                    when = start + dt.timedelta(seconds=int(rng.integers(0, 365 * 86400)))
                    batch.append(
                        dict(
                            trace_id=tid,
                            model_id=models[i % 8],
                            model_revision="r1",
                            prompt=prompt,
                            answer=" ".join(answer_words),
                            image_name=f"img{i}.png",
                            image_sha256="0" * 64,
                            created_at=when.isoformat(timespec="microseconds"),
                            adapter="llava",
                            reference_answer=None,
                            correct=bool(i % 3),
                            precision="lossless",
                            num_layers=32,
                            num_heads=32,
                            prompt_length=636,
                            answer_length=len(answer_words),
                            file_size=0,
                            file_checksum="-",
                            info_json=json.dumps(
                                {
                                    "trace_id": tid,
                                    "model_id": models[i % 8],
                                    "model_revision": "r1",
                                    "prompt": prompt,
                                    "answer": " ".join(answer_words),
                                    "image_name": f"img{i}.png",
                                    "image_sha256": "0" * 64,
                                    "created_at": when.isoformat(),
                                }
                            ),
                        )
                    )
                    tok_rows += [
                        dict(trace_id=tid, position=k, token=w) for k, w in enumerate(answer_words)
                    ]
                conn.execute(traces.insert(), batch)
                conn.execute(answer_tokens.insert(), tok_rows)
            if index.has_fts:
                conn.exec_driver_sql(
                    "INSERT INTO traces_fts(rowid, prompt, answer) "
                    "SELECT rowid, prompt, answer FROM traces"
                )
            conn.exec_driver_sql("ANALYZE") if index.is_sqlite else None
        print(f"  built in {time.perf_counter() - t0:.1f} s (FTS5 trigram: {index.has_fts})")

        def median_ms(make_query: Callable[[int], TraceQuery]) -> tuple[float, int]:
            times, total = [], 0
            for i in range(repeats * 4):
                q = make_query(i)
                t0 = time.perf_counter()
                page = store.query(q)
                times.append((time.perf_counter() - t0) * 1000)
                total += page.total
            return statistics.median(times), total // (repeats * 4)

        def month(i: int) -> tuple[str, str]:
            a = start + dt.timedelta(days=30 * (i % 11))
            return a.isoformat(), (a + dt.timedelta(days=30)).isoformat()

        ms, hits = median_ms(
            lambda i: TraceQuery(
                model=models[i % 8],
                prompt_contains=WORDS[i % len(WORDS)],
                created_after=month(i)[0],
                created_before=month(i)[1],
            )
        )
        report(f"filter model + prompt text + month (~{hits} hits)", ms, "ms", 5)
        ms, hits = median_ms(lambda i: TraceQuery(prompt_contains=WORDS[(3 * i) % len(WORDS)]))
        report(f"prompt-text-only search (~{hits:,} hits)", ms, "ms", 100)
        ms, hits = median_ms(
            lambda i: TraceQuery(text=WORDS[(5 * i) % len(WORDS)][:3] + WORDS[i % 7][3:])
        )
        report(f"prompt-or-answer text search (~{hits:,} hits)", ms, "ms", 100)
        ms, hits = median_ms(
            lambda i: TraceQuery(answer_token=["red", "green", "blue", "car"][i % 4])
        )
        report(f"answer token = word (~{hits:,} hits)", ms, "ms")
        ms, hits = median_ms(
            lambda i: TraceQuery(
                model=models[i % 8], created_after=month(i)[0], created_before=month(i)[1]
            )
        )
        report(f"model + month, newest first (~{hits:,} hits)", ms, "ms", 5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes and a 10k index")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temp dir, removed)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--only", choices=("files", "index"), help="run only the trace-file or the index part"
    )
    args = parser.parse_args()
    if args.quick:
        shape = dict(
            num_layers=8,
            num_heads=8,
            prompt_len=236,
            answer_len=20,
            grid=(12, 16),
            image_start=20,
            vision_layers=4,
            vision_heads=4,
        )
        n_rows = 10_000
    else:  # LLaVA-1.5-7B: 32x32 LM, 576 image tokens, CLIP-L/336 tower (24 layers, 16 heads)
        shape = dict(
            num_layers=32,
            num_heads=32,
            prompt_len=636,
            answer_len=64,
            grid=(24, 24),
            image_start=35,
            vision_layers=24,
            vision_heads=16,
        )
        n_rows = 100_000
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.only != "index":
            bench_files(Path(tmp), shape, args.repeats)
        if args.only != "files":
            bench_index(Path(tmp), n_rows, args.repeats)
    print("\n| figure | value | unit | vs target |\n|---|---:|---|---|")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
