"""Synthetic but realistic traces: for the bench, the store's tests and the dashboard's tests.

Attention is a real softmax over logits built from what LVLM heads are known to do: a sink
on the first token, a decaying local band, some heads looking at a blob on the image, and
noise (so fp16 values have realistic, incompressible low bits). Rows sum to 1 and are causal
unless ``bidirectional_images`` (Gemma 3's image blocks). Everything derives from ``seed``;
each kept LM row's noise derives from (seed, layer, row) alone, so a trace recorded under a
:class:`~store.RecordingPolicy` holds exactly the rows of the same trace recorded in full.

The image geometry covers the families the schema describes (see ``make_synthetic_trace``):
one tile (LLaVA-1.5, the default), a global view plus crops (LLaVA-NeXT), several images,
2x2-merged tokens (Qwen-VL), row-break tokens that read no pixels, a tower without CLS, and
cross-attention with no image tokens in the sequence (Mllama).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .policy import policy_rows
from .schema import (
    CrossAttention,
    GenerationSettings,
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
    new_trace_id,
)

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")
_PROMPT_WORDS = (
    "what",
    "colour",
    "is",
    "the",
    "shape",
    "in",
    "top",
    "left",
    "corner",
    "of",
    "image",
)
_TEMPLATE = ("<s>", "USER", ":", "\n")
_ROW_CHUNK = 256  # LM query rows built at once: bounds memory for 7B-shaped full traces

Grid = tuple[int, int]
Read = tuple[np.ndarray, np.ndarray] | None  # a token's (patches, weights); None: no pixels


def _noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Uniform float32 noise with standard deviation ``std``.

    Built from random bytes: ~20x faster than ``standard_normal`` for 7B-shaped traces,
    and the softmax does not care about the noise's exact distribution.
    """
    count = int(np.prod(shape))
    out = np.frombuffer(rng.bytes(count), dtype=np.int8).astype(np.float32).reshape(shape)
    out *= std * np.sqrt(3.0) / 128.0
    return out


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    """In-place, float32 softmax over the last axis (``-inf`` entries become exact zeros)."""
    logits -= logits.max(axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-1, keepdims=True)
    return logits


@dataclass
class _Layout:
    """The image side of a synthetic trace, before it is placed in the sequence."""

    geometry: ImageGeometry
    token_reads: list[list[Read]]  # per image, per token
    patch_blob: np.ndarray  # [G] float32: how much each patch shows the drawn disk


def _image_pixels(
    rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float], radius: float
) -> np.ndarray:
    """A light noisy canvas of ``size`` (w, h) with a red disk at ``centre`` (x, y) pixels."""
    w, h = size
    img = np.full((h, w, 3), 235, np.uint8)
    img += rng.integers(0, 12, size=(h, w, 1), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy + 0.5 - centre[1]) ** 2 + (xx + 0.5 - centre[0]) ** 2 < radius**2] = (200, 40, 40)
    return img


