"""Attention chunks whose Blosc2 blocks hold one head each, and reads that fetch only those.

A chunk holds 16 query rows of *every* head of a layer, so one token's row across all layers
and heads touches few chunks. A heatmap, though, needs one head: HDF5 decompresses whole
chunks, and hdf5plugin's filter cuts its b2nd blocks across heads, so a cold 7B heatmap read
12 MB from disk. Here every chunk is written as a plain Blosc2 frame whose blocks are exactly
one head's rows (``blocksize = rows x columns x itemsize``), and a small table
``<name>_blocks`` [L, row chunks, H, 2] records the file byte range of each block. A read
then fetches only the needed blocks with ``pread`` and decompresses them chunk by chunk in a
small thread pool (ctypes and ``pread`` release the GIL).

The files stay plain HDF5 + Blosc2: h5py with ``import hdf5plugin`` reads every chunk
through the filter (a plain Blosc2 frame is one of the two forms it decodes). Anything
unusual (no table, a chunk the table marks -1, a file whose chunks moved since the table was
written, another driver, a missing library, an error code) falls back to h5py, so results
always equal ``ds[index]``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    import blosc2

_HEADER = 32  # Blosc2 extended chunk header; the block starts (int32 each) follow it
_NBYTES, _CBYTES = slice(4, 8), slice(12, 16)  # little-endian int32 fields of that header
_MEMCPYED = 0x02  # header flag: blocks stored raw, no block starts
_SPECIAL = 0x70  # Blosc2 flags: a chunk of zeros / NaNs / uninitialised values, no blocks
# Reader threads: cold reads wait on the disk, and more requests in flight read faster
# (measured on the dev VM, 17 MB in 32 ranges: 2 threads 27 ms, 4-16 threads 19-22 ms).
_READERS = 8
_PARALLEL_BYTES = 4 * 2**20  # decoding less than this runs in the calling thread


# -- writing -----------------------------------------------------------------------------------

_FORKED = False  # set in a child forked from this process


def _mark_forked() -> None:
    global _FORKED
    _FORKED = True


os.register_at_fork(after_in_child=_mark_forked)


def _compression_threads() -> int:
    """Blosc2's own threads, except in a forked child: a child of a process that had
    compressed with them hung in its first compression (c-blosc2 keeps thread state that
    a fork copies without the threads; seen in 1 of ~8 runs of the kill -9 test)."""
    return 1 if _FORKED else os.cpu_count() or 1


def _blosc2() -> ModuleType:
    """python-blosc2, imported on first write: the import costs ~0.4 s, and readers only
    need its C library."""
    import blosc2

    return blosc2


@dataclass(frozen=True)
class _Frame:
    """A one-chunk Blosc2 frame around any compressed chunk of the same settings.

    Building a frame per chunk through ``blosc2.SChunk`` cost more than compressing it; the
    frame (cframe format) differs between chunks only in its total length and compressed
    size, so both are filled into a frame that python-blosc2 wrote once. ``learn`` checks
    those two fields sit where the format puts them and declines otherwise.
    """

    head: bytes  # frame header up to the chunk
    tail: bytes  # chunk offsets and trailer after it

    # Big-endian uint64 frame length and int64 compressed size, after their msgpack markers.
    _FRAME_LENGTH, _FRAME_CBYTES = slice(16, 24), slice(39, 47)

    @classmethod
    def learn(cls, chunk: np.ndarray, cparams: blosc2.CParams) -> _Frame | None:
        frame = _blosc2().SChunk(chunksize=chunk.nbytes, data=chunk, cparams=cparams)
        frame = frame.to_cframe()
        start = int.from_bytes(frame[11:15], "big")  # the header's length: the chunk follows
        chunk_header = frame[start : start + _HEADER]
        cbytes = int.from_bytes(chunk_header[_CBYTES], "little")
        fields_in_place = (
            frame[2:10] == b"b2frame\0"
            and frame[15] == 0xCF
            and frame[38] == 0xD3
            and int.from_bytes(frame[cls._FRAME_LENGTH], "big") == len(frame)
            and int.from_bytes(frame[cls._FRAME_CBYTES], "big") == cbytes
        )
        return cls(frame[:start], frame[start + cbytes :]) if fields_in_place else None

    def wrap(self, data: bytes) -> bytes:
        head = bytearray(self.head)
        length = len(self.head) + len(data) + len(self.tail)
        head[self._FRAME_LENGTH] = length.to_bytes(8, "big")
        head[self._FRAME_CBYTES] = len(data).to_bytes(8, "big")
        return b"".join((head, data, self.tail))


def _block_ranges(data: bytes, heads: int) -> list[tuple[int, int]] | None:
    """Byte ranges of a compressed chunk's blocks, one per head, or None if it has none."""
    if data[2] & _MEMCPYED or data[31] & _SPECIAL:
        return None
    starts = struct.unpack_from(f"<{heads}i", data, _HEADER)
    # Blocks compressed in parallel land in any order: each ends where the next one starts.
    in_file_order = sorted(starts)
    end_of = dict(zip(in_file_order, [*in_file_order[1:], len(data)], strict=True))
    return [(start, end_of[start]) for start in starts]


