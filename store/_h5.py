"""One trace <-> one HDF5 file. Writes a complete file; reads lazily with a sized chunk cache.

Layout of format 3 (format version in the root attributes; see "File layout" in README.md):

    /                 attrs: format_version, trace_id, precision, policy, info (JSON of
                      TraceInfo), info_crc32
    /tokens/          ids, text, roles, word_ids, image_patch, image_index; attr prompt_length
    /image/           attrs: layout (JSON: images' name/sha256/size, tiles, vision_summary),
                      layout_crc32
                      pixels/<i> [h, w, 3] uint8 per image; patch_tile [G], patch_boxes [G, 4]
                      token_rows, token_patches, token_weights (the token -> patch map)
                      key_rows, key_patches, key_weights (cross-attention keys, when any)
                      vision_sequence_patches [sum V], vision_sequence_lengths [S]
    /top_k/           ids, probs, text, chosen_prob
    /summaries/       attention_shares, head_image_attention
    /relevancy/       llm, vision, all, llm_through_vision, llm_keys (absent when not recorded;
                      all: absent where it does not apply; llm_keys: cross-attention only)
    /lm_attention     [L, H, R, T]; attr encoding = "fp16" | "log8"
    /lm_rows          [R] int32: the query rows kept (absent when R = T, policy "full")
    /vision_attention/<s>  [Lv, Hv, V, V] per vision sequence, same encodings (absent when
                      not recorded)
    /cross_attention  [Lx, H, T, K], same encodings; attr layers (absent when none)
    /<attention>_row_max       [..., rows] float32 beside each log8 attention
    /<attention>_blocks        [L, row chunks, H, 2] int64  (see store/_blocks)

Formats 1 and 2 (one image, one grid: /image/processed, patch_boxes, attrs grid_rows,
grid_cols, original_size, vision_has_cls; /vision_attention one dataset) are read as one
image of one tile: the processed image is the displayed one and patch boxes are its grid's
cells (their original-image boxes do not match the processed pixels shown).

Attention is chunked (1, H, 16, T): 16 query rows of every head of one layer. Reading a
heatmap, one token's row across all layers, or an answer x image block each touch few
chunks (measured in the spike: the best of the shapes tried); within a chunk, each head is
a Blosc2 block of its own, which a heatmap reads alone.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import zlib
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from . import _blocks, _codec
from ._codec import Precision
from .errors import CorruptTrace, FormatTooNew
from .schema import (
    FORMAT_VERSION,
    ImageGeometry,
    PatchMap,
    RecordingPolicy,
    Relevancy,
    SourceImage,
    Summaries,
    Tile,
    TokenRole,
    TokenTable,
    TopK,
    Trace,
    TraceInfo,
)

CHUNK_ROWS = 16  # most query rows per chunk (measured best for 7B LLaVA-1.5, T ~ 700)
BLOCK_BYTES = 32 * 1024  # one head's rows in a chunk (a Blosc2 block), about
SUBSET_BLOCK_BYTES = 8 * 1024  # the same where a policy kept only some rows
CACHE_BYTES = 64 * 2**20  # per open file: holds a whole layer's chunks for a 7B-shaped trace
CACHE_SLOTS = 10_007  # prime, well above the number of chunks that fit in the cache
_SMALL = 64 * 1024  # arrays below this many bytes are stored uncompressed
_STR = h5py.string_dtype("utf-8")
_QUEUE_PIECES = 64  # writes in flight to the background writer (each at most a chunk or so)


def _compression() -> dict[str, Any]:
    return dict(hdf5plugin.Blosc2(cname="zstd", clevel=1, filters=hdf5plugin.Blosc2.SHUFFLE))


def _put(group: h5py.Group, name: str, array: np.ndarray) -> None:
    """Arrays carry HDF5's Fletcher-32 checksum (per chunk), checked by HDF5 on every read."""
    array = np.asarray(array)
    if array.ndim == 0:
        group.create_dataset(name, data=array)
    elif array.nbytes >= _SMALL:
        group.create_dataset(name, data=array, chunks=True, fletcher32=True, **_compression())
    else:
        group.create_dataset(name, data=array, chunks=True, fletcher32=True)


