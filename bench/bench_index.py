"""The SQL index on SQLite and on PostgreSQL, side by side in one run.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_index.py              # 10,000 rows, ~2 min
    OMP_WAIT_POLICY=PASSIVE python bench/bench_index.py --rows 2000  # quicker
    python bench/bench_index.py --pg-url postgresql+psycopg://...    # an existing server

Without --pg-url a throwaway PostgreSQL 15 server is started with scripts/postgres.sh
(loopback, default settings: fsync on) and stopped at the end. Both backends get the same
synthetic traces in the same order:

- index inserts: one trace's row, tags, metrics and answer tokens per transaction (what
  ``add`` commits per trace), no HDF5 file; rows per second;
- whole ``add_new`` (small trace: HDF5 write, fsync, link, index) per second;
- Browse queries at ``--rows`` rows: the first page (newest 50 and the total), model + date +
  text, a tag, a metric range; median latency of 15 runs after one warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
sys.path.insert(0, str(REPO))

from store import Trace, TraceQuery, TraceStore, new_trace_id, open_store  # noqa: E402
from store.synthetic import make_synthetic_trace  # noqa: E402

WORDS = ("red", "blue", "green", "cross", "circle", "square", "left", "right", "top", "bottom")
MODELS = ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-v1.6-mistral-7b-hf", "demo/tiny")
QUERIES: dict[str, TraceQuery] = {
    "first page (newest 50 + total)": TraceQuery(limit=50),
    "model + date + text 'red car'": TraceQuery(
        model=MODELS[0], created_after="2026-03-01", text="red car", limit=50
    ),
    "tag 'batch-7'": TraceQuery(tag="batch-7", limit=50),
    "metric iou in [0.2, 0.3]": TraceQuery(metric_ranges={"iou": (0.2, 0.3)}, limit=50),
}


def variants(base: Trace, count: int, seed: int) -> list[Trace]:
    """``count`` traces sharing ``base``'s tensors, each with its own id, model, prompt, date,
    tags and metrics (the index sees ``count`` distinct traces)."""
    rng = random.Random(seed)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    out = []
    for i in range(count):
        words = rng.sample(WORDS, 6)
        info = replace(
            base.info,
            trace_id=new_trace_id(),
            model_id=MODELS[i % len(MODELS)],
            prompt=f"Question {i}: what is the {' '.join(words[:4])}?",
            answer=" ".join(words[4:]),
            created_at=(start + dt.timedelta(minutes=37 * i)).isoformat(),
            tags=[f"batch-{i % 50}"],
            metrics={"iou": rng.random()},
        )
        out.append(replace(base, info=info))
    return out


def insert_rows(store: TraceStore, batch: list[Trace]) -> float:
    """Index rows only (no file): seconds for the whole batch."""
    began = time.perf_counter()
    for trace in batch:
        tokens = trace.tokens
        store._index.insert(
            trace.info,
            precision="lossless",
            shape=trace.lm_attention.shape[:2],
            prompt_length=tokens.prompt_length,
            answer_tokens_text=tokens.text[tokens.prompt_length :],
            file_size=1,
            file_checksum="sha256:" + "0" * 64,
        )
    return time.perf_counter() - began


def add_whole(store: TraceStore, batch: list[Trace]) -> float:
    began = time.perf_counter()
    for trace in batch:
        store.add_new(trace)
    return time.perf_counter() - began


def latency_ms(call: Callable[[], object], runs: int = 15) -> float:
    call()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_database(server_url: str, name: str) -> str:
    import sqlalchemy as sa

    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


def run(rows: int, adds: int, pg_url: str, work: Path) -> None:
    base = make_synthetic_trace(num_layers=3, num_heads=4, prompt_len=40, answer_len=6)
    indexed = variants(base, rows, seed=1)
    whole = variants(base, adds, seed=2)
    urls = {"SQLite": None, "PostgreSQL": fresh_database(pg_url, "bench_index")}
    figures: dict[str, dict[str, float]] = {}
    for name, url in urls.items():
        print(f"{name}: {rows:,} index inserts, {adds} add_new, {len(QUERIES)} queries", flush=True)
        out = figures[name] = {}
        with open_store(work / f"{name}-rows", db_url=url, writable=True) as st:
            out["index inserts (rows/s)"] = rows / insert_rows(st, indexed)
            for label, query in QUERIES.items():
                out[f"{label} (ms)"] = latency_ms(lambda st=st, q=query: st.query(q))
        if url is not None:
            url = fresh_database(pg_url, "bench_add")
        with open_store(work / f"{name}-adds", db_url=url, writable=True) as st:
            out["whole add_new (traces/s)"] = adds / add_whole(st, whole)
    width = max(len(k) for k in figures["SQLite"])
    print(f"\n{'':{width}}  {'SQLite':>10}  {'PostgreSQL':>10}  {'PG/SQLite':>9}")
    for key in figures["SQLite"]:
        lite, pg = figures["SQLite"][key], figures["PostgreSQL"][key]
        print(f"{key:{width}}  {lite:>10,.1f}  {pg:>10,.1f}  {pg / lite:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--adds", type=int, default=100)
    parser.add_argument("--pg-url", help="a server's URL (default: start one for this run)")
    args = parser.parse_args()
    if args.pg_url is None and not (PG_BIN / "pg_ctl").exists():
        print(f"bench_index: skipped, no PostgreSQL 15 in {PG_BIN} (apt-get install postgresql)")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    script, server = REPO / "scripts" / "postgres.sh", None
    try:
        pg_url = args.pg_url
        if pg_url is None:
            server = [tempfile.mkdtemp(prefix="bench-index-pg-"), str(free_port())]
            started = subprocess.run(
                [str(script), "start", *server], check=True, capture_output=True, text=True
            )
            pg_url = started.stdout.strip()
        run(args.rows, args.adds, pg_url, work)
    finally:
        if server is not None:
            subprocess.run([str(script), "stop", *server], check=False, capture_output=True)
            shutil.rmtree(server[0], ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
