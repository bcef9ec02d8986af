"""Subprocess bodies for the reliability tests (run as ``python -m tests.store._workers``)."""

from __future__ import annotations

import hashlib
import resource
import signal
import sys
import time

import numpy as np

from store import StoreFull, TraceQuery, open_store
from store.synthetic import make_synthetic_trace


def digest(att: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(att).tobytes()).hexdigest()


def writer(directory: str, count: int, layers: int) -> None:
    """Add traces forever (or ``count``), each carrying a digest of its attention."""
    with open_store(directory, writable=True) as st:
        print("ready", flush=True)
        i = 0
        while count < 0 or i < count:
            tr = make_synthetic_trace(
                num_layers=layers, num_heads=4, prompt_len=80, answer_len=8, grid=(6, 8), seed=i
            )
            tr.info.extra["digest"] = digest(tr.lm_attention)
            st.add(tr)
            i += 1


def reader(directory: str, seconds: float) -> None:
    """List and read whatever is visible; any error or torn read fails the process."""
    deadline = time.monotonic() + seconds
    checked = 0
    with open_store(directory) as st:
        while time.monotonic() < deadline:
            for info in st.query(TraceQuery(limit=5)).items:
                with st.open(info.trace_id) as tr:
                    att = tr.read().lm_attention
                    assert digest(att) == info.extra["digest"], f"torn read {info.trace_id}"
                    tr.answer_attention(0)
                checked += 1
    print(f"checked {checked}", flush=True)


def fill_disk(directory: str, limit: int) -> None:
    """Add a trace bigger than the file-size limit: must raise StoreFull, leave nothing."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    with open_store(directory, writable=True) as st:
        big = make_synthetic_trace(
            num_layers=8,
            num_heads=8,
            prompt_len=200,
            answer_len=8,
            grid=(8, 8),
            seed=99,
            vision_layers=0,
        )
        try:
            st.add(big)
        except StoreFull as exc:
            print(f"StoreFull: {exc}", flush=True)
            return
    print("added?!", flush=True)
    sys.exit(1)


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    {
        "writer": lambda: writer(args[0], int(args[1]), int(args[2])),
        "reader": lambda: reader(args[0], float(args[1])),
        "fill_disk": lambda: fill_disk(args[0], int(args[1])),
    }[name]()
