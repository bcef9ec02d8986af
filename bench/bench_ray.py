"""Benchmark ``record-dataset`` on the demo model: one process beside Ray with 2 workers.

The same shapes-world manifest (``--count`` rows, default 40) is recorded twice by the real
console command, each time into a fresh store: once in one process, once with ``--ray local
--ray-workers 2`` (a local cluster started and ended by the command). Two rates per run:

- **end to end**: rows / the command's wall time, start-up included (Python and torch
  imports, model load; for Ray also the cluster, the actors and their model loads);
- **steady**: from the first to the last trace's ``created_at`` in the store, i.e. while
  traces are being recorded, start-up left out.

On a machine with fewer cores than workers the Ray run can only be slower: its workers share
the cores that one process would use alone, and Ray adds its own processes (GCS, raylet,
Ray Data's scheduling) and a copy of every trace through the object store. The load average
is printed so a busy machine shows.

Run: ``python bench/bench_ray.py [--count 40] [--workers 2] [--no-relevancy]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.demo.world import write_manifest
from store import TraceQuery, open_store

CHECKPOINT = Path(__file__).resolve().parents[1] / "engine" / "demo" / "checkpoint"
LVLM = Path(sys.executable).with_name("lvlm-interpret")


def run(manifest: Path, store: Path, more: list[str]) -> tuple[float, float, str]:
    """(wall seconds, steady traces/min, the summary line) of one recording command."""
    args = [str(LVLM), "record-dataset", str(manifest), "--model", str(CHECKPOINT)]
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [*args, "--store", str(store), *more], env=env, capture_output=True, check=False
    )
    wall = time.perf_counter() - start
    lines = done.stderr.decode().splitlines()
    summary = next((line for line in lines if line.startswith("recorded ")), "")
    if done.returncode != 0:
        sys.exit(f"record-dataset {' '.join(more)} failed:\n" + "\n".join(lines[-20:]))
    with open_store(store) as opened:
        times = sorted(
            datetime.fromisoformat(i.created_at) for i in opened.query(TraceQuery()).items
        )
    span = (times[-1] - times[0]).total_seconds()
    return wall, (len(times) - 1) / span * 60 if span > 0 else float("nan"), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-relevancy", action="store_true")
    options = parser.parse_args()
    common = ["--no-relevancy"] if options.no_relevancy else []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        manifest = write_manifest(root / "m", count=options.count, seed=7)
        print(
            f"record-dataset, demo model, {options.count} rows, relevancy "
            f"{'off' if options.no_relevancy else 'on'}; {os.cpu_count()} cores, "
            f"load average before {os.getloadavg()[0]:.1f}"
        )
        runs = {
            "one process": run(manifest, root / "one", common),
            f"Ray, {options.workers} workers": run(
                manifest,
                root / "ray",
                [*common, "--ray", "local", "--ray-workers", str(options.workers)],
            ),
        }
    print(f"{'':18} {'wall s':>8} {'end to end /min':>16} {'steady /min':>12}")
    for name, (wall, steady, _) in runs.items():
        print(f"{name:18} {wall:8.1f} {options.count / wall * 60:16.1f} {steady:12.1f}")
    (one_wall, one_steady, _), (ray_wall, ray_steady, _) = runs.values()
    ratios = f"{one_wall / ray_wall:16.2f} {ray_steady / one_steady:12.2f}"
    print(f"{'Ray / one process':18} {'':8} {ratios}")
    for name, (*_, summary) in runs.items():
        print(f"{name}: {summary}")


if __name__ == "__main__":
    main()
