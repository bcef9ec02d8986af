"""Read attention slices by fetching and decompressing only the needed heads' blocks."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import struct
import threading
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from .layout import CBYTES, HEADER, NBYTES, pool, same_settings

# Reader threads: cold reads wait on the disk, and more requests in flight read faster
# (measured on the dev VM, 17 MB in 32 ranges: 2 threads 27 ms, 4-16 threads 19-22 ms).
_READERS = 8
PARALLEL_BYTES = 4 * 2**20  # decoding less than this runs in the calling thread


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


def _context() -> int:
    """This thread's decompression context (creating one costs more than a block)."""
    if getattr(_LOCAL, "pid", None) != os.getpid():
        _LOCAL.pid, _LOCAL.ctx = os.getpid(), _LIB.blosc2_create_dctx(_DParams(nthreads=1))
    return _LOCAL.ctx


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
    lead = HEADER + 4 * ds.shape[1] if whole else 0

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
    serial = decoded < PARALLEL_BYTES or len(jobs) == 1
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

    ok = all(map(work, jobs)) if serial else all(pool(_READERS).map(work, jobs))
    if not ok:
        return None
    return out[tuple(0 if sq else slice(None) for sq in squeeze)]


def _decode_chunk(
    header: bytes, data: bytes, heads: int, block_shape: tuple[int, int], dtype
) -> np.ndarray | None:
    """Decompress a whole stored chunk, or None if ``data`` does not hold exactly one."""
    if not same_settings(header, data[:HEADER]):
        return None
    if int.from_bytes(data[CBYTES], "little") != len(data):
        return None
    return _decompress(data, np.empty((heads, *block_shape), dtype))


def _decode_blocks(
    header: bytes, data: bytes, ranges: np.ndarray, block_shape: tuple[int, int], dtype
) -> np.ndarray | None:
    """Decompress the blocks at ``ranges`` of ``data`` into [n, rows, cols].

    The blocks are laid out as one chunk of their own (the dataset's header with this
    chunk's sizes, then their starts, then their bytes), so one call decodes them all.
    """
    parts = [data[a:b] for a, b in ranges.tolist()]
    starts, size = [], HEADER + 4 * len(parts)
    for part in parts:
        starts.append(size)
        size += len(part)
    out = np.empty((len(parts), *block_shape), dtype)
    head = bytearray(header)
    head[NBYTES] = out.nbytes.to_bytes(4, "little")
    head[CBYTES] = size.to_bytes(4, "little")
    return _decompress(b"".join([head, struct.pack(f"<{len(starts)}i", *starts), *parts]), out)


def _decompress(chunk: bytes, out: np.ndarray) -> np.ndarray | None:
    """Decompress one Blosc2 chunk into ``out``; None unless it filled ``out`` exactly."""
    done = _LIB.blosc2_decompress_ctx(_context(), chunk, len(chunk), out.ctypes.data, out.nbytes)
    return out if done == out.nbytes else None
