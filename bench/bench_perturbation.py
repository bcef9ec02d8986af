"""Benchmark deletion + insertion on the bundled demo model: batched vs one forward per image.

Records ``--count`` demo questions (``demo record``'s held-out items, no causal) into a
temporary store, then for each trace computes its occlusion map (timed: the cost per trace
and per answer token) and the deletion and insertion curves of the default maps (every
relevancy mode, attention head mean, random, and that occlusion map; ``--steps`` steps)
twice: all perturbed images of one answer token in forwards of up to ``--batch`` images, and
one forward per image (``batch=1``). Prints time per answer token for each, their ratio, the
largest difference between the two (they must agree), the processor's share (the inputs of
the same images built with one processor call per image vs one per batch), and the mean AUC
of each map (how the maps compare to random on these traces).

Run: ``python bench/bench_perturbation.py [--count 5] [--steps 16] [--batch 64] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from engine.cli.demo import _record_questions
from engine.inputs import load_image
from engine.loading import load_model
from engine.methods.occlusion import OcclusionParams, occlusion_map
from engine.methods.perturbation import (
    DELETION,
    Canvas,
    PerturbationParams,
    auc,
    chosen_maps,
    fractions,
    perturbation_curves,
)
from store import open_store

CHECKPOINT = Path(__file__).resolve().parents[1] / "engine" / "demo" / "checkpoint"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(str(CHECKPOINT))
    times = {"batched": 0.0, "one at a time": 0.0}
    inputs = {"one call per image": 0.0, "one call per batch": 0.0}
    occlusion, traces = 0.0, 0
    tokens, worst = 0, 0.0
    aucs: dict[str, dict[str, list[float]]] = {"deletion": {}, "insertion": {}}
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp), writable=True) as store:
        for trace_id in _record_questions(store, loaded, args.count, 7, None):
            trace = store.open(trace_id)
            start = time.perf_counter()
            stored = {
                "occlusion": occlusion_map(loaded, trace, OcclusionParams(batch=args.batch))[0]
            }
            occlusion += time.perf_counter() - start
            traces += 1
            batched = PerturbationParams(steps=args.steps, batch=args.batch)
            maps = chosen_maps(trace, batched, stored)
            results = {}
            for label, params in (
                ("batched", batched),
                ("one at a time", PerturbationParams(steps=args.steps, batch=1)),
            ):
                start = time.perf_counter()
                results[label] = perturbation_curves(loaded, trace, maps, params)
                times[label] += time.perf_counter() - start
            for label, seconds in processor_seconds(loaded, trace, maps, args).items():
                inputs[label] += seconds
            tokens += trace.answer_length
            x = fractions(trace.image.num_patches, args.steps)
            for mode, curves in results["batched"].items():
                for name, rows in curves.items():
                    other = results["one at a time"][mode][name]
                    worst = max(worst, float(np.abs(rows - other).max()))
                    aucs[mode].setdefault(name, []).extend(auc(x, r) for r in rows)
    images = 2 * len(maps) * (args.steps + 1)
    print(
        f"{args.count} demo traces, {tokens} answer tokens, {len(maps)} maps, "
        f"{args.steps} steps: {images} perturbed images per token, {args.threads} thread(s)"
    )
    for label, seconds in times.items():
        print(f"  {label:>14}: {seconds / tokens * 1000:8.1f} ms per answer token")
    print(f"  speed-up batched / one at a time: {times['one at a time'] / times['batched']:.2f}x")
    print(f"  largest curve difference: {worst:.2e}")
    print("  building the inputs of one token's images (processor, no forward):")
    for label, seconds in inputs.items():
        print(f"  {label:>20}: {seconds / traces * 1000:8.1f} ms per answer token")
    print(
        f"  occlusion map (G + 1 images per trace, batch {args.batch}): "
        f"{occlusion / traces:.2f} s per trace, {occlusion / tokens * 1000:.0f} ms per answer token"
    )
    print("  mean AUC over answer tokens (deletion: lower is better; insertion: higher)")
    for name in aucs["deletion"]:
        print(
            f"    {name:>30}: deletion {np.mean(aucs['deletion'][name]):.3f}  "
            f"insertion {np.mean(aucs['insertion'][name]):.3f}"
        )


def processor_seconds(loaded, trace, maps, args) -> dict[str, float]:
    """Seconds to build the inputs of the first answer token's deletion images: one processor
    call per image (what perturbation did before) vs one per batch (what it does now)."""
    canvas = Canvas(trace, 1.0)
    counts = np.rint(fractions(trace.image.num_patches, args.steps) * trace.image.num_patches)
    images = []
    for values in maps.values():
        order = np.argsort(-np.asarray(values[0], np.float64), kind="stable")
        images += canvas.steps(DELETION, order, counts.astype(int))
    names = [image.name for image in trace.image.images]
    lists = [[load_image(im, n) for im, n in zip(pics, names, strict=True)] for pics in images]
    adapter, prompt = loaded.adapter, trace.info.prompt
    start = time.perf_counter()
    for one in lists:
        adapter.build_inputs(one, prompt)
    middle = time.perf_counter()
    for first in range(0, len(lists), args.batch):
        adapter.build_batch(lists[first : first + args.batch], prompt)
    end = time.perf_counter()
    # deletion and insertion: twice as many images per token as timed here
    return {"one call per image": 2 * (middle - start), "one call per batch": 2 * (end - middle)}


if __name__ == "__main__":
    main()
