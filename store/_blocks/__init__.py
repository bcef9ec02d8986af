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

from .reading import BlockedDataset, check, read
from .writing import BlockedWriter

__all__ = ["BlockedDataset", "BlockedWriter", "check", "read"]
