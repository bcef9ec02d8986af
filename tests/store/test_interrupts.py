"""Ctrl-C during an add waits for the trace: the store never holds half a trace, and the
interrupt still arrives once the trace is stored (HDF5's callbacks would swallow it)."""

from __future__ import annotations

import os
import signal

import pytest

from store import open_store
from store._interrupts import interrupts_deferred
from store.synthetic import make_synthetic_trace


@pytest.fixture(autouse=True)
def python_sigint():
    """Python's own Ctrl-C handling, as a command starts with, whatever an earlier test in this
    process left installed or blocked (these tests send themselves SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_inside_waits_for_the_end_of_the_block():
    done = False
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        done = True  # still running: the interrupt was held back
    assert done


def test_a_held_interrupt_goes_to_the_handler_that_was_in_place():
    calls = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            assert calls == []
        assert calls == [signal.SIGINT]  # e.g. record-dataset's "stop after this trace"
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_a_trace_is_written_stores_it_whole_then_interrupts(tmp_path):
    """SIGINT is sent from a timer while ``add`` runs inside HDF5's write callbacks."""
    trace = make_synthetic_trace(num_layers=16, num_heads=16, prompt_len=400, seed=3)
    previous = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        with open_store(tmp_path, writable=True) as store:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(KeyboardInterrupt):
                store.add(trace)
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    with open_store(tmp_path) as store:
        assert store.verify() == []
        with store.open(trace.info.trace_id) as stored:
            assert stored.damage() is None
