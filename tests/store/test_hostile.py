"""Hostile input and faults (issue 10, section 4): nothing is lost, nothing is read wrong,
nothing outside the store is touched, and the CLI answers with one line, never a traceback."""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import unicodedata
from pathlib import Path

import h5py
import numpy as np
import pytest

from store import (
    CorruptTrace,
    StoredTrace,
    StoreOpenError,
    TraceQuery,
    open_store,
    reindex_store,
)
from store.errors import StoreError

from .conftest import REPO

CLI = str(REPO / ".venv" / "bin" / "lvlm-interpret")
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200"}


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=ENV, timeout=120, **kw)


def _refused(done: subprocess.CompletedProcess) -> str:
    """Exit code 2 with exactly one line on stderr and no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


@pytest.fixture
def two(store, make_trace):
    """A store holding two traces; returns their ids."""
    return store.add(make_trace(seed=1)), store.add(make_trace(seed=2))


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def _blocks(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["lm_attention_blocks"][()]


# -- integrity ---------------------------------------------------------------------------------
def _reads(layer: int, head: int, row: int) -> tuple:
    """A heatmap, two heads, two rows (an index list: the h5py path), the whole trace."""
    return (
        lambda tr: tr.attention(layer, head),
        lambda tr: tr.attention_heads(layer, [head, (head + 2) % tr.num_heads]),
        lambda tr: tr.attention_rows([row, row + 2], [layer]),
        lambda tr: tr.read(),
    )


def test_every_byte_flip_in_attention_blocks_is_caught(store, make_trace):
    """48 single-byte flips inside attention blocks: every read raises CorruptTrace (one
    line for the dashboard); none returns wrong values, none raises a raw OSError."""
    tid = store.add(make_trace(seed=3))
    path = store.layout.trace_path(tid)
    pristine = path.read_bytes()
    table = _blocks(path)
    rng = np.random.default_rng(0)
    for _ in range(48):
        layer, chunk, head = (int(rng.integers(n)) for n in table.shape[:3])
        lo, hi = table[layer, chunk, head]
        _flip(path, int(rng.integers(lo, hi)))
        for read in _reads(layer, head, chunk * 16):
            with store.open(tid) as tr, pytest.raises(CorruptTrace, match="checksum"):
                read(tr)
        path.write_bytes(pristine)
    with store.open(tid) as tr:
        assert np.array_equal(tr.read().lm_attention, make_trace(seed=3).lm_attention)


def test_files_written_before_checksums_stay_readable(store, make_trace):
    """Older files have no block checksums or CRCs: they read exactly as before."""
    trace = make_trace(seed=8)
    tid = store.add(trace)
    path = store.layout.trace_path(tid)
    with h5py.File(path, "r+") as f:
        del f["lm_attention_block_xxh64"], f.attrs["info_crc32"]
        del f["tokens/text"].attrs["crc32"]
    with store.open(tid) as tr:
        assert np.array_equal(tr.read().lm_attention, trace.lm_attention)
        assert np.array_equal(tr.attention_rows([3, 9]), trace.lm_attention[:, :, [3, 9]])
        assert tr.tokens.text == trace.tokens.text


def test_flips_in_small_datasets_and_metadata_are_caught(store, make_trace):
    tid = store.add(make_trace(seed=4))
    path = store.layout.trace_path(tid)
    pristine = path.read_bytes()
    with h5py.File(path, "r") as f:
        ids = f["tokens/ids"].id.get_chunk_info(0).byte_offset
    info = pristine.find(b'"prompt"')
    for offset, read in ((ids + 3, lambda tr: tr.tokens), (info + 12, lambda tr: tr.info)):
        _flip(path, offset)
        with StoredTrace(path) as tr, pytest.raises(CorruptTrace):
            read(tr)
        path.write_bytes(pristine)


def test_a_crafted_block_table_raises_corrupt_trace_not_memory_error(store, make_trace):
    tid = store.add(make_trace(seed=5))
    path = store.layout.trace_path(tid)
    with h5py.File(path, "r+") as f:
        table = f["lm_attention_blocks"]
        table[0, 0, 0] = [0, 2**62]
    with store.open(tid) as tr, pytest.raises(CorruptTrace, match="block table"):
        tr.attention(0, 0)
    with h5py.File(path, "r+") as f:
        f["lm_attention_blocks"][1, 2, 1] = [10**12, 10**12 + 10]  # row 39: chunk 2
    with store.open(tid) as tr, pytest.raises(CorruptTrace):
        tr.answer_attention(0)


def test_reindex_keeps_the_evidence_of_corruption(store_dir, two):
    a, _ = two
    path = open_store(store_dir, writable=True).layout.trace_path(a)
    lo, hi = _blocks(path)[1, 0, 2]
    _flip(path, int(lo + hi) // 2)
    with open_store(store_dir, writable=True) as st:
        assert [(p.kind, p.trace_id) for p in st.verify()] == [("checksum_mismatch", a)]
    report = reindex_store(store_dir)
    assert report.indexed == 2 and report.damaged == [a]
    with open_store(store_dir, writable=True) as st:
        assert [(p.kind, p.trace_id) for p in st.verify()] == [("checksum_mismatch", a)]
    # Without any old index, the file's own block checksums give it away.
    for old in store_dir.glob("index.sqlite*"):
        old.unlink()
    report = reindex_store(store_dir)
    assert report.damaged == [a]
    with open_store(store_dir, writable=True) as st:
        assert [(p.kind, p.trace_id) for p in st.verify()] == [("checksum_mismatch", a)]
    done = _cli("store", "verify", "--store", str(store_dir))
    assert done.returncode == 1 and "checksum_mismatch" in done.stdout


def test_an_unreadable_file_is_quarantined_never_deleted(store_dir, two):
    a, b = two
    path = open_store(store_dir, writable=True).layout.trace_path(a)
    damaged = bytearray(path.read_bytes())
    damaged[:8] = b"garbage!"
    path.write_bytes(bytes(damaged))
    done = _cli("store", "reindex", "--store", str(store_dir))
    assert done.returncode == 0 and "indexed 1 trace(s)" in done.stdout
    assert "quarantine" in done.stdout
    kept = store_dir / "quarantine" / path.name
    assert kept.read_bytes() == bytes(damaged) and not path.exists()
    assert _cli("store", "gc", "--store", str(store_dir)).returncode == 0
    assert kept.read_bytes() == bytes(damaged)
    with open_store(store_dir, writable=True) as st:
        assert {p.kind for p in st.verify()} == {"quarantined"}
        # gc run on a damaged orphan quarantines it too
        orphan = st.layout.trace_path(b)
        st._index.delete(b)
        orphan.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
        report = st.gc()
        assert report.removed_orphans == [] and len(report.quarantined) == 1
        assert report.quarantined[0].read_bytes().startswith(b"\x89HDF")


def test_gc_deletes_only_its_own_files(store_dir, two, tmp_path):
    lay = open_store(store_dir, writable=True).layout
    notes = [lay.tmp_dir / "notes.txt", lay.data_dir / "notes.txt", lay.data_dir / "ab" / "x.h5"]
    for note in notes:
        note.parent.mkdir(exist_ok=True)
        note.write_text("mine")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / f"{'a' * 32}.1.abcdabcd.tmp.h5").write_text("not the store's")
    (lay.data_dir / "cd").symlink_to(outside, target_is_directory=True)
    with open_store(store_dir, writable=True) as st:
        report = st.gc()
    assert report.removed_temp == [] and report.removed_orphans == []
    assert all(n.read_text() == "mine" for n in notes)
    # a symlinked tmp/: opening for writes refuses, nothing outside is deleted
    shutil.rmtree(lay.tmp_dir)
    lay.tmp_dir.symlink_to(outside, target_is_directory=True)
    _refused(_cli("store", "gc", "--store", str(store_dir)))
    assert len(list(outside.iterdir())) == 1
    with open_store(store_dir) as st:
        kinds = {p.kind for p in st.verify()}
    assert {"link", "foreign_file"} <= kinds


def test_a_store_and_its_index_are_bound(tmp_path, make_trace):
    a, b = tmp_path / "a", tmp_path / "b"
    with open_store(b, writable=True) as st:
        st.add(make_trace(seed=1))
    with open_store(a, writable=True) as st:
        st.add(make_trace(seed=2))
    for url in ("sqlite://", "sqlite:///:memory:", f"sqlite:///{b / 'index.sqlite'}"):
        with pytest.raises(StoreOpenError):
            open_store(a, db_url=url, writable=True)
        with pytest.raises(StoreOpenError):
            open_store(tmp_path / "new", db_url=url, writable=True)
        assert not (tmp_path / "new" / "store-id").exists()
    # the index of a store whose id file is lost is refused by a new directory too,
    # and a store whose index was lost is not silently given an empty one
    (a / "index.sqlite").rename(tmp_path / "a-index.sqlite")
    with pytest.raises(StoreOpenError, match="reindex"):
        open_store(a, writable=True)
    assert reindex_store(a).indexed == 1
    with open_store(a, writable=True) as st:
        assert st.verify() == [] and st.query().total == 1
    with open_store(b, writable=True) as st:
        assert st.gc().removed_orphans == [] and st.query().total == 1


def _open_new(directory: str, barrier) -> None:
    barrier.wait()
    with open_store(directory, writable=True) as st:
        st.query()


def test_processes_opening_a_new_store_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        directory = str(tmp_path / f"s{round_}")
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_new, args=(directory, barrier)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * 6
        with open_store(directory, writable=True) as st:
            assert st.verify() == []


# -- security ----------------------------------------------------------------------------------
def test_export_never_writes_through_a_link(store, two, tmp_path):
    a, _ = two
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{a}.h5").symlink_to(target)
    with pytest.raises(StoreError, match="already exists"):
        store.export(a, out)
    assert target.read_text() == "precious"
    assert not (out / f"{a}.json").exists()


def test_rm_never_deletes_through_a_linked_shard(store_dir, make_trace, tmp_path):
    with open_store(store_dir, writable=True) as st:
        tid = st.add(make_trace(seed=7))
        shard = st.layout.trace_path(tid).parent
    outside = tmp_path / "outside"
    shutil.move(shard, outside)
    shard.symlink_to(outside, target_is_directory=True)
    _refused(_cli("store", "rm", tid, "--yes", "--store", str(store_dir)))
    assert (outside / f"{tid}.h5").exists()
    with open_store(store_dir, writable=True) as st:
        assert tid in st
        with pytest.raises(StoreError, match="symbolic link"):
            st.open(tid)
        st.gc()  # no crash, nothing followed
    assert (outside / f"{tid}.h5").exists()


# -- one line and exit code 2 --------------------------------------------------------------------
@pytest.fixture
def cli_store(store_dir, two, tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    (tmp_path / "plain").write_text("a file")
    return store_dir, two, tmp_path


BAD_DB = [
    "bogus",
    "postgresql://user@localhost:1/db",  # driver not installed
    "postgresql+nodriver://user@localhost/db",
    "sqlite:////no/such/directory/index.sqlite",
    "sqlite:///{tmp}/garbage.db",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "sqlite://",
    "sqlite:///:memory:",
]


@pytest.mark.parametrize("db", BAD_DB)
@pytest.mark.parametrize("command", [["ls"], ["store", "tag", "{id}", "x"]])
def test_malformed_db_urls(cli_store, db, command):
    store_dir, (a, _), tmp = cli_store
    args = [c.format(id=a) for c in command]
    _refused(_cli(*args, "--store", str(store_dir), "--db", db.format(tmp=tmp)))
    with open_store(store_dir, writable=True) as st:
        assert st.verify() == [] and st.query().total == 2


def test_reindex_with_a_malformed_db(cli_store):
    store_dir, _, _ = cli_store
    _refused(_cli("store", "reindex", "--store", str(store_dir), "--db", "bogus"))
    with open_store(store_dir, writable=True) as st:
        assert st.verify() == [] and st.query().total == 2


@pytest.mark.parametrize("where", ["plain", "plain/below"])
@pytest.mark.parametrize("command", [["ls"], ["store", "gc"], ["store", "verify"]])
def test_store_that_is_a_file(cli_store, where, command):
    _, _, tmp = cli_store
    _refused(_cli(*command, "--store", str(tmp / where)))
    assert (tmp / "plain").read_text() == "a file"


@pytest.mark.parametrize(
    "args", [["--after", "garbage"], ["--limit", "-1"], ["--offset", str(2**70)]]
)
def test_bad_listing_options(cli_store, args):
    store_dir, _, _ = cli_store
    _refused(_cli("ls", "--store", str(store_dir), *args))


def test_export_refusals(cli_store):
    store_dir, (a, _), tmp = cli_store
    opts = ["--store", str(store_dir)]
    _refused(_cli("store", "export", a, str(tmp / "plain"), *opts))  # an existing file
    _refused(_cli("store", "export", a, str(tmp / "plain" / "x"), *opts))  # under a file
    _refused(_cli("store", "export", a, str(store_dir / "data"), *opts))  # into the store
    assert _cli("store", "export", a, str(tmp / "out"), *opts).returncode == 0
    _refused(_cli("store", "export", a, str(tmp / "out"), *opts))  # never overwrites
    assert (tmp / "plain").read_text() == "a file"


def _read_only_bind(path: Path):
    if os.geteuid() != 0:
        path.chmod(0o444)
        return lambda: path.chmod(0o644)
    done = subprocess.run(["mount", "--bind", "-o", "ro", path, path], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
    return lambda: subprocess.run(["umount", path], check=True)


def test_read_only_index_and_unwritable_export(cli_store):
    store_dir, (a, _), tmp = cli_store
    (tmp / "ro").mkdir()
    undo = [_read_only_bind(store_dir / "index.sqlite"), _read_only_bind(tmp / "ro")]
    try:
        line = _refused(_cli("store", "tag", a, "x", "--store", str(store_dir)))
        assert "read-only" in line
        assert _cli("ls", "--store", str(store_dir)).returncode == 0
        _refused(_cli("store", "export", a, str(tmp / "ro" / "out"), "--store", str(store_dir)))
    finally:
        for step in undo:
            step()


def _limit_file_size() -> None:
    """In the child: a tiny file-size limit (what a full disk does to a write), with
    SIGXFSZ ignored so writes fail with EFBIG instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))


