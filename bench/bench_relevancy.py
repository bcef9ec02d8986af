"""Relevancy: our recorder vs the seed tool's algorithm, side by side in one process.

Both produce every answer token's maps for the same model and input; the script checks that
the modes both define the same way (llm, vision, all) agree and prints wall time, peak extra memory
(resident set above the pre-run level, sampled every 2 ms) and the ratios.

    python bench/bench_relevancy.py [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.seed_relevancy import seed_relevancy
from engine.adapters import adapter_for
from engine.demo.architecture import MID_SIZES, build_model, build_processor, build_tokenizer
from engine.demo.world import ask, make_scene
from engine.inputs import load_image
from engine.loading import LoadedModel, load_model
from engine.recorder import RecordOptions, record
from store.schema import GenerationSettings

CHECKPOINT = Path(__file__).resolve().parents[1] / "engine" / "demo" / "checkpoint"


class PeakMemory:
    """Peak resident memory above the level at entry, from /proc (covers torch's allocator)."""

    def __enter__(self):
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def mid_size_model() -> LoadedModel:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, MID_SIZES)
    model = build_model(tokenizer, MID_SIZES)
    model.set_attn_implementation("eager")
    model.eval().requires_grad_(False)
    return LoadedModel(model, processor, adapter_for(model, processor), "mid-size", "random")


def compare(name: str, loaded: LoadedModel, max_new_tokens: int) -> dict:
    scene = make_scene(42)
    question = ask(scene, "colour", random.Random(0))
    image = load_image(scene.image, "scene.png")
    options = RecordOptions(GenerationSettings(max_new_tokens=max_new_tokens))
    stage_ends: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if done == total:
            stage_ends[stage] = time.perf_counter()

    with PeakMemory() as ours_cost:
        trace = record(loaded, image, question.text, options, progress=progress)
    answer_length = trace.tokens.answer_length
    inputs = loaded.adapter.build_inputs([image], question.text)
    seed_timings: dict[str, float] = {}
    with PeakMemory() as seed_cost:
        sequence, seed_maps = seed_relevancy(
            loaded.model, loaded.adapter, dict(inputs), answer_length, seed_timings
        )
    assert np.array_equal(sequence, trace.tokens.ids), "the two runs generated different answers"
    difference = max(
        float(np.abs(trace.relevancy.map(ours) - seed_maps[theirs]).max())
        for ours, theirs in (("llm", "llama"), ("vision", "vit"), ("all", "all"))
    )
    # Fixed part (generate, and our teacher-forced forward) vs the part paid per answer token.
    ours_fixed = stage_ends["forward"] - ours_cost.start
    ours_token = (stage_ends["relevancy"] - stage_ends["forward"]) / answer_length
    seed_token = (seed_cost.seconds - seed_timings["generate_s"]) / answer_length
    return {
        "config": name,
        "ours_fixed_s": ours_fixed,
        "seed_fixed_s": seed_timings["generate_s"],
        "ours_token_s": ours_token,
        "seed_token_s": seed_token,
        "tokens": f"{trace.tokens.prompt_length}+{answer_length}",
        "ours_s": ours_cost.seconds,
        "seed_s": seed_cost.seconds,
        "speedup": seed_cost.seconds / ours_cost.seconds,
        "ours_mib": ours_cost.mib,
        "seed_mib": seed_cost.mib,
        "memory_ratio": seed_cost.mib / max(ours_cost.mib, 1.0),
        "max_diff": difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo model only")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = [compare("demo (1.7M params)", load_model(str(CHECKPOINT)), 8)]
    if not args.quick:
        rows.append(compare("mid-size (73M params, 576 image tokens)", mid_size_model(), 16))
    header = (
        f"{'config':42} {'prompt+answer':>13} {'ours s':>8} {'seed s':>8} {'speedup':>8} "
        f"{'ours MiB':>9} {'seed MiB':>9} {'mem ratio':>9} {'max |diff|':>10}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['config']:42} {row['tokens']:>13} {row['ours_s']:8.2f} {row['seed_s']:8.2f} "
            f"{row['speedup']:7.2f}x {row['ours_mib']:9.0f} {row['seed_mib']:9.0f} "
            f"{row['memory_ratio']:8.2f}x {row['max_diff']:10.2e}"
        )
    print(
        f"\n{'config':42} {'fixed s: ours':>13} {'seed':>6} {'per token s: ours':>17} "
        f"{'seed':>6} {'ratio as answers grow':>22}"
    )
    for row in rows:
        print(
            f"{row['config']:42} {row['ours_fixed_s']:13.2f} {row['seed_fixed_s']:6.2f} "
            f"{row['ours_token_s']:17.3f} {row['seed_token_s']:6.3f} "
            f"{row['seed_token_s'] / row['ours_token_s']:21.2f}x"
        )
    worst = max(row["max_diff"] for row in rows)
    print(f"maps agree within {worst:.1e} (target 1e-4): {'OK' if worst <= 1e-4 else 'FAIL'}")


if __name__ == "__main__":
    main()
