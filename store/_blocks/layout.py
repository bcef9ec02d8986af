"""What the reader and the writer know of Blosc2's chunk format, and their thread pools."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HEADER = 32  # Blosc2 extended chunk header; the block starts (int32 each) follow it
NBYTES, CBYTES = slice(4, 8), slice(12, 16)  # little-endian int32 fields of that header
MEMCPYED = 0x02  # header flag: blocks stored raw, no block starts
SPECIAL = 0x70  # Blosc2 flags: a chunk of zeros / NaNs / uninitialised values, no blocks

_POOLS: dict[int, tuple[int, ThreadPoolExecutor]] = {}


def _library() -> ctypes.CDLL | None:
    """c-blosc2 as python-blosc2 ships it (found without importing python-blosc2)."""
    spec = importlib.util.find_spec("blosc2")
    package = Path(spec.submodule_search_locations[0]) if spec else Path()
    found = sorted((package / "lib").glob("libblosc2.[sd]*"))  # .so, .dylib
    try:
        return ctypes.CDLL(str(found[0]))
    except (IndexError, OSError):
        return None


LIB = _library()


def _xxh64() -> ctypes._CFuncPtr | None:
    """XXH64 from the zstd inside c-blosc2 (6-7 GB/s here; zlib.crc32 ran at 1.5 GB/s,
    which would have added ~11 ms to reading one token's row of a 7B trace).

    Called through ``PyDLL``, i.e. holding the GIL: one block (~16 KB) hashes in a few
    microseconds, and eight reader threads releasing and re-taking the GIL around each call
    cost more than the hashing (one token's row of a 7B trace, warm: 24.8 -> 19.5 ms)."""
    func = getattr(ctypes.PyDLL(LIB._name), "ZSTD_XXH64", None) if LIB is not None else None
    if func is not None:
        func.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_ulonglong]
        func.restype = ctypes.c_ulonglong
    return func


XXH64 = _xxh64()
HASHES_SUFFIX = "_block_xxh64"  # [L, row chunks, H] uint64: XXH64 of each block's bytes


def block_hashes(data: bytes, ranges: Sequence[Sequence[int]]) -> list[int]:
    """XXH64 (seed 0) of ``data[a:b]`` for each (a, b) in ``ranges``, without copying."""
    base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
    return [XXH64(base + a, b - a, 0) for a, b in ranges]


def same_settings(header: bytes, chunk_header: bytes) -> bool:
    """Two chunk headers agree on everything but the compressed size."""
    return chunk_header[: CBYTES.start] + chunk_header[CBYTES.stop :] == (
        header[: CBYTES.start] + header[CBYTES.stop :]
    )


def block_ranges(data: bytes, heads: int) -> list[tuple[int, int]] | None:
    """Byte ranges of a compressed chunk's blocks, one per head, or None if it has none."""
    if data[2] & MEMCPYED or data[31] & SPECIAL:
        return None
    starts = struct.unpack_from(f"<{heads}i", data, HEADER)
    # Blocks compressed in parallel land in any order: each ends where the next one starts.
    in_file_order = sorted(starts)
    end_of = dict(zip(in_file_order, [*in_file_order[1:], len(data)], strict=True))
    return [(start, end_of[start]) for start in starts]


def pool(threads: int) -> ThreadPoolExecutor:
    """This process's pool of ``threads`` threads (a forked child makes its own)."""
    pid, executor = _POOLS.get(threads, (None, None))
    if pid != os.getpid():
        executor = ThreadPoolExecutor(threads, thread_name_prefix="trace-blocks")
        _POOLS[threads] = (os.getpid(), executor)
    return executor