def test_tag_on_a_full_disk(cli_store):
    store_dir, (a, _), _ = cli_store
    with open_store(store_dir, writable=True) as st:  # checkpoint the WAL: the tag must grow a file
        st._index.engine.dispose()
    done = _cli("store", "tag", a, "big", "--store", str(store_dir), preexec_fn=_limit_file_size)
    _refused(done)
    with open_store(store_dir, writable=True) as st:
        assert st.get(a).tags == [] and st.verify() == []


def test_upper_case_ids_and_unicode_tags(cli_store):
    store_dir, (a, _), _ = cli_store
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert _cli("store", "show", a.upper(), "--store", str(store_dir)).returncode == 0
    assert _cli("store", "tag", a.upper(), nfd, "--store", str(store_dir)).returncode == 0
    with open_store(store_dir, writable=True) as st:
        assert st.get(a.upper()).tags == [nfc]
        st.tag(a, nfc)
        assert st.get(a).tags == [nfc]
        assert [i.trace_id for i in st.query(TraceQuery(tag=nfd)).items] == [a]
        with st.open(a.upper()) as tr:
            assert tr.trace_id == a


def test_rm_declined_or_at_end_of_input_keeps_the_trace(cli_store):
    store_dir, (a, _), _ = cli_store
    for answer in ["", "n\n"]:  # stdin closed before the answer; "no"
        done = _cli("store", "rm", a, "--store", str(store_dir), input=answer)
        assert done.returncode == 1 and done.stderr.strip() == "aborted", done.stderr
    with open_store(store_dir, writable=True) as st:
        assert st.query().total == 2


