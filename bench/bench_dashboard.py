"""Benchmark: opening a stored trace to its first heatmap, in real Chromium, three ways.

* **in-app** (the target): the dashboard is already open on Browse with the trace selected;
  time from clicking its "Raw attention" link (client-side navigation, no page load) to the
  first per-head heatmap image decoded and visible. This is what a user waits for.
* **cold boot**: a fresh tab loading ``/attention?trace=ID``: Streamlit's frontend boots
  (JavaScript, websocket) before the app runs, so this is dominated by the framework.
* **server path**: the same work without a browser: open the trace, read the slices, draw
  the per-head overlays and encode them; the part this project's code controls.

Each trace is opened twice: the first open is cold (nothing of it cached in the server),
the second warm. The machine's load average is printed too: on a shared machine the
browser, the server and other jobs compete for the same cores.

    python bench/bench_dashboard.py [--store DIR] [--traces 5] [--json out.json]

Target: <= 1 s in-app to the first heatmap on the demo store (cold open, median).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from dashboard.components import analysis, images, overlay, stitch  # noqa: E402
from store import TraceQuery, open_store  # noqa: E402
from store.synthetic import make_synthetic_trace  # noqa: E402
from tests.dashboard.browser import chromium, running_dashboard  # noqa: E402

HEATMAP = ".st-key-heatmaps [data-testid='stColumn'] img"  # the first per-head map
TARGET_S = 1.0
HEADS_SHOWN = 8


def build_store(directory: Path, traces: int) -> None:
    """Demo-model-sized traces: 8 layers x 8 heads, 12x12 patches, ~200-token sequences."""
    with open_store(directory, writable=True) as store:
        for seed in range(traces):
            store.add(
                make_synthetic_trace(
                    num_layers=8,
                    num_heads=8,
                    prompt_len=180,
                    answer_len=16,
                    grid=(12, 12),
                    image_start=5,
                    vision_layers=4,
                    vision_heads=4,
                    seed=seed,
                    patch_px=14,
                )
            )


def server_path(directory: Path, trace_id: str) -> dict[str, float]:
    """Seconds per step of the first-heatmap code path, as the Raw attention page runs it."""
    laps: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        now = time.perf_counter()
        laps[name] = now - started
        started = now

    with open_store(directory) as store:
        trace = store.open(trace_id)
        tokens, geometry, summaries = trace.tokens, trace.image, trace.summaries
        lap("open")
        layer = int(np.argmax(summaries.head_image_attention.mean(axis=1)))
        rows = trace.attention_rows([tokens.answer_row(0)], layers=[layer])[0][:, 0]
        lap("read_slices")
        positions = tokens.image_positions
        heads = analysis.rank_heads(analysis.image_share(rows, positions))[:HEADS_SHOWN]
        maps = [
            analysis.spread(rows[h], geometry.token_patches, geometry.num_patches) for h in heads
        ]
        scale = overlay.Scale.of(np.stack(maps), "attention")
        view = stitch.View(0)
        base = stitch.frame(geometry, view)
        pictures = [
            overlay.overlay(
                base.pixels,
                stitch.field(geometry, values, view, base.pixels.shape[:2]),
                overlay.OverlayStyle(),
                scale,
            )
            for values in maps
        ]
        lap("overlays")
        for picture in pictures:
            images.data_url(picture, "JPEG")
        lap("encode")
        trace.close()
    laps["total"] = sum(laps.values())
    return laps


def _heatmap_decoded(page, started: float) -> float:
    page.wait_for_function(
        f"""() => {{ const img = document.querySelector({json.dumps(HEATMAP)});
                   return img && img.complete && img.naturalWidth > 0; }}""",
        timeout=60_000,
        polling="raf",
    )
    return time.perf_counter() - started


def in_app(context, site: str, trace_id: str) -> dict[str, float]:
    """Browse is open with the trace selected (untimed); click its "Raw attention" link."""
    page = context.new_page()
    try:
        page.goto(f"{site}/?trace={trace_id}")
        link = page.get_by_test_id("stMain").get_by_role("link", name="Raw attention")
        link.wait_for(timeout=60_000)
        started = time.perf_counter()
        link.click()
        page.get_by_role("heading", name="Raw attention").wait_for(timeout=60_000)
        shell = time.perf_counter() - started
        return {"shell": shell, "heatmap": _heatmap_decoded(page, started)}
    finally:
        page.close()


def cold_boot(context, site: str, trace_id: str) -> dict[str, float]:
    """A fresh tab on ``/attention?trace=ID``: the frontend boots, then the app runs."""
    page = context.new_page()
    try:
        started = time.perf_counter()
        page.goto(f"{site}/attention?trace={trace_id}", wait_until="commit")
        page.get_by_role("heading", name="Raw attention").wait_for(timeout=60_000)
        shell = time.perf_counter() - started
        return {"shell": shell, "heatmap": _heatmap_decoded(page, started)}
    finally:
        page.close()


def median_of(runs: list[dict[str, float]], field: str) -> float:
    return statistics.median(r[field] for r in runs)


def opened_twice(
    measure: Callable[[str], dict[str, float]], ids: list[str]
) -> dict[str, list[dict[str, float]]]:
    cold = [measure(t) for t in ids]
    return {"cold": cold, "warm": [measure(t) for t in ids]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="existing store (default: build a demo one)")
    parser.add_argument("--traces", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.store or Path(scratch) / "store"
        if args.store is None:
            build_store(directory, args.traces)
        with open_store(directory) as store:
            ids = [i.trace_id for i in store.query(TraceQuery(limit=args.traces)).items]
        # Two halves so each browser run opens traces the server has never drawn.
        half = max(1, len(ids) // 2)
        server = [server_path(directory, t) for t in ids]
        with running_dashboard(directory) as site, chromium() as browser:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            in_app(context, site, ids[-1])  # first visit downloads the page's JavaScript
            app_runs = opened_twice(lambda t: in_app(context, site, t), ids[:half])
            boot_runs = opened_twice(lambda t: cold_boot(context, site, t), ids[half:])
            context.close()
    figures = {
        "in_app_s": {k: median_of(v, "heatmap") for k, v in app_runs.items()},
        "in_app_shell_s": {k: median_of(v, "shell") for k, v in app_runs.items()},
        "cold_boot_s": {k: median_of(v, "heatmap") for k, v in boot_runs.items()},
        "cold_boot_shell_s": {k: median_of(v, "shell") for k, v in boot_runs.items()},
        "server_path_s": {step: statistics.median(s[step] for s in server) for step in server[0]},
    }
    result = {
        "traces": len(ids),
        **figures,
        "load_average_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "target_s": TARGET_S,
        "meets_target": figures["in_app_s"]["cold"] <= TARGET_S,
    }
    print(f"{'median seconds to first heatmap':34s} {'cold':>7s} {'warm':>7s}")
    for name in ("in_app", "cold_boot"):
        row = figures[f"{name}_s"]
        print(f"{name.replace('_', ' '):34s} {row['cold']:7.3f} {row['warm']:7.3f}")
    steps = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in figures["server_path_s"].items())
    print(f"server path (no browser): {steps}")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
