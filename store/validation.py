"""Reject a :class:`~store.Trace` whose parts disagree, before anything is written.

A trace that reaches the disk is read by views that trust its shapes and maps (a token
reading patch 900 of a 576-patch image would draw nowhere, or crash a view much later), so
every cross-reference of the schema is checked here, with a message naming the field.
"""

from __future__ import annotations

import numpy as np

from .schema import ImageGeometry, PatchMap, Trace

_WEIGHT_SUM_TOLERANCE = 1e-3  # float32 weights of up to a few hundred patches per row


def _shape(array: object) -> tuple[int, ...]:
    return tuple(np.shape(array))


def _ints_in(values: np.ndarray, low: int, high: int, what: str) -> None:
    values = np.asarray(values)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got {values.dtype}")
    if values.size and (values.min() < low or values.max() >= high):
        raise ValueError(f"{what} must lie in {low}..{high - 1}")


def _check_map(pm: PatchMap, rows: int, patches: int, what: str) -> None:
    if not len(pm.rows) == len(pm.patches) == len(pm.weights):
        raise ValueError(f"{what}: rows, patches and weights differ in length")
    _ints_in(pm.rows, 0, rows, f"{what} rows")
    _ints_in(pm.patches, 0, patches, f"{what} patches")
    weights = np.asarray(pm.weights, np.float64)
    if weights.size and (not np.isfinite(weights).all() or weights.min() <= 0):
        raise ValueError(f"{what} weights must be finite and positive")
    if pm.rows.size:
        sums = np.bincount(np.asarray(pm.rows), weights=weights)[np.unique(pm.rows)]
        if np.abs(sums - 1).max() > _WEIGHT_SUM_TOLERANCE:
            raise ValueError(f"{what}: each row's weights must sum to 1")


def _check_geometry(geo: ImageGeometry, seq_len: int, keys: int | None) -> None:
    if not geo.images:
        raise ValueError("image.images is empty: a trace holds at least one image")
    for i, im in enumerate(geo.images):
        if len(im.size) != 2 or min(im.size) < 1:
            raise ValueError(f"image.images[{i}].size must be (width, height) >= 1")
        if np.ndim(im.pixels) != 3 or _shape(im.pixels)[2] != 3:
            raise ValueError(f"image.images[{i}].pixels must be [h, w, 3]")
    if not geo.tiles:
        raise ValueError("image.tiles is empty: every image needs at least one tile")
    for i, tile in enumerate(geo.tiles):
        if not 0 <= tile.image < len(geo.images) or tile.rows < 1 or tile.cols < 1:
            raise ValueError(f"image.tiles[{i}] names no image or has an empty grid")
        if len(tile.box) != 4:
            raise ValueError(f"image.tiles[{i}].box must be (x0, y0, x1, y1)")
    counts = [t.rows * t.cols for t in geo.tiles]
    expected = np.repeat(np.arange(len(geo.tiles)), counts)
    if not np.array_equal(np.asarray(geo.patch_tile), expected):
        raise ValueError("image.patch_tile must number patches tile by tile (rows x cols each)")
    num = len(expected)
    if _shape(geo.patch_boxes) != (num, 4):
        raise ValueError(f"image.patch_boxes must be [{num}, 4], got {_shape(geo.patch_boxes)}")
    _check_map(geo.token_patches, seq_len, num, "image.token_patches")
    if geo.vision_summary not in ("cls", "mean"):
        raise ValueError(
            f"image.vision_summary must be 'cls' or 'mean', not {geo.vision_summary!r}"
        )
    for s, sequence in enumerate(geo.vision_sequences):
        if np.ndim(sequence) != 1:
            raise ValueError(f"image.vision_sequences[{s}] must be 1-D")
        _ints_in(sequence, -1, num, f"image.vision_sequences[{s}]")
    if (keys is None) != (geo.key_patches is None):
        raise ValueError("cross_attention and image.key_patches come together (or neither)")
    if keys is not None:
        _check_map(geo.key_patches, keys, num, "image.key_patches")


def _check_rows(trace: Trace, seq_len: int) -> int:
    """The number of stored query rows ``lm_rows`` asks for."""
    if trace.lm_rows is None:
        return seq_len
    rows = np.asarray(trace.lm_rows)
    if rows.ndim != 1 or rows.size == 0:
        raise ValueError("lm_rows must be a non-empty 1-D array of query rows")
    _ints_in(rows, 0, seq_len, "lm_rows")
    if np.any(np.diff(rows) <= 0):
        raise ValueError("lm_rows must be strictly increasing")
    return len(rows)


def check_trace(trace: Trace) -> None:
    """Raise ``ValueError`` naming the first part of ``trace`` that disagrees with another."""
    tok = trace.tokens
    t = len(tok.text)
    if not 0 < tok.prompt_length <= t:
        raise ValueError(f"prompt_length {tok.prompt_length} outside 1..{t}")
    for name in ("ids", "roles", "word_ids", "image_patch", "image_index"):
        if len(getattr(tok, name)) != t:
            raise ValueError(f"tokens.{name} has {len(getattr(tok, name))} entries, expected {t}")
    _ints_in(tok.image_index, -1, len(trace.image.images), "tokens.image_index")

    att = trace.lm_attention
    rows = _check_rows(trace, t)
    if len(_shape(att)) != 4 or _shape(att)[2:] != (rows, t):
        raise ValueError(f"lm_attention must be [L, H, {rows}, {t}] (T={t}), got {_shape(att)}")

    cross = trace.cross_attention
    keys = None
    if cross is not None:
        shape = _shape(cross.weights)
        if len(shape) != 4 or shape[2] != t or len(cross.layers) != shape[0]:
            raise ValueError(f"cross_attention.weights must be [{len(cross.layers)}, H, {t}, K]")
        # decoder-layer indices: self- and cross-attention layers share one stack (Mllama)
        depth = _shape(att)[0] + len(cross.layers)
        _ints_in(np.asarray(cross.layers, np.int64), 0, depth, "cross_attention.layers")
        keys = shape[3]
    _check_geometry(trace.image, t, keys)

    vis = trace.vision_attention
    if vis is not None:
        sequences = trace.image.vision_sequences
        if len(vis) != len(sequences):
            raise ValueError(
                f"vision_attention has {len(vis)} sequences, image.vision_sequences "
                f"{len(sequences)}"
            )
        for s, (array, sequence) in enumerate(zip(vis, sequences, strict=True)):
            v = len(sequence)
            shape = _shape(array)
            if len(shape) != 4 or shape[2:] != (v, v) or shape[:2] != _shape(vis[0])[:2]:
                raise ValueError(
                    f"vision_attention[{s}] must be [Lv, Hv, {v}, {v}] like the first, got {shape}"
                )

    rel = trace.relevancy
    if rel is not None:
        n, g = t - tok.prompt_length, trace.image.num_patches
        for mode in rel.modes:
            want = (n, t) if mode.value == "llm" else (n, g)
            if _shape(rel.map(mode)) != want:
                raise ValueError(f"relevancy.{mode.value} must be {list(want)}")
        if rel.llm_keys is not None and _shape(rel.llm_keys) != (n, keys):
            raise ValueError(f"relevancy.llm_keys must be [{n}, K] with cross-attention's K keys")
