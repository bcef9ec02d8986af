"""Benchmark: time from opening a stored trace to its first heatmap, in real Chromium.

Builds a demo-sized synthetic store (or uses ``--store``), starts the real dashboard server,
and for each trace loads ``/attention?trace=ID`` in a fresh browser tab, timing navigation
start to the first per-head heatmap image being decoded and visible. The first open of each
trace is cold (nothing cached in the server); a second open of the same trace is warm.

    python bench/bench_dashboard.py [--store DIR] [--traces 5] [--json out.json]

Target: <= 1 s to the first heatmap on the demo store.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store import TraceQuery, open_store  # noqa: E402
from store.synthetic import make_synthetic_trace  # noqa: E402
from tests.dashboard.browser import chromium, running_dashboard  # noqa: E402

HEATMAP = ".st-key-heatmaps img"
TARGET_S = 1.0


def build_store(directory: Path, traces: int) -> None:
    """Demo-model-sized traces: 8 layers x 8 heads, 12x12 patches, ~200-token sequences."""
    with open_store(directory, mode="a") as store:
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


def warm_up(context, site: str) -> None:
    """Server start-up and the first download of the app's JavaScript are not part of
    opening a trace: a user has the dashboard open (or cached) already."""
    page = context.new_page()
    try:
        page.goto(site)
        page.get_by_test_id("stDataFrame").wait_for(timeout=60_000)
    finally:
        page.close()


def time_to_heatmap(context, url: str) -> dict[str, float]:
    """Seconds from navigation start to the page title (app shell up) and to the first
    heatmap image, fully decoded."""
    page = context.new_page()
    try:
        started = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.get_by_role("heading", name="Raw attention").wait_for(timeout=60_000)
        shell = time.perf_counter() - started
        page.wait_for_function(
            f"""() => {{ const img = document.querySelector({json.dumps(HEATMAP)});
                       return img && img.complete && img.naturalWidth > 0; }}""",
            timeout=60_000,
            polling="raf",
        )
        return {"shell": shell, "heatmap": time.perf_counter() - started}
    finally:
        page.close()


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    heat = [r["heatmap"] for r in runs]
    return {
        "heatmap_median": statistics.median(heat),
        "heatmap_max": max(heat),
        "shell_median": statistics.median(r["shell"] for r in runs),
        "shell_to_heatmap_median": statistics.median(r["heatmap"] - r["shell"] for r in runs),
    }


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
        with open_store(directory, mode="r") as store:
            ids = [i.trace_id for i in store.query(TraceQuery(limit=args.traces)).items]
        with running_dashboard(directory) as site, chromium() as browser:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            warm_up(context, site)
            cold = [time_to_heatmap(context, f"{site}/attention?trace={t}") for t in ids]
            warm = [time_to_heatmap(context, f"{site}/attention?trace={t}") for t in ids]
            context.close()
    result = {
        "traces": len(ids),
        "cold_trace_s": summary(cold),
        "warm_trace_s": summary(warm),
        "target_s": TARGET_S,
        "meets_target": summary(cold)["heatmap_median"] <= TARGET_S,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
