"""Hostile `lvlm-interpret report` arguments found in review: each is one line, exit code 2,
and nothing is replaced (a device or pipe at --out stays what it was)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "report", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def one_line(done: subprocess.CompletedProcess, message: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr


def test_force_never_replaces_a_pipe_or_device(demo_store, tmp_path):
    """--force renamed the report over whatever --out named: as root, ``--out /dev/null
    --force`` turned the device into a regular file. A FIFO stands in for the device here."""
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    done = cli(demo_store.main, "--store", demo_store.directory, "--out", fifo, "--force")
    one_line(done, "is not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe.html"]


def test_out_names_no_file_or_too_long_a_name(demo_store, tmp_path):
    """An empty --out and a name the file system refuses were tracebacks."""
    one_line(cli(demo_store.main, "--store", demo_store.directory, "--out", ""), "names no file")
    long = tmp_path / ("x" * 300 + ".html")
    one_line(cli(demo_store.main, "--store", demo_store.directory, "--out", long), "too long")
    assert list(tmp_path.iterdir()) == []


def test_tag_filter_follows_the_store_tag_rules(demo_store, tmp_path):
    """An empty tag or one with control characters matched nothing and still wrote a report;
    the store refuses such tags everywhere else."""
    for tag in ("", "a\x07b", "x" * 201):
        done = cli("--tag", tag, "--store", demo_store.directory, "--out", tmp_path / "r.html")
        one_line(done, "invalid tag")
    assert list(tmp_path.iterdir()) == []
