"""What the reader and the writer know of Blosc2's chunk format, and their thread pools."""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor

HEADER = 32  # Blosc2 extended chunk header; the block starts (int32 each) follow it
NBYTES, CBYTES = slice(4, 8), slice(12, 16)  # little-endian int32 fields of that header
MEMCPYED = 0x02  # header flag: blocks stored raw, no block starts
SPECIAL = 0x70  # Blosc2 flags: a chunk of zeros / NaNs / uninitialised values, no blocks

_POOLS: dict[int, tuple[int, ThreadPoolExecutor]] = {}


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
