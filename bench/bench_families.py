"""Every registered family on its tiny random model: record time, stored size, and how far each
relevancy mode is from the slow float64 reference (tests/engine/families).

    python bench/bench_families.py [--families llava_next qwen2_vl ...]

Tiny models (0.05-0.13 M parameters) say nothing about a 7B model's speed; the figures show
what each family's trace holds and that every mode agrees with its definition.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "what is in the image ?"


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from engine.adapters import served_model_types
    from engine.inputs import load_image
    from engine.loading import load_model
    from engine.recorder import RecordOptions, record
    from store import GenerationSettings, RelevancyMode, open_store
    from tests.engine.families.builders import FAMILIES, build_family
    from tests.engine.families.images import noise_image
    from tests.engine.families.relevancy_reference import reference_relevancy

    served = served_model_types()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=[n for n in FAMILIES if n in served])
    args = parser.parse_args()
    torch.set_num_threads(1)
    image = load_image(noise_image(), "noise.png")
    options = RecordOptions(GenerationSettings(max_new_tokens=4))
    header = f"{'family':16} {'tiles':>5} {'patches':>7} {'T':>4} {'record s':>8} {'KiB':>6}"
    print(f"{header}  max |ours - reference| per mode")
    with (
        tempfile.TemporaryDirectory() as scratch,
        open_store(Path(scratch) / "store", writable=True) as store,
    ):
        for name in args.families:
            folder = Path(scratch) / name
            build_family(name, folder)
            loaded = load_model(str(folder))
            start = time.perf_counter()
            trace = record(loaded, image, PROMPT, options)
            seconds = time.perf_counter() - start
            trace_id = store.add(trace)
            with store.open(trace_id) as stored:
                size = os.path.getsize(stored.path) / 1024
            geometry = trace.image
            deltas = "n/a (cross-attention: tests/engine/families/test_mllama.py)"
            if geometry.key_patches is None:
                inputs = loaded.adapter.build_inputs([image], PROMPT)
                expected = reference_relevancy(loaded, inputs, trace.tokens.ids, geometry)
                deltas = "  ".join(
                    f"{mode.value} {np.abs(trace.relevancy.map(mode) - ref).max():.1e}"
                    for mode, ref in zip(RelevancyMode, expected, strict=True)
                )
            print(
                f"{name:16} {len(geometry.tiles):5} {geometry.num_patches:7} "
                f"{len(trace.tokens.ids):4} {seconds:8.2f} {size:6.0f}  {deltas}"
            )


if __name__ == "__main__":
    main()
