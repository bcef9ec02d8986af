"""Read attention slices by fetching and decompressing only the needed heads' blocks."""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from functools import cached_property

import h5py
import numpy as np

from ..errors import CorruptTrace
from .layout import (
    CBYTES,
    HASHES_SUFFIX,
    HEADER,
    LIB,
    NBYTES,
    XXH64,
    block_hashes,
    pool,
    same_settings,
)

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
    lib = LIB
    try:
        lib.blosc2_init.argtypes = []
        lib.blosc2_create_dctx.argtypes = [_DParams]
        lib.blosc2_create_dctx.restype = ctypes.c_void_p
        pointer, size = ctypes.c_void_p, ctypes.c_int32  # (ctx, src, srcsize, dest, destsize)
        lib.blosc2_decompress_ctx.argtypes = [pointer, pointer, size, pointer, size]
        lib.blosc2_decompress_ctx.restype = ctypes.c_int
        lib.blosc2_init()
        return lib
    except AttributeError:  # no library, or one without these functions
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
    """An attention dataset and, looked up on first read, its block table and checksums."""

    def __init__(self, values: h5py.Dataset) -> None:
        self.values = values

    def corrupt(self, what: str) -> CorruptTrace:
        return CorruptTrace(
            f"{self.values.file.filename}: {what} in {self.values.name}; the trace file is "
            "damaged (run `lvlm-interpret store verify`)"
        )

    @cached_property
    def table(self) -> h5py.Dataset | None:
        """``<name>_blocks`` (opening it costs a cold read: not done when a trace opens)."""
        table = self.values.file.get(f"{self.values.name}_blocks")
        if table is not None:
            n_layers, n_heads, rows, _ = self.values.shape
            expected = (n_layers, -(-rows // self.values.chunks[2]), n_heads, 2)
            if table.shape != expected or self.values.chunks[:2] != (1, n_heads):
                raise self.corrupt(f"a block table of shape {table.shape}, not {expected},")
        return table

    @cached_property
    def hashes(self) -> h5py.Dataset | None:
        """``<name>_block_xxh64``: one checksum per block (absent in files written before)."""
        hashes = self.values.file.get(f"{self.values.name}{HASHES_SUFFIX}")
        if hashes is not None and (self.table is None or hashes.shape != self.table.shape[:3]):
            raise self.corrupt("block checksums that do not match the block table")
        return hashes

    @cached_property
    def verified(self) -> bool:
        """Reads check each block's checksum (files written with them, XXH64 available)."""
        return self.hashes is not None and XXH64 is not None

    @cached_property
    def header(self) -> bytes | None:
        """The dataset's chunk header, or None when the fast path cannot be used."""
        if _LIB is None or self.table is None or self.values.file.driver != "sec2":
            return None
        header = self.table.attrs.get("chunk_header")
        if header is None:
            return None
        header = header.tobytes()
        if self.verified:
            expected = int(self.hashes.attrs.get("chunk_header_xxh64", 0))
            if len(header) != HEADER or block_hashes(header, [(0, HEADER)]) != [expected]:
                raise self.corrupt("a chunk header that fails its checksum")
            return header
        return header if self._in_place() else None

    @cached_property
    def max_read(self) -> int:
        """Most bytes one chunk's blocks may span: its raw size plus generous Blosc2
        overhead. A table claiming more is damaged (and must not size an allocation)."""
        _, n_heads, _, cols = self.values.shape
        raw = n_heads * self.values.chunks[2] * cols * self.values.dtype.itemsize
        return 2 * raw + HEADER + 64 * n_heads + 4096

    def check_range(self, lo: int, hi: int, file_size: int) -> None:
        if not 0 <= lo < hi <= file_size or hi - lo > self.max_read:
            raise self.corrupt(f"a block table entry ({lo}..{hi}) outside the file's chunks")

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
    chunks = slice(r0 // rows, -(-r1 // rows))
    table = blocked.table[l0:l1, chunks, h0:h1]
    if table.min() < 0:
        return None
    verified = blocked.verified
    hashes = blocked.hashes[l0:l1, chunks, h0:h1] if verified else None
    if (table[..., 1] <= table[..., 0]).any():
        raise blocked.corrupt("an empty or reversed block range")
    header, stored, shape = blocked.header, ds.dtype, (rows, ds.shape[3])
    fd = ds.file.id.get_vfd_handle()
    file_size = os.fstat(fd).st_size
    # With every head wanted, a chunk is decoded as stored: its header and block starts
    # come first (checked against the dataset's header before use), then its blocks.
    whole = h1 - h0 == ds.shape[1]
    lead = HEADER + 4 * ds.shape[1] if whole else 0

    jobs = []
    for li in range(table.shape[0]):
        for ci in range(table.shape[1]):
            lo, hi = int(table[li, ci, :, 0].min()) - lead, int(table[li, ci, :, 1].max())
            blocked.check_range(lo, hi, file_size)
            jobs.append((li, ci, lo, hi))
    out = np.empty((l1 - l0, h1 - h0, r1 - r0, c1 - c0), dtype or stored)
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

    # Plain lists: per-chunk numpy indexing cost more than the checksums themselves.
    table_rows, hash_rows = table.tolist(), hashes.tolist() if verified else None

    def work(job: tuple[int, int, int, int]) -> bool:
        li, ci, lo, hi = job
        data = os.pread(fd, hi - lo, lo)
        ranges = [(a - lo, b - lo) for a, b in table_rows[li][ci]]
        problem = None
        if verified:
            if len(data) != hi - lo:
                problem = "a truncated chunk"
            elif block_hashes(data, ranges) != hash_rows[li][ci]:
                problem = "an attention block that fails its checksum"
        elif len(data) != hi - lo:
            return False
        heads = None
        # Unchecked chunk headers and block starts are only trusted when checksums are
        # absent; with checksums, only the checked blocks and the dataset's header are used.
        starts = [a for a, _ in ranges]
        if problem is None and whole and (not verified or _starts(data, len(ranges)) == starts):
            heads = _decode_chunk(header, data, h1 - h0, shape, stored)
        if problem is None and heads is None:
            heads = _decode_blocks(header, data, ranges, shape, stored)
            if heads is None and verified:
                problem = "a chunk that does not decode"
        if problem is not None:
            where = f"layer {l0 + li}, rows from {(chunks.start + ci) * rows}"
            raise blocked.corrupt(f"{problem} ({where})")
        if heads is None:
            return False
        chunk_r0 = (chunks.start + ci) * rows
        a, b = max(r0, chunk_r0), min(r1, chunk_r0 + rows)
        out[li, :, a - r0 : b - r0] = heads[:, a - chunk_r0 : b - chunk_r0, c0:c1]
        return True

    ok = all(map(work, jobs)) if serial else all(pool(_READERS).map(work, jobs))
    if not ok:
        return None
    return out[tuple(0 if sq else slice(None) for sq in squeeze)]


def _starts(data: bytes, heads: int) -> list[int]:
    """The block starts a stored chunk lists after its header."""
    return list(struct.unpack_from(f"<{heads}i", data, HEADER))


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
    header: bytes, data: bytes, ranges: list[tuple[int, int]], block_shape: tuple[int, int], dtype
) -> np.ndarray | None:
    """Decompress the blocks at ``ranges`` of ``data`` into [n, rows, cols].

    The blocks are laid out as one chunk of their own (the dataset's header with this
    chunk's sizes, then their starts, then their bytes), so one call decodes them all.
    """
    parts = [data[a:b] for a, b in ranges]
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


def _positions(item: object, size: int) -> np.ndarray:
    if isinstance(item, slice):
        return np.arange(*item.indices(size))
    return np.asarray(item, np.int64).reshape(-1)


def check(blocked: BlockedDataset, index: tuple) -> None:
    """Check the checksum of every block ``ds[index]`` touches, for reads that h5py does
    (index arrays); raises :class:`CorruptTrace` on a mismatch. A no-op for old files."""
    ds = blocked.values
    if not blocked.verified or ds.file.driver != "sec2":
        return
    index = (*index, *[slice(None)] * (4 - len(index)))
    layers, heads, rows = (_positions(i, n) for i, n in zip(index[:3], ds.shape, strict=False))
    chunks = np.unique(rows // ds.chunks[2])
    box = (slice(layers.min(), layers.max() + 1), slice(chunks.min(), chunks.max() + 1))
    table, hashes = blocked.table[box], blocked.hashes[box]
    fd = ds.file.id.get_vfd_handle()
    file_size = os.fstat(fd).st_size
    for layer in np.unique(layers) - box[0].start:
        for chunk in chunks - box[1].start:
            ranges = table[layer, chunk][heads]
            if ranges.min() < 0:
                continue
            lo, hi = int(ranges.min()), int(ranges.max())
            blocked.check_range(lo, hi, file_size)
            data = os.pread(fd, hi - lo, lo)
            if (
                len(data) != hi - lo
                or (block_hashes(data, (ranges - lo).tolist()) != hashes[layer, chunk][heads]).any()
            ):
                raise blocked.corrupt(
                    f"an attention block that fails its checksum (layer {layer + box[0].start})"
                )
