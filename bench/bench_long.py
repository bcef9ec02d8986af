"""Benchmark recording policies on a 7B-shaped LLaVA-NeXT-length trace.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_long.py            # ~10 minutes on 2 cores
    OMP_WAIT_POLICY=PASSIVE python bench/bench_long.py --quick    # 8 layers, ~2 minutes

The trace: 32 layers x 32 heads (LLaVA-NeXT-7B's Vicuna/Mistral LM), one 672x672 image as
LLaVA-NeXT's anyres 2x2 packs it (a 24x24 global view, then a 48x48 grid over four crops with
a newline token after each row: 2,928 image tokens), 35 template tokens before it, 17 after,
20 answer tokens: T = 3,000. Recorded under each policy, lossless and log8, it reports bytes
on disk, write speed (raw fp16 attention bytes / add() time), and cold reads: one head's
heatmap (its [R, T] kept rows) and one answer token across all layers and heads.

``full`` is 18 GB raw at 32 layers: it is recorded at ``--full-layers`` layers (default 2)
and its size and write time are scaled to 32 layers (said so in the figure's name); its
reads are measured as they are (a heatmap does not depend on the layer count, one token's
row across all layers is scaled too). Vision-tower attention (5 tiles of 577 tokens, CLIP-L
24 x 16) is measured once on its own: no policy changes it.

Cold reads drop the file from the page cache (posix_fadvise DONTNEED) and open a new reader
before each call; each figure is the median of ``--repeats`` calls (all calls are listed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_store import ROWS, drop_cache, report, timed
from store import RecordingPolicy, StoredTrace, Trace, open_store
from store.synthetic import make_synthetic_trace

LAYERS, HEADS, ANSWER = 32, 32, 20
NEXT_IMAGE = dict(grid=(24, 24), crops=(2, 2), row_breaks=True, image_start=35)
IMAGE_TOKENS = 24 * 24 + 48 * 48 + 48
PROMPT = 35 + IMAGE_TOKENS + 17
TARGETS = {"bytes": 150, "heatmap": 20, "answer": 30}  # MB (answer_rows), ms, ms


def make(policy: RecordingPolicy, layers: int, vision_layers: int = 0) -> Trace:
    return make_synthetic_trace(
        num_layers=layers,
        num_heads=HEADS,
        prompt_len=PROMPT,
        answer_len=ANSWER,
        vision_layers=vision_layers,
        vision_heads=16,
        with_relevancy=False,
        policy=policy,
        seed=3,
        **NEXT_IMAGE,
    )


def cold_ms(path: Path, read, repeats: int) -> tuple[float, list[float]]:
    """Median and every time of ``read(trace)`` on a freshly opened, uncached file."""
    times = []
    for _ in range(repeats):
        with StoredTrace(path) as tr:
            drop_cache(path)
            times.append(timed(lambda tr=tr: read(tr)))
    return statistics.median(times), times


def bench_policy(
    store, policy: RecordingPolicy, layers: int, total_layers: int, repeats: int
) -> None:
    """Record at ``layers`` layers; sizes, write time and all-layer reads scaled to
    ``total_layers``."""
    t0 = time.perf_counter()
    trace = make(policy, layers)
    print(f"{policy.value}: {layers} layers, generated in {time.perf_counter() - t0:.1f} s")
    scale = total_layers / layers
    note = f", measured at {layers} layers x{scale:g}" if scale != 1 else ""
    raw = trace.lm_attention.nbytes
    rows = trace.lm_rows if trace.lm_rows is not None else slice(None)  # the heatmap's rows
    for lossy in ("lossless", "log8"):
        if lossy == "log8" and scale != 1:
            continue  # log8 of the full tensor: minutes per layer on 2 cores; see the README
        name = f"{policy.value}, {lossy}"
        copy = replace(trace, info=replace(trace.info, trace_id=""))
        t0 = time.perf_counter()
        trace_id = store.add(copy, lossy=lossy == "log8")
        seconds = time.perf_counter() - t0
        path = store.layout.trace_path(trace_id)
        size = path.stat().st_size * scale / 1e6
        target = TARGETS["bytes"] if policy is RecordingPolicy.ANSWER_ROWS else None
        report(f"{name}: file on disk{note}", size, "MB", target)
        report(f"{name}: raw fp16 LM attention{note}", raw * scale / 1e6, "MB")
        report(f"{name}: add() write speed", raw / seconds / 1e6, "MB/s")
        ms, runs = cold_ms(path, lambda tr: tr.lm_attention[7 % layers, 5, rows], repeats)
        label = f"{name}: one head's heatmap [R, T] (cold; {_runs(runs)})"
        report(label, ms, "ms", TARGETS["heatmap"])
        ms, runs = cold_ms(path, lambda tr: tr.answer_attention(ANSWER // 2), repeats)
        label = f"{name}: one answer token, all layers/heads (cold{note}; {_runs(runs)})"
        report(label, ms * scale, "ms", TARGETS["answer"])
        store.delete(trace_id)


def bench_vision(store, repeats: int) -> None:
    """The vision tower's attention on its own: the same under every policy."""
    trace = make(RecordingPolicy.ANSWER_ROWS, 1, vision_layers=24)
    raw = sum(v.nbytes for v in trace.vision_attention)
    with_vision = store.add(trace)
    without = store.add(
        replace(trace, info=replace(trace.info, trace_id=""), vision_attention=None)
    )
    size = store.layout.trace_path(with_vision).stat().st_size
    size -= store.layout.trace_path(without).stat().st_size
    report("vision attention, 5 x [24, 16, 577, 577]: raw fp16", raw / 1e6, "MB")
    report("vision attention: on disk (lossless)", size / 1e6, "MB")
    path = store.layout.trace_path(with_vision)
    ms, runs = cold_ms(path, lambda tr: tr.vision_attention_layer(12, sequence=3), repeats)
    report(f"vision: one layer of one tile [16, 577, 577] (cold; {_runs(runs)})", ms, "ms")
    store.delete(with_vision)
    store.delete(without)


def _runs(times: list[float]) -> str:
    return " / ".join(f"{t:.1f}" for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="8 layers; no vision tower")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temp dir, removed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-layers", type=int, default=2, help="layers of the full trace")
    args = parser.parse_args()
    layers = 8 if args.quick else LAYERS
    print(f"T = {PROMPT + ANSWER} ({IMAGE_TOKENS} image tokens), {layers} x {HEADS} LM heads")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, open_store(tmp, writable=True) as st:
        for policy in (RecordingPolicy.ANSWER_ROWS, RecordingPolicy.TEXT_ROWS):
            bench_policy(st, policy, layers, layers, args.repeats)
        full_layers = min(args.full_layers, layers)
        bench_policy(st, RecordingPolicy.FULL, full_layers, layers, args.repeats)
        if not args.quick:
            bench_vision(st, args.repeats)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nload average at the end (1, 5, 15 min): {load} on {os.cpu_count()} cores")
    print("\n| figure | value | unit | vs target |\n|---|---:|---|---|")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
