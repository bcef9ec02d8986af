"""Ctrl-C waits for the trace being written: an interrupt raised inside HDF5's callbacks is
swallowed by h5py ("Exception ignored ..."), the write goes on in a broken state and the
process can crash at exit. So while a trace is written and indexed, SIGINT is only noted, and
handed to the handler that was in place once the add is complete."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Inside, SIGINT is held back; after a clean exit it reaches the previous handler (the
    default one raises KeyboardInterrupt). Signal handlers belong to the main thread, so
    elsewhere this does nothing (a worker thread never receives SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[FrameType | None] = []
    previous = signal.signal(signal.SIGINT, lambda _signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if not held:
        return
    if callable(previous):
        previous(signal.SIGINT, held[0])
    elif previous != signal.SIG_IGN:  # SIG_DFL, or a handler installed outside Python
        raise KeyboardInterrupt