def _tile_boxes(box: tuple[float, float, float, float], rows: int, cols: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    r, c = np.divmod(np.arange(rows * cols), cols)
    w, h = (x1 - x0) / cols, (y1 - y0) / rows
    return np.stack([x0 + c * w, y0 + r * h, x0 + (c + 1) * w, y0 + (r + 1) * h], 1)


def _layout(
    rng: np.random.Generator,
    grids: Sequence[Grid],
    crops: Grid | None,
    merge: int,
    row_breaks: bool,
    patch_px: int,
    cls: bool,
    seed: int,
) -> _Layout:
    """Images -> tiles -> patches and the tokens each image becomes.

    Each image is a global view of ``grid`` patches, then (with ``crops``) a ``crops`` layout of
    crops of ``grid`` patches each, tokens running across crops row by row as LLaVA-NeXT packs
    its high-resolution grid. ``merge`` x ``merge`` patches make one token (equal weights);
    ``row_breaks`` ends each row of the high-resolution grid with a token that reads no pixels.
    """
    layout_rows, layout_cols = crops or (1, 1)
    images, tiles, boxes, reads = [], [], [], []
    blob_parts: list[np.ndarray] = []
    centre = (rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85))  # (x, y), fraction of the image
    for index, (grid_rows, grid_cols) in enumerate(grids):
        if grid_rows % merge or grid_cols % merge:
            raise ValueError(f"grid {grid_rows}x{grid_cols} is not a multiple of merge {merge}")
        cell = patch_px * 1.5  # original pixels per global-view patch
        size = (round(grid_cols * layout_cols * cell), round(grid_rows * layout_rows * cell))
        radius = 1.2 * size[0] / grid_cols
        pixels = _image_pixels(rng, size, (centre[0] * size[0], centre[1] * size[1]), radius)
        name = f"synthetic-{seed}.png" if len(grids) == 1 else f"synthetic-{seed}-{index}.png"
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        images.append(SourceImage(name, digest, size, pixels))

        groups: list[list[list[int]]] = []  # tile layouts whose tokens run row by row
        whole = (0.0, 0.0, float(size[0]), float(size[1]))
        tiles.append(Tile(index, whole, grid_rows, grid_cols, "global" if crops else "full"))
        groups.append([[len(tiles) - 1]])
        if crops:
            cw, ch = size[0] / layout_cols, size[1] / layout_rows
            layout = []
            for r in range(layout_rows):
                layout.append([])
                for c in range(layout_cols):
                    box = (c * cw, r * ch, (c + 1) * cw, (r + 1) * ch)
                    tiles.append(Tile(index, box, grid_rows, grid_cols, "crop"))
                    layout[-1].append(len(tiles) - 1)
            groups.append(layout)
        image_reads: list = []
        for number, group in enumerate(groups):
            breaks = row_breaks and number == len(groups) - 1  # the high-resolution grid
            image_reads += _group_reads(group, tiles, grid_rows, grid_cols, merge, breaks)
        reads.append(image_reads)

    offsets = np.cumsum([0] + [t.rows * t.cols for t in tiles])
    for t in tiles:
        boxes.append(_tile_boxes(t.box, t.rows, t.cols))
        w, h = images[t.image].size
        centres = boxes[-1].reshape(-1, 2, 2).mean(1) / (w, h)  # (x, y) fractions
        d2 = ((centres[:, 0] - centre[0]) * grids[t.image][1]) ** 2
        d2 += ((centres[:, 1] - centre[1]) * grids[t.image][0]) ** 2
        width = max(0.8, min(grids[t.image]) / 6)
        blob_parts.append(np.exp(-d2 / (2 * width**2)).astype(np.float32))
    reads = [[_offset(read, offsets) for read in image] for image in reads]
    sequences = [
        np.concatenate([[-1] if cls else [], np.arange(offsets[i], offsets[i + 1])]).astype(
            np.int32
        )
        for i in range(len(tiles))
    ]
    geometry = ImageGeometry(
        images=images,
        tiles=tiles,
        patch_tile=np.repeat(np.arange(len(tiles)), np.diff(offsets)).astype(np.int32),
        patch_boxes=np.concatenate(boxes).astype(np.float32),
        token_patches=PatchMap(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0)),
        vision_sequences=sequences,
        vision_summary="cls" if cls else "mean",
    )
    return _Layout(geometry, reads, np.concatenate(blob_parts))