def _text_crc(text: object) -> int:
    return zlib.crc32(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _put_json(node: h5py.Group | h5py.File, name: str, value: object) -> None:
    """A JSON attribute and the CRC-32 of its UTF-8 bytes beside it (``<name>_crc32``)."""
    node.attrs[name] = text = json.dumps(value)
    node.attrs[f"{name}_crc32"] = zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _get_json(node: h5py.Group | h5py.File, name: str, what: str) -> Any:
    text = node.attrs[name]
    crc = node.attrs.get(f"{name}_crc32")
    if crc is not None and int(crc) != zlib.crc32(text.encode("utf-8", "surrogatepass")):
        raise CorruptTrace(
            f"{node.file.filename}: its {what} fails its checksum; the file is damaged"
        )
    return json.loads(text)


def _put_text(group: h5py.Group, name: str, text: list[str] | list[list[str]]) -> None:
    """Text takes no HDF5 filters: a CRC-32 of its JSON form is kept as an attribute."""
    ds = group.create_dataset(name, data=np.array(text, dtype=object), dtype=_STR)
    ds.attrs["crc32"] = _text_crc(np.array(text, dtype=object).tolist())


def chunk_rows(rows: int, cols: int, itemsize: int, subset: bool) -> int:
    """Query rows per chunk: one head's rows (a block) near a byte budget, at most 16.

    Rows of ~700 columns keep the 16 rows measured best for 7B LLaVA-1.5. Longer rows
    (LLaVA-NeXT, T ~ 3,000) take fewer, or one answer token's row across all layers and heads
    would decompress and read 16 rows of each (cold: 40 MB for a 7B trace instead of 3).
    Rows a policy kept are read a token at a time: a smaller budget still."""
    budget = SUBSET_BLOCK_BYTES if subset else BLOCK_BYTES
    return max(1, min(CHUNK_ROWS, rows, budget // max(1, cols * itemsize)))


def _put_attention(
    f: h5py.Group, name: str, att: np.ndarray, precision: Precision, subset: bool = False
) -> None:
    """Write [L, H, R, C] attention one layer at a time (bounded memory for lossy encodings).

    The dataset declares the Blosc2 filter (so plain h5py reads it); its chunks are written
    directly as one-block-per-head frames with their block table (see ``_blocks``).
    ``subset``: the rows are some of the query rows (a recording policy).
    """
    n_layers, n_heads, rows, cols = att.shape
    dtype = np.uint8 if precision is Precision.LOG8 else np.float16
    per_chunk = chunk_rows(rows, cols, np.dtype(dtype).itemsize, subset)
    chunks = (1, n_heads, per_chunk, max(1, cols))
    ds = f.create_dataset(name, shape=att.shape, dtype=dtype, chunks=chunks, **_compression())
    ds.attrs["encoding"] = "log8" if precision is Precision.LOG8 else "fp16"
    if precision is Precision.LOG8:
        row_max = f.create_dataset(f"{name}_row_max", shape=att.shape[:3], dtype=np.float32)
    writer = _blocks.BlockedWriter(ds)
    for layer in range(n_layers):
        block = att[layer]
        if precision is Precision.LOG8:
            values, row_max[layer] = _codec.log8_encode(block)
        elif precision is Precision.SPARSE:
            values = _codec.sparsify(block)
        else:
            values = np.asarray(block, dtype=np.float16)
        writer.write_layer(layer, values)
    writer.finish()


class _BackgroundFile:
    """A file object for h5py's ``fileobj`` driver that hands writes to a writer thread.

    HDF5 compresses chunks in the calling thread while another thread copies the previous
    ones into the page cache (measured: the copy alone takes 1-2 s for a 7B trace on the dev
    VM). Write errors (full disk, file-size limit) never reach HDF5: the writer records the
    first one and drops the rest, and :func:`write_trace` raises it after HDF5 has closed
    the file cleanly (an I/O error inside HDF5 left its library state broken in testing:
    a failed close crashed the process at exit). Reads wait for pending writes.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0
        self.size = 0
        self.error: OSError | None = None
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(_QUEUE_PIECES)
        self._thread = threading.Thread(target=self._run, name="trace-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            offset, data = item
            try:
                if self.error is None:
                    view = memoryview(data)
                    while view:
                        n = os.pwrite(self.fd, view, offset)
                        offset += n
                        view = view[n:]
            except OSError as exc:
                self.error = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def finish(self) -> None:
        """Wait for every write; raise the first write error, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.error is not None:
            raise self.error

    # -- the file-object protocol h5py uses -----------------------------------------------------
    def write(self, data: Any) -> int:
        piece = bytes(data)
        self._queue.put((self.pos, piece))
        self.pos += len(piece)
        self.size = max(self.size, self.pos)
        return len(piece)

    def readinto(self, buf: Any) -> int:
        self._queue.join()
        view = memoryview(buf).cast("B")
        data = os.pread(self.fd, len(view), self.pos) if self.error is None else b""
        n = len(data)
        view[:n] = data
        view[n:] = bytes(len(view) - n)  # past a failed write: zeros (the file is discarded)
        self.pos += len(view)
        return len(view)

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(max(0, (self.size - self.pos) if n < 0 else n))
        return bytes(buf[: self.readinto(buf)])

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = (
            offset if whence == 0 else (self.pos + offset if whence == 1 else self.size + offset)
        )
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        self._queue.join()
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        self.size = size
        return size

    def flush(self) -> None:
        pass


def write_trace(fd: int, trace: Trace, precision: Precision) -> None:
    """Write the complete HDF5 file of ``trace`` to the empty, open file ``fd``.

    Raises the OSError of a failed write (e.g. ENOSPC / EFBIG) only after HDF5 is done, so
    the caller can translate it; the caller removes the partial file.
    """
    out = _BackgroundFile(fd)
    try:
        with h5py.File(out, "w") as f:
            _fill(f, trace, precision)
    finally:
        out.finish()


def _fill(f: h5py.File, trace: Trace, precision: Precision) -> None:
    tok, top = trace.tokens, trace.top_k
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["trace_id"] = trace.info.trace_id
    f.attrs["precision"] = precision.value
    policy = trace.policy
    f.attrs["policy"] = policy.value if policy is not None else "custom"
    _put_json(f, "info", trace.info.to_dict())

    g = f.create_group("tokens")
    g.attrs["prompt_length"] = tok.prompt_length
    _put(g, "ids", np.asarray(tok.ids, np.int64))
    _put_text(g, "text", list(tok.text))
    _put(g, "roles", np.asarray(tok.roles, np.int8))
    _put(g, "word_ids", np.asarray(tok.word_ids, np.int32))
    _put(g, "image_patch", np.asarray(tok.image_patch, np.int32))
    _put(g, "image_index", np.asarray(tok.image_index, np.int32))

    _put_image(f.create_group("image"), trace.image)

    g = f.create_group("top_k")
    _put(g, "ids", np.asarray(top.ids, np.int64))
    _put(g, "probs", np.asarray(top.probs, np.float32))
    k = np.asarray(top.ids).shape[1] if np.ndim(top.ids) == 2 else 0
    text = np.array(top.text, dtype=object).reshape(len(top.text), k)
    g.create_dataset("text", data=text, dtype=_STR)
    _put(g, "chosen_prob", np.asarray(top.chosen_prob, np.float32))

    g = f.create_group("summaries")
    _put(g, "attention_shares", np.asarray(trace.summaries.attention_shares, np.float32))
    _put(g, "head_image_attention", np.asarray(trace.summaries.head_image_attention, np.float32))

    if trace.relevancy is not None:
        g = f.create_group("relevancy")
        for mode in trace.relevancy.modes:  # the definition travels with the numbers
            _put(g, mode.value, np.asarray(trace.relevancy.map(mode), np.float32))
            g[mode.value].attrs["definition"] = mode.definition
        if trace.relevancy.llm_keys is not None:
            _put(g, "llm_keys", np.asarray(trace.relevancy.llm_keys, np.float32))

    subset = trace.lm_rows is not None
    _put_attention(f, "lm_attention", trace.lm_attention, precision, subset)
    if trace.lm_rows is not None:
        _put(f, "lm_rows", np.asarray(trace.lm_rows, np.int32))
    if trace.vision_attention is not None:
        g = f.create_group("vision_attention")
        for s, att in enumerate(trace.vision_attention):
            _put_attention(g, str(s), att, precision)
    if trace.cross_attention is not None:
        _put_attention(f, "cross_attention", trace.cross_attention.weights, precision)
        f["cross_attention"].attrs["layers"] = np.asarray(trace.cross_attention.layers, np.int64)


def _put_map(g: h5py.Group, prefix: str, patch_map: PatchMap) -> None:
    _put(g, f"{prefix}_rows", np.asarray(patch_map.rows, np.int32))
    _put(g, f"{prefix}_patches", np.asarray(patch_map.patches, np.int32))
    _put(g, f"{prefix}_weights", np.asarray(patch_map.weights, np.float32))


def _put_image(g: h5py.Group, geo: ImageGeometry) -> None:
    layout = {
        "images": [
            {"name": im.name, "sha256": im.sha256, "size": list(im.size)} for im in geo.images
        ],
        "tiles": [
            {"image": t.image, "box": list(t.box), "rows": t.rows, "cols": t.cols, "kind": t.kind}
            for t in geo.tiles
        ],
        "vision_summary": geo.vision_summary,
    }
    _put_json(g, "layout", layout)
    pixels = g.create_group("pixels")
    for i, im in enumerate(geo.images):
        _put(pixels, str(i), np.asarray(im.pixels, np.uint8))
    _put(g, "patch_tile", np.asarray(geo.patch_tile, np.int32))
    _put(g, "patch_boxes", np.asarray(geo.patch_boxes, np.float32))
    _put_map(g, "token", geo.token_patches)
    if geo.key_patches is not None:
        _put_map(g, "key", geo.key_patches)
    sequences = [np.asarray(s, np.int32) for s in geo.vision_sequences]
    _put(g, "vision_sequence_lengths", np.array([len(s) for s in sequences], np.int32))
    _put(g, "vision_sequence_patches", np.concatenate(sequences or [np.zeros(0, np.int32)]))


def open_file(path: str) -> h5py.File:
    """Open a trace file read-only, turning "not HDF5" and "too new" into clear errors."""
    try:
        f = h5py.File(path, "r", rdcc_nbytes=CACHE_BYTES, rdcc_nslots=CACHE_SLOTS)
    except FileNotFoundError:
        raise CorruptTrace(
            f"trace file {path} is missing; run `lvlm-interpret store verify` to list damage"
        ) from None
    except OSError as exc:
        raise CorruptTrace(
            f"{path} is not a readable HDF5 trace ({exc}); run `lvlm-interpret store verify`"
        ) from None
    try:
        version = int(f.attrs["format_version"])
    except (KeyError, TypeError, ValueError, OSError):
        f.close()
        raise CorruptTrace(f"{path} is HDF5 but not a lvlm-interpret trace") from None
    if version > FORMAT_VERSION:
        f.close()
        raise FormatTooNew(
            f"{path} has trace format {version}; this lvlm-interpret reads up to "
            f"{FORMAT_VERSION}. Upgrade: pip install -U lvlm-interpret"
        )
    return f


def read_info(f: h5py.File) -> TraceInfo:
    return TraceInfo.from_dict(_get_json(f, "info", "metadata"))


def read_text(ds: h5py.Dataset) -> list:
    text = ds.asstr()[()].tolist()
    crc = ds.attrs.get("crc32")
    if crc is not None and int(crc) != _text_crc(text):
        raise CorruptTrace(f"{ds.file.filename}: {ds.name} fails its checksum; the file is damaged")
    return text


def read_tokens(f: h5py.File) -> TokenTable:
    g = f["tokens"]
    return TokenTable(
        ids=g["ids"][()],
        text=read_text(g["text"]),
        roles=g["roles"][()],
        word_ids=g["word_ids"][()],
        image_patch=g["image_patch"][()],
        prompt_length=int(g.attrs["prompt_length"]),
        image_index=g["image_index"][()] if "image_index" in g else None,
    )


def read_policy(f: h5py.File) -> RecordingPolicy | None:
    """The file's recording policy; None for rows of no named policy."""
    value = str(f.attrs.get("policy", RecordingPolicy.FULL.value))
    return RecordingPolicy(value) if value in RecordingPolicy._value2member_map_ else None


def read_lm_rows(f: h5py.File) -> np.ndarray | None:
    return f["lm_rows"][()] if "lm_rows" in f else None


def _read_map(g: h5py.Group, prefix: str) -> PatchMap:
    return PatchMap(g[f"{prefix}_rows"][()], g[f"{prefix}_patches"][()], g[f"{prefix}_weights"][()])


def read_image(f: h5py.File) -> ImageGeometry:
    if int(f.attrs["format_version"]) < 3:
        return _read_one_grid_image(f)
    g = f["image"]
    layout = _get_json(g, "layout", "image layout")
    images = [
        SourceImage(im["name"], im["sha256"], tuple(im["size"]), g["pixels"][str(i)][()])
        for i, im in enumerate(layout["images"])
    ]
    tiles = [
        Tile(t["image"], tuple(t["box"]), t["rows"], t["cols"], t["kind"]) for t in layout["tiles"]
    ]
    ends = np.cumsum(g["vision_sequence_lengths"][()])
    sequences = np.split(g["vision_sequence_patches"][()], ends[:-1]) if len(ends) else []
    return ImageGeometry(
        images=images,
        tiles=tiles,
        patch_tile=g["patch_tile"][()],
        patch_boxes=g["patch_boxes"][()],
        token_patches=_read_map(g, "token"),
        vision_sequences=list(sequences),
        vision_summary=layout["vision_summary"],
        key_patches=_read_map(g, "key") if "key_rows" in g else None,
    )


def _read_one_grid_image(f: h5py.File) -> ImageGeometry:
    """Formats 1-2: one image of one tile, drawn as the processed image it was recorded with
    (patch boxes become that image's grid cells, so old traces still draw correctly)."""
    g = f["image"]
    rows, cols = int(g.attrs["grid_rows"]), int(g.attrs["grid_cols"])
    processed = g["processed"][()]
    h, w = processed.shape[:2]
    info = read_info(f)
    r, c = np.divmod(np.arange(rows * cols), cols)
    cw, ch = w / cols, h / rows
    boxes = np.stack([c * cw, r * ch, (c + 1) * cw, (r + 1) * ch], axis=1).astype(np.float32)
    tokens = f["tokens"]
    on_image = np.flatnonzero(tokens["roles"][()] == TokenRole.IMAGE)
    cls = bool(g.attrs["vision_has_cls"])
    patches = np.arange(rows * cols, dtype=np.int32)
    return ImageGeometry(
        images=[SourceImage(info.image_name, info.image_sha256, (w, h), processed)],
        tiles=[Tile(0, (0.0, 0.0, float(w), float(h)), rows, cols, "full")],
        patch_tile=np.zeros(rows * cols, np.int32),
        patch_boxes=boxes,
        token_patches=PatchMap.one_to_one(on_image, tokens["image_patch"][()][on_image]),
        vision_sequences=[np.concatenate([[-1], patches]).astype(np.int32) if cls else patches],
        vision_summary="cls" if cls else "mean",
        processed=processed,
    )


def read_cross_layers(f: h5py.File) -> list[int] | None:
    if "cross_attention" not in f:
        return None
    return [int(n) for n in f["cross_attention"].attrs["layers"]]


def read_top_k(f: h5py.File) -> TopK:
    g = f["top_k"]
    return TopK(
        ids=g["ids"][()],
        probs=g["probs"][()],
        text=read_text(g["text"]),
        chosen_prob=g["chosen_prob"][()],
    )


def read_summaries(f: h5py.File) -> Summaries:
    g = f["summaries"]
    return Summaries(g["attention_shares"][()], g["head_image_attention"][()])


def read_relevancy(f: h5py.File) -> Relevancy | None:
    if "relevancy" not in f:
        return None
    g = f["relevancy"]
    if int(f.attrs["format_version"]) < 2:  # its "all" is what format 2 calls llm_through_vision
        return Relevancy(g["llm"][()], g["vision"][()], None, g["all"][()], legacy=True)
    seed_all = g["all"][()] if "all" in g else None
    keys = g["llm_keys"][()] if "llm_keys" in g else None
    return Relevancy(g["llm"][()], g["vision"][()], seed_all, g["llm_through_vision"][()], keys)


def read_attention(
    blocked: _blocks.BlockedDataset, row_max: h5py.Dataset | None, index: tuple
) -> np.ndarray:
    """Read ``ds[index]`` as float32, decoding log8 when ``row_max`` is given.

    ``index`` addresses [L, H, R, C] with ints, slices or one sorted index array per axis
    (h5py's rule); its last item must not be an int. The log8 row maxima are read with the
    same index minus the column axis. Reads go through the block table when they can and
    through h5py otherwise; callers keep the dataset open between calls, as HDF5's chunk cache
    (used by the h5py path) and the looked-up table live with the open handle.
    """
    try:
        data = _blocks.read(blocked, index, None if row_max is not None else np.float32)
        if data is None:
            _blocks.check(blocked, index)
            data = blocked.values[index]
        if row_max is not None:
            return _codec.log8_decode(data, row_max[index[:-1]])
    except (OSError, MemoryError) as exc:  # HDF5: a chunk that fails its filter or size
        raise CorruptTrace(
            f"{blocked.values.file.filename}: cannot read {blocked.values.name} ({exc}); "
            "the trace file is damaged (run `lvlm-interpret store verify`)"
        ) from None
    return data.astype(np.float32, copy=False)


def attention_datasets(
    f: h5py.File | h5py.Group, name: str
) -> tuple[_blocks.BlockedDataset, h5py.Dataset | None]:
    """The attention dataset ``name`` with its block table and, when log8, its row maxima."""
    ds = f[name]
    log8 = ds.attrs.get("encoding", "fp16") == "log8"
    return _blocks.BlockedDataset(ds), (f[f"{name}_row_max"] if log8 else None)


def vision_datasets(f: h5py.File) -> list[tuple[_blocks.BlockedDataset, h5py.Dataset | None]]:
    """Each vision sequence's attention (format 1-2 files hold one), [] when not recorded."""
    if "vision_attention" not in f:
        return []
    node = f["vision_attention"]
    if isinstance(node, h5py.Dataset):
        return [attention_datasets(f, "vision_attention")]
    count = sum(1 for name in node if name.isdigit())
    return [attention_datasets(node, str(s)) for s in range(count)]