@pytest.mark.parametrize("inner", ["data", "data/ab", "tmp", "quarantine"])
def test_no_store_inside_another_stores_folders(cli_store, inner):
    store_dir, _, _ = cli_store
    nested = store_dir / inner / "nested"
    with pytest.raises(StoreOpenError, match="inside the"):
        open_store(nested, writable=True)
    assert not nested.exists()
    with open_store(store_dir, writable=True) as st:
        assert st.verify() == [] and st.query().total == 2


def test_names_and_paths_with_brackets_are_printed_as_text(cli_store):
    """Rich markup in a tag, a prompt or a file name is printed as typed, never parsed (a
    "[/x]" used to end `ls` with a MarkupError traceback)."""
    store_dir, (a, _), _ = cli_store
    opts = ["--store", str(store_dir)]
    assert _cli("store", "tag", a, "[/x]", "[red]t", *opts).returncode == 0
    for args in (["ls"], ["ls", "--tag", "[/x]"], ["store", "show", a]):
        done = _cli(*args, *opts)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "[/x]" in done.stdout and "[red]t" in done.stdout
    (store_dir / "data" / "[red]notes").write_text("mine")
    done = _cli("store", "verify", *opts)
    assert done.returncode == 1 and "data/[red]notes" in done.stdout
    assert "store gc" not in done.stdout  # gc would not touch it: no hint that it would


def test_reindex_names_a_trace_behind_a_link_it_left_out(store_dir, two, tmp_path):
    a, _ = two
    path = open_store(store_dir, writable=True).layout.trace_path(a)
    outside = tmp_path / "outside.h5"
    path.rename(outside)
    path.symlink_to(outside)
    done = _cli("store", "reindex", "--store", str(store_dir))
    assert done.returncode == 0 and "indexed 1 trace(s)" in done.stdout
    assert f"left alone: {path}\n" in done.stdout  # one line, whatever the terminal width
    assert path.is_symlink() and outside.stat().st_size > 0


@pytest.mark.parametrize(
    "command", [["store", "gc"], ["store", "tag", "{id}", "x"], ["store", "rm", "{id}", "--yes"]]
)
def test_maintenance_commands_never_create_a_store(cli_store, command):
    _, (a, _), tmp = cli_store
    missing = tmp / "mistyped"
    line = _refused(_cli(*[c.format(id=a) for c in command], "--store", str(missing)))
    assert "no store at" in line and not missing.exists()
