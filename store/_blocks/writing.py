"""Write attention chunk by chunk as one-block-per-head Blosc2 frames, with their table."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import h5py
import numpy as np

from .layout import (
    CBYTES,
    HASHES_SUFFIX,
    HEADER,
    XXH64,
    block_hashes,
    block_ranges,
    pool,
    same_settings,
)

if TYPE_CHECKING:
    import blosc2

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


def _python_blosc2_frame(chunk: np.ndarray, cparams: blosc2.CParams) -> bytes:
    """The chunk as a one-chunk frame built by python-blosc2 (slower than ``_Frame.wrap``)."""
    return _blosc2().SChunk(chunksize=chunk.nbytes, data=chunk, cparams=cparams).to_cframe()


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
        frame = _python_blosc2_frame(chunk, cparams)
        start = int.from_bytes(frame[11:15], "big")  # the header's length: the chunk follows
        chunk_header = frame[start : start + HEADER]
        cbytes = int.from_bytes(chunk_header[CBYTES], "little")
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


class BlockedWriter:
    """Writes a [L, H, R, C] dataset layer by layer and keeps its block table."""

    def __init__(self, ds: h5py.Dataset) -> None:
        n_layers, n_heads, rows, cols = ds.shape
        self.ds = ds
        self.chunk_rows = ds.chunks[2]
        # Block ranges relative to their chunk's frame until ``finish`` knows where it lies.
        self.table = np.full((n_layers, -(-rows // self.chunk_rows), n_heads, 2), -1, np.int64)
        self.stored = ds.parent.create_dataset(f"{ds.name}_blocks", self.table.shape, np.int64)
        # One checksum per block, verified by every read (0 where a chunk has no blocks).
        self.hashes = np.zeros(self.table.shape[:3], np.uint64)
        self.stored_hashes = (
            ds.parent.create_dataset(f"{ds.name}{HASHES_SUFFIX}", self.hashes.shape, np.uint64)
            if XXH64 is not None
            else None
        )
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
        rows = values.shape[1]
        starts = range(0, rows, self.chunk_rows)
        compressed = pool(1).map(lambda r0: self._compress(values, r0), starts)
        for i, (r0, (chunk, data, blocks, hashes)) in enumerate(
            zip(starts, compressed, strict=True)
        ):
            if not self.learned:
                self.frame, self.learned = _Frame.learn(chunk, self.cparams), True
            if self.frame is None:  # an unexpected frame layout: let python-blosc2 build it
                frame = _python_blosc2_frame(chunk, self.cparams)
                self.ds.id.write_direct_chunk((layer, 0, r0, 0), frame)
                continue
            self.ds.id.write_direct_chunk((layer, 0, r0, 0), self.frame.wrap(data))
            if blocks is not None and self._same_header(data[:HEADER]):
                self.table[layer, i] = blocks
                self.hashes[layer, i] = hashes
                self.table[layer, i] += len(self.frame.head)

    def _compress(
        self, values: np.ndarray, r0: int
    ) -> tuple[np.ndarray, bytes, list[tuple[int, int]] | None, list[int] | int]:
        """One chunk compressed, with its blocks' ranges and checksums (hashed here, on the
        compressing thread, while the caller's thread writes the previous chunk)."""
        chunk = np.ascontiguousarray(values[:, r0 : r0 + self.chunk_rows])
        if chunk.shape[1] < self.chunk_rows:  # HDF5 stores the last chunk padded
            chunk = np.pad(chunk, ((0, 0), (0, self.chunk_rows - chunk.shape[1]), (0, 0)))
        data = _blosc2().compress2(chunk, cparams=self.cparams_dict)
        blocks = block_ranges(data, chunk.shape[0])
        hashes = block_hashes(data, blocks) if blocks and self.stored_hashes is not None else 0
        return chunk, data, blocks, hashes

    def _same_header(self, header: bytes) -> bool:
        """Blocks are decoded with one header per dataset: chunks may differ only in size."""
        self.header = self.header or header
        return same_settings(self.header, header)

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
        if self.stored_hashes is not None:
            header = self.header or bytes(HEADER)
            self.stored_hashes.attrs["chunk_header_xxh64"] = block_hashes(header, [(0, HEADER)])[0]
            self.stored_hashes[...] = self.hashes