class BlockedWriter:
    """Writes a [L, H, R, C] dataset layer by layer and keeps its block table."""

    def __init__(self, ds: h5py.Dataset) -> None:
        n_layers, n_heads, rows, cols = ds.shape
        self.ds = ds
        self.chunk_rows = ds.chunks[2]
        # Block ranges relative to their chunk's frame until ``finish`` knows where it lies.
        self.table = np.full((n_layers, -(-rows // self.chunk_rows), n_heads, 2), -1, np.int64)
        self.stored = ds.parent.create_dataset(f"{ds.name}_blocks", self.table.shape, np.int64)
        codec = _blosc2()
        self.cparams = codec.CParams(
            codec=codec.Codec.ZSTD,
            clevel=1,
            filters=[codec.Filter.SHUFFLE],
            typesize=ds.dtype.itemsize,
            blocksize=self.chunk_rows * cols * ds.dtype.itemsize,
            nthreads=_compression_threads(),
        )
        self.cparams_dict = asdict(self.cparams)  # compress2 converts a CParams on every call
        self.header: bytes | None = None
        self.frame: _Frame | None = None
        self.learned = False

    def write_layer(self, layer: int, values: np.ndarray) -> None:
        """Compress the layer's chunks in a second thread while this one writes them.

        Blosc2 spreads each chunk over every core itself (python-blosc2 releases the GIL);
        more Python threads compressing side by side were slower (GIL hand-offs).
        """
        n_heads, rows, _ = values.shape
        starts = range(0, rows, self.chunk_rows)
        compressed = _pool(1).map(lambda r0: self._compress(values, r0), starts)
        for i, (r0, (chunk, data)) in enumerate(zip(starts, compressed, strict=True)):
            if not self.learned:
                self.frame, self.learned = _Frame.learn(chunk, self.cparams), True
            if self.frame is None:  # an unexpected frame layout: let python-blosc2 build it
                frame = _blosc2().SChunk(chunksize=chunk.nbytes, data=chunk, cparams=self.cparams)
                self.ds.id.write_direct_chunk((layer, 0, r0, 0), frame.to_cframe())
                continue
            self.ds.id.write_direct_chunk((layer, 0, r0, 0), self.frame.wrap(data))
            blocks = _block_ranges(data, n_heads)
            if blocks is not None and self._same_header(data[:_HEADER]):
                self.table[layer, i] = blocks
                self.table[layer, i] += len(self.frame.head)

    def _compress(self, values: np.ndarray, r0: int) -> tuple[np.ndarray, bytes]:
        chunk = np.ascontiguousarray(values[:, r0 : r0 + self.chunk_rows])
        if chunk.shape[1] < self.chunk_rows:  # HDF5 stores the last chunk padded
            chunk = np.pad(chunk, ((0, 0), (0, self.chunk_rows - chunk.shape[1]), (0, 0)))
        return chunk, _blosc2().compress2(chunk, cparams=self.cparams_dict)

    def _same_header(self, header: bytes) -> bool:
        """Blocks are decoded with one header per dataset: chunks may differ only in size."""
        self.header = self.header or header
        return _same_settings(self.header, header)

    def finish(self) -> None:
        """Store the table next to the dataset, as ``<name>_blocks``.

        The table is contiguous and uncompressed (any slice of it is one small read), and
        its dataset was created with the writer: objects created after hundreds of MB of
        chunks made opening a trace measurably slower (its metadata sat far apart on disk).
        """

        def place(info: h5py.h5d.StoreInfo) -> None:
            blocks = self.table[info.chunk_offset[0], info.chunk_offset[2] // self.chunk_rows]
            if blocks[0, 0] >= 0:
                blocks += info.byte_offset

        if self.header is not None:  # else no chunk has blocks: readers see no header
            self.ds.id.chunk_iter(place)
            self.stored.attrs["chunk_header"] = np.frombuffer(self.header, np.uint8)
        self.stored[...] = self.table


# -- reading -----------------------------------------------------------------------------------


class _DParams(ctypes.Structure):
    """``blosc2_dparams`` (the trailing ``typesize`` is ignored by libraries without it)."""

    _fields_ = [
        ("nthreads", ctypes.c_int16),
        ("schunk", ctypes.c_void_p),
        ("postfilter", ctypes.c_void_p),
        ("postparams", ctypes.c_void_p),
        ("typesize", ctypes.c_int32),
    ]


def _load() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("blosc2")  # its C library, without importing it
    package = Path(spec.submodule_search_locations[0]) if spec else Path()
    found = sorted((package / "lib").glob("libblosc2.[sd]*"))  # .so, .dylib
    try:
        lib = ctypes.CDLL(str(found[0]))
        lib.blosc2_init.argtypes = []
        lib.blosc2_create_dctx.argtypes = [_DParams]
        lib.blosc2_create_dctx.restype = ctypes.c_void_p
        pointer, size = ctypes.c_void_p, ctypes.c_int32  # (ctx, src, srcsize, dest, destsize)
        lib.blosc2_decompress_ctx.argtypes = [pointer, pointer, size, pointer, size]
        lib.blosc2_decompress_ctx.restype = ctypes.c_int
        lib.blosc2_init()
        return lib
    except (IndexError, OSError, AttributeError):
        return None


_LIB = _load()
_ADVISE = getattr(os, "posix_fadvise", None)  # Linux; macOS has no readahead advice
_LOCAL = threading.local()
_POOLS: dict[int, tuple[int, ThreadPoolExecutor]] = {}


def _context() -> int:
    """This thread's decompression context (creating one costs more than a block)."""
    if getattr(_LOCAL, "pid", None) != os.getpid():
        _LOCAL.pid, _LOCAL.ctx = os.getpid(), _LIB.blosc2_create_dctx(_DParams(nthreads=1))
    return _LOCAL.ctx


def _pool(threads: int) -> ThreadPoolExecutor:
    """This process's pool of ``threads`` threads (a forked child makes its own)."""
    pid, pool = _POOLS.get(threads, (None, None))
    if pid != os.getpid():
        pool = ThreadPoolExecutor(threads, thread_name_prefix="trace-blocks")
        _POOLS[threads] = (os.getpid(), pool)
    return pool


class BlockedDataset:
    """An attention dataset and, looked up on first read, its block table."""

    def __init__(self, values: h5py.Dataset) -> None:
        self.values = values

    @cached_property
    def table(self) -> h5py.Dataset | None:
        """``<name>_blocks`` (opening it costs a cold read: not done when a trace opens)."""
        return self.values.file.get(f"{self.values.name}_blocks")

    @cached_property
    def header(self) -> bytes | None:
        """The dataset's chunk header, or None when the fast path cannot be used."""
        if _LIB is None or self.table is None or self.values.file.driver != "sec2":
            return None
        header = self.table.attrs.get("chunk_header")
        return header.tobytes() if header is not None and self._in_place() else None

    def _in_place(self) -> bool:
        """A cheap guard against a file rewritten by other tools: its chunks have moved."""
        last_layer, last_chunk = self.values.shape[0] - 1, self.table.shape[1] - 1
        for layer, chunk in ((0, 0), (last_layer, last_chunk)):
            ranges = self.table[layer, chunk]
            if ranges.min() < 0:
                continue
            info = self.values.id.get_chunk_info_by_coord(
                (layer, 0, chunk * self.values.chunks[2], 0)
            )
            if info.byte_offset is None or ranges.min() < info.byte_offset:
                return False
            if ranges.max() > info.byte_offset + info.size:
                return False
        return True


def _bounds(index: tuple, shape: tuple[int, ...]) -> tuple[list[int], list[int], list[bool]] | None:
    """Start, stop and "squeeze this axis" per axis for ints and step-1 slices, else None."""
    starts, stops, squeeze = [], [], []
    for item, size in zip(index, shape, strict=True):
        if isinstance(item, (int, np.integer)):
            if not 0 <= int(item) < size:
                return None
            starts.append(int(item))
            stops.append(int(item) + 1)
            squeeze.append(True)
        elif isinstance(item, slice):
            a, b, step = item.indices(size)
            if step != 1 or b <= a:
                return None
            starts.append(a)
            stops.append(b)
            squeeze.append(False)
        else:
            return None
    return starts, stops, squeeze


def read(blocked: BlockedDataset, index: tuple, dtype: np.dtype | None = None) -> np.ndarray | None:
    """``ds[index]`` (cast to ``dtype`` when given) for ints and step-1 slices, reading only
    the blocks of the requested heads; None when the fast path does not apply."""
    ds = blocked.values
    if len(index) != 4 or blocked.header is None:
        return None
    bounds = _bounds(index, ds.shape)
    if bounds is None:
        return None
    (l0, h0, r0, c0), (l1, h1, r1, c1), squeeze = bounds
    rows = ds.chunks[2]
    table = blocked.table[l0:l1, r0 // rows : -(-r1 // rows), h0:h1]
    if table.min() < 0:
        return None
    header, stored, shape = blocked.header, ds.dtype, (rows, ds.shape[3])
    out = np.empty((l1 - l0, h1 - h0, r1 - r0, c1 - c0), dtype or stored)
    fd = ds.file.id.get_vfd_handle()
    # With every head wanted, a chunk is decoded as stored: its header and block starts
    # come first (checked against the dataset's header before use), then its blocks.
    whole = h1 - h0 == ds.shape[1]
    lead = _HEADER + 4 * ds.shape[1] if whole else 0

    jobs = []
    for li in range(table.shape[0]):
        for ci in range(table.shape[1]):
            lo, hi = int(table[li, ci, :, 0].min()) - lead, int(table[li, ci, :, 1].max())
            jobs.append((li, ci, lo, hi))
    # Small reads (a heatmap: 44 blocks of 22 KB) run in the calling thread, as thread
    # hand-offs cost more than they save, after asking the kernel for every range at once
    # so it reads them with a deep queue. Big reads run on the reader threads, whose
    # concurrent preads keep the queue deep themselves (measured on the dev VM, cold: a
    # heatmap 18 -> 12 ms with the advice; one row across all layers 27 -> 37 ms with it).
    decoded = table.shape[0] * table.shape[1] * (h1 - h0) * rows * shape[1] * stored.itemsize
    serial = decoded < _PARALLEL_BYTES or len(jobs) == 1
    if serial and _ADVISE is not None:
        for _, _, lo, hi in jobs:
            _ADVISE(fd, lo, hi - lo, os.POSIX_FADV_WILLNEED)

    def work(job: tuple[int, int, int, int]) -> bool:
        li, ci, lo, hi = job
        data = os.pread(fd, hi - lo, lo)
        if len(data) != hi - lo:
            return False
        heads = _decode_chunk(header, data, h1 - h0, shape, stored) if whole else None
        if heads is None:
            heads = _decode_blocks(header, data, table[li, ci] - lo, shape, stored)
        if heads is None:
            return False
        chunk_r0 = (r0 // rows + ci) * rows
        a, b = max(r0, chunk_r0), min(r1, chunk_r0 + rows)
        out[li, :, a - r0 : b - r0] = heads[:, a - chunk_r0 : b - chunk_r0, c0:c1]
        return True

    ok = all(map(work, jobs)) if serial else all(_pool(_READERS).map(work, jobs))
    if not ok:
        return None
    return out[tuple(0 if sq else slice(None) for sq in squeeze)]


def _same_settings(header: bytes, chunk_header: bytes) -> bool:
    """Two chunk headers agree on everything but the compressed size."""
    return chunk_header[: _CBYTES.start] + chunk_header[_CBYTES.stop :] == (
        header[: _CBYTES.start] + header[_CBYTES.stop :]
    )


def _decode_chunk(
    header: bytes, data: bytes, heads: int, block_shape: tuple[int, int], dtype
) -> np.ndarray | None:
    """Decompress a whole stored chunk, or None if ``data`` does not hold exactly one."""
    if not _same_settings(header, data[:_HEADER]):
        return None
    if int.from_bytes(data[_CBYTES], "little") != len(data):
        return None
    out = np.empty((heads, *block_shape), dtype)
    done = _LIB.blosc2_decompress_ctx(_context(), data, len(data), out.ctypes.data, out.nbytes)
    return out if done == out.nbytes else None


def _decode_blocks(
    header: bytes, data: bytes, ranges: np.ndarray, block_shape: tuple[int, int], dtype
) -> np.ndarray | None:
    """Decompress the blocks at ``ranges`` of ``data`` into [n, rows, cols].

    The blocks are laid out as one chunk of their own (the dataset's header with this
    chunk's sizes, then their starts, then their bytes), so one call decodes them all.
    """
    parts = [data[a:b] for a, b in ranges.tolist()]
    starts, size = [], _HEADER + 4 * len(parts)
    for part in parts:
        starts.append(size)
        size += len(part)
    out = np.empty((len(parts), *block_shape), dtype)
    head = bytearray(header)
    head[_NBYTES] = out.nbytes.to_bytes(4, "little")
    head[_CBYTES] = size.to_bytes(4, "little")
    chunk = b"".join([head, struct.pack(f"<{len(starts)}i", *starts), *parts])
    done = _LIB.blosc2_decompress_ctx(_context(), chunk, size, out.ctypes.data, out.nbytes)
    return out if done == out.nbytes else None