def _group_reads(
    group: list[list[int]],
    tiles: list[Tile],
    grid_rows: int,
    grid_cols: int,
    merge: int,
    breaks: bool,
) -> list[tuple[int, np.ndarray] | None]:
    """(tile, local patch indices) per token of a tile layout, None for a row break."""
    block_rows, block_cols = grid_rows // merge, grid_cols // merge
    out: list = []
    for row in range(len(group) * block_rows):
        for col in range(len(group[0]) * block_cols):
            tile = group[row // block_rows][col // block_cols]
            r0, c0 = (row % block_rows) * merge, (col % block_cols) * merge
            dr, dc = np.divmod(np.arange(merge * merge), merge)
            out.append((tile, (r0 + dr) * tiles[tile].cols + c0 + dc))
        if breaks:
            out.append(None)
    return out


def _offset(read: tuple[int, np.ndarray] | None, offsets: np.ndarray) -> Read:
    """A token's (patches, weights) with patch numbers made global; None stays None."""
    if read is None:
        return None
    tile, local = read
    return offsets[tile] + local, np.full(len(local), 1.0 / len(local), np.float32)


def _lm_attention(
    seed: int,
    num_layers: int,
    num_heads: int,
    rows: np.ndarray,
    image_weight: np.ndarray,
    same_image: np.ndarray | None,
    noise: float,
) -> np.ndarray:
    """[L, H, R, T] float16: the attention of query ``rows`` (absolute positions)."""
    seq_len = len(image_weight)
    out = np.empty((num_layers, num_heads, len(rows), seq_len), np.float16)
    for layer in range(num_layers):
        heads = np.random.default_rng([seed, 1, layer])  # what each head does, row-independent
        kind = heads.integers(3, size=num_heads)
        band = heads.uniform(1.0, 4.0, num_heads)
        sink = heads.uniform(2.0, 6.0, num_heads)
        looks = heads.random(num_heads) < 0.4
        looking = heads.uniform(2.0, 5.0, num_heads)
        for start in range(0, len(rows), _ROW_CHUNK):
            chunk = rows[start : start + _ROW_CHUNK]
            dist = np.subtract.outer(chunk, np.arange(seq_len)).astype(np.float32)
            masked = dist < 0
            if same_image is not None:
                masked &= ~same_image[chunk]
            logits = np.stack(
                [
                    _noise(np.random.default_rng([seed, 2, layer, r]), (num_heads, seq_len), noise)
                    for r in chunk
                ],
                axis=1,
            )
            for h in range(num_heads):
                logits[h] += np.exp(-np.maximum(dist, 0) / (1.0, 4.0, 32.0)[kind[h]]) * band[h]
                logits[h, :, 0] += sink[h]  # attention sink
                if looks[h]:  # an image-looking head
                    logits[h] += image_weight * looking[h]
            logits[:, masked] = -np.inf
            out[layer, :, start : start + len(chunk)] = _softmax_rows(logits)
    return out


def _vision_attention(
    rng: np.random.Generator, layers: int, heads: int, grid: Grid, cls: bool, noise: float
) -> np.ndarray:
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    d2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    near = np.exp(-d2 / 2.0).astype(np.float32)
    if cls:
        near = np.pad(near, ((1, 0), (1, 0)))
    v = near.shape[0]
    out = np.empty((layers, heads, v, v), np.float16)
    for layer in range(layers):
        logits = _noise(rng, (heads, v, v), noise)
        logits += near * rng.uniform(1.0, 4.0, size=(heads, 1, 1)).astype(np.float32)
        if cls:
            logits[:, :, 0] += rng.uniform(1.0, 4.0, size=(heads, 1)).astype(np.float32)
        out[layer] = _softmax_rows(logits)
    return out


def _cross_attention(
    rng: np.random.Generator,
    num_layers: int,
    num_heads: int,
    seq_len: int,
    key_blob: np.ndarray,
    noise: float,
) -> CrossAttention:
    """Every other LM layer from 1 on attends to the keys (at least one layer)."""
    layers = list(range(1, num_layers, 2)) or [0]
    weights = np.empty((len(layers), num_heads, seq_len, len(key_blob)), np.float16)
    for i in range(len(layers)):
        logits = _noise(rng, (num_heads, seq_len, len(key_blob)), noise)
        logits[..., 0] += rng.uniform(1.0, 3.0, size=(num_heads, 1)).astype(np.float32)
        logits += key_blob * rng.uniform(1.0, 5.0, size=(num_heads, 1, 1)).astype(np.float32)
        weights[i] = _softmax_rows(logits)
    return CrossAttention(layers, weights)


def make_synthetic_trace(
    num_layers: int = 4,
    num_heads: int = 4,
    prompt_len: int = 48,
    answer_len: int = 8,
    grid: Grid | Sequence[Grid] = (4, 6),
    image_start: int = 5,
    vision_layers: int = 2,
    vision_heads: int = 2,
    seed: int = 0,
    *,
    model_id: str = "synthetic/llava-tiny",
    model_revision: str = "synthetic-0",
    created_at: str | None = None,
    trace_id: str | None = None,
    top_k: int = 5,
    patch_px: int = 14,
    vision_has_cls: bool = True,
    with_relevancy: bool = True,
    noise: float = 1.0,
    crops: Grid | None = None,
    merge: int = 1,
    row_breaks: bool = False,
    cross_attention: bool = False,
    bidirectional_images: bool = False,
    policy: RecordingPolicy | str = RecordingPolicy.FULL,
) -> Trace:
    """A complete, self-consistent :class:`Trace` of format 3.

    The default is one image, one tile of ``grid`` patches, one LM token per patch from
    ``image_start`` on (LLaVA-1.5). The answer names a colour and a shape (so answer-token
    search has something to find). Options, freely combined:

    - ``grid``: one (rows, cols) per image, e.g. ``[(4, 6), (2, 4)]`` for two images whose
      vision sequences differ in length; a single pair is one image.
    - ``crops=(r, c)``: each image is a global view plus an ``r x c`` layout of crops, each
      of ``grid`` patches, boxes in original pixels (LLaVA-NeXT).
    - ``merge=2``: each token reads a 2x2 block of patches, weight 1/4 each (Qwen-VL).
    - ``row_breaks``: a token reading no pixels ends each row of the high-resolution grid.
    - ``vision_has_cls=False``: the tower has no CLS token (SigLIP): vision summary "mean".
    - ``vision_layers=0``: no vision attention recorded.
    - ``cross_attention``: Mllama: one ``<|image|>`` text token, no image tokens; the LM
      attends to the vision states through cross-attention keys (CLS + patches per tile).
    - ``bidirectional_images``: image tokens of one image attend to each other both ways.
    - ``policy``: keep only the LM attention rows of that :class:`RecordingPolicy`.
    """
    grids: list[Grid] = [tuple(grid)] if np.ndim(grid) == 1 else [tuple(g) for g in grid]
    if merge < 1 or answer_len < 1 or image_start < 1:
        raise ValueError("need merge >= 1, answer_len >= 1 and image_start >= 1")
    rng = np.random.default_rng(seed)
    layout = _layout(rng, grids, crops, merge, row_breaks, patch_px, vision_has_cls, seed)
    geometry = layout.geometry
    reads = [] if cross_attention else [read for image in layout.token_reads for read in image]
    owners = [] if cross_attention else [i for i, im in enumerate(layout.token_reads) for _ in im]
    n_img = 1 if cross_attention else len(reads)
    if image_start + n_img > prompt_len:
        raise ValueError(f"need image_start + {n_img} image tokens <= prompt_len")
    seq_len = prompt_len + answer_len
    image_cols = slice(image_start, image_start + n_img)

    # tokens
    text_before = [_TEMPLATE[i % len(_TEMPLATE)] for i in range(image_start)]
    n_after = prompt_len - image_start - n_img
    prompt_words = [str(w) for w in rng.choice(_PROMPT_WORDS, size=max(0, n_after - 3))]
    text_after = (["\n", *prompt_words, "ASSISTANT", ":"])[-n_after:] if n_after else []
    text_after = (["?"] * (n_after - len(text_after))) + text_after
    answer = [str(rng.choice(COLOURS)), str(rng.choice(SHAPES))]
    answer += (
        [str(w) for w in rng.choice(_PROMPT_WORDS, size=answer_len - 2)] if answer_len > 2 else []
    )
    answer = answer[:answer_len]
    image_text = ["<|image|>"] if cross_attention else ["<image>"] * n_img
    text = text_before + image_text + text_after + answer
    vocab: dict[str, int] = {}
    ids = np.array([vocab.setdefault(t, 10 + len(vocab)) for t in text], np.int64)
    roles = np.full(seq_len, TokenRole.TEXT, np.int8)
    image_index = np.full(seq_len, -1, np.int32)
    if not cross_attention:
        roles[image_cols] = TokenRole.IMAGE
        image_index[image_cols] = owners
    roles[prompt_len:] = TokenRole.ANSWER
    word_ids = np.full(seq_len, -1, np.int32)
    is_text = roles == TokenRole.TEXT
    word_ids[is_text] = np.arange(int(is_text.sum()))
    word_ids[prompt_len:] = np.arange(answer_len)

    # the token -> patch map, and how much each position shows the disk
    read_rows = [image_start + i for i, read in enumerate(reads) if read is not None]
    kept = [read for read in reads if read is not None]
    geometry.token_patches = PatchMap(
        np.repeat(np.asarray(read_rows, np.int32), [len(p) for p, _ in kept]).astype(np.int32),
        np.concatenate([p for p, _ in kept] or [np.zeros(0)]).astype(np.int32),
        np.concatenate([w for _, w in kept] or [np.zeros(0)]).astype(np.float32),
    )
    image_weight = np.zeros(seq_len, np.float32)
    for row, (patches, weights) in zip(read_rows, kept, strict=True):
        image_weight[row] = weights @ layout.patch_blob[patches]
    tokens = TokenTable(
        ids,
        text,
        roles,
        word_ids,
        geometry.token_patches.main_patch(seq_len),
        prompt_len,
        image_index,
    )

    # attention
    rows = policy_rows(policy, tokens)
    kept_rows = np.arange(seq_len) if rows is None else rows
    same_image = None
    if bidirectional_images:
        same_image = (image_index[:, None] == image_index[None]) & (image_index[:, None] >= 0)
    lm = _lm_attention(seed, num_layers, num_heads, kept_rows, image_weight, same_image, noise)
    vision = None
    if vision_layers > 0:
        vision = [
            _vision_attention(
                rng, vision_layers, vision_heads, (t.rows, t.cols), vision_has_cls, noise
            )
            for t in geometry.tiles
        ]
    cross = None
    if cross_attention:
        key_patches = np.concatenate([np.r_[-1, s[s >= 0]] for s in geometry.vision_sequences])
        geometry.key_patches = PatchMap.one_to_one(np.arange(len(key_patches)), key_patches)
        key_blob = np.where(key_patches >= 0, layout.patch_blob[np.maximum(key_patches, 0)], 0)
        cross = _cross_attention(rng, num_layers, num_heads, seq_len, key_blob, noise)

    # summaries from the rows that produced each answer token
    at = np.searchsorted(kept_rows, [tokens.answer_row(k) for k in range(answer_len)])
    answer_att = lm[:, :, at, :].astype(np.float32)  # [L, H, N, T]
    img_share = answer_att[..., roles == TokenRole.IMAGE].sum(-1)
    ans_share = answer_att[..., prompt_len:].sum(-1)
    shares = np.stack([img_share, answer_att.sum(-1) - img_share - ans_share, ans_share], -1)
    summaries = Summaries(shares.astype(np.float32), img_share.mean(-1).astype(np.float32))

    relevancy = None
    if with_relevancy:
        llm = answer_att[-1].mean(0) + 0.01 * rng.random((answer_len, seq_len), np.float32)
        vision_map = np.tile(layout.patch_blob / layout.patch_blob.sum(), (answer_len, 1))
        spread = llm[:, read_rows] @ geometry.token_patches.matrix(
            np.asarray(read_rows, np.int64), geometry.num_patches
        )
        keys = None
        if cross is not None:  # the image's share sits on the keys; llm + keys sum to 1
            answer_rows = [tokens.answer_row(k) for k in range(answer_len)]
            keys = cross.weights[-1][:, answer_rows].astype(np.float32).mean(0)
            total = llm.sum(-1, keepdims=True) + keys.sum(-1, keepdims=True)
            llm, keys = llm / total, keys / total
            spread = keys @ geometry.key_patches.matrix(
                np.arange(keys.shape[1]), geometry.num_patches
            )
        through = (spread + 1e-3 / geometry.num_patches) * vision_map
        through /= through.sum(-1, keepdims=True)
        # near vision, as on real models; cross-attention families have no seed "all"
        seed_all = None if cross is not None else 0.98 * vision_map + 0.02 * through
        relevancy = Relevancy(
            llm.astype(np.float32),
            vision_map.astype(np.float32),
            None if seed_all is None else seed_all.astype(np.float32),
            through.astype(np.float32),
            keys,
        )

    # top-k: the generated token first
    probs = np.sort(rng.dirichlet(np.ones(top_k + 1), size=answer_len)[:, :top_k], axis=1)[:, ::-1]
    topk_ids = np.stack(
        [ids[prompt_len:]] + [rng.integers(10, 1000, answer_len) for _ in range(top_k - 1)], 1
    )
    topk_text = [[answer[k]] + [f"tok{int(i)}" for i in topk_ids[k, 1:]] for k in range(answer_len)]
    top = TopK(
        topk_ids.astype(np.int64),
        probs.astype(np.float32),
        topk_text,
        probs[:, 0].astype(np.float32),
    )

    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=int(seed))
    info = TraceInfo(
        trace_id=trace_id or new_trace_id(),
        model_id=model_id,
        model_revision=model_revision,
        prompt=" ".join(t for t in text_after if t not in ("\n", "ASSISTANT", ":", "?")),
        answer=" ".join(answer),
        image_name=geometry.images[0].name,
        image_sha256=geometry.images[0].sha256,
        created_at=created_at or base.isoformat(),
        generation=GenerationSettings(max_new_tokens=answer_len, top_k_logged=top_k, seed=seed),
        extra={"synthetic_seed": seed},
    )
    return Trace(info, tokens, geometry, top, lm, vision, relevancy, summaries, rows, cross)
