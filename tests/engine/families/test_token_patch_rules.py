"""Each family's token → patch rule, written out, equals what the oracle reads from the model.

The rules are stated for the 40×56 (h×w) noise image of the conftest, in patch units: a token
reads [(image, tile, row, col), ...] (empty: reads no pixels). The image tokens are listed in
sequence order. These are the rules an adapter has to implement; the numbers of each family
(tile counts, grids, newline rows) are in the docstrings of the rule functions.
"""

from __future__ import annotations

import itertools

import pytest

from tests.engine.families import oracle
from tests.engine.families.builders import prompt_inputs
from tests.engine.families.images import noise_image

Patch = tuple[int, int, int, int]  # image, tile, row, col


def raster(rows: int, cols: int, tile: int = 0) -> list[list[Patch]]:
    """One token per patch, row by row."""
    return [[(0, tile, r, c)] for r in range(rows) for c in range(cols)]


def merged(rows: int, cols: int, tile: int = 0, k: int = 2) -> list[list[Patch]]:
    """One token per k×k block of a rows×cols patch grid, blocks row by row."""
    return [
        [(0, tile, k * br + a, k * bc + b) for a in range(k) for b in range(k)]
        for br in range(rows // k)
        for bc in range(cols // k)
    ]


def llava() -> list[list[Patch]]:
    """64 px (shortest edge, centre crop), 8 px patches: 8×8 tokens; CLS dropped."""
    return raster(8, 8)


def paligemma() -> list[list[Patch]]:
    """32 px squash, 8 px patches: 4×4 tokens first in the sequence."""
    return raster(4, 4)


def gemma3() -> list[list[Patch]]:
    """32 px squash, 4 px patches (8×8) average-pooled 2×2: 4×4 tokens."""
    return merged(8, 8)


def qwen() -> list[list[Patch]]:
    """Resized to 32×64 (multiples of 16): 4×8 patches of 8 px, a token per 2×2 merge block."""
    return merged(4, 8)


def tiles_then_global(tiles: int, grid: int) -> list[list[Patch]]:
    """Idefics3 / SmolVLM / InternVL / Aya Vision: 64 px longest edge → 2×2 tiles of 32 px,
    row-major, then the whole image squashed to one tile last; 4×4 patches a tile, pixel
    shuffle 2: 2×2 tokens a tile."""
    return [t for tile in range(tiles) for t in merged(grid, grid, tile)]


def mllama() -> list[list[Patch]]:
    """Cross-attention key rows (no image tokens in the sequence): aspect ratio 2×2 → 4 tiles of
    32 px, each CLS (reads no pixels) then 4×4 patches row by row."""
    return [t for tile in range(4) for t in [[], *raster(4, 4, tile)]]


def llava_next_high_resolution() -> list[list[Patch]]:
    """The anyres part after the 4×4 base tile: canvas 64×64 = 2×2 tiles of 32 px (tiles 1–4,
    row-major), an 8×8 patch grid unpadded to rows 1–6 (the image is 40/56 as tall as wide),
    all 8 columns, a newline token after each row."""
    tokens: list[list[Patch]] = []
    for row in range(1, 7):
        for col in range(8):
            tile = 1 + (row // 4) * 2 + col // 4
            tokens.append([(0, tile, row % 4, col % 4)])
        tokens.append([])
    return tokens


RULES = {
    "llava": llava,
    "paligemma": paligemma,
    "gemma3": gemma3,
    "qwen2_vl": qwen,
    "qwen2_5_vl": qwen,
    "qwen3_vl": qwen,
    "idefics3": lambda: tiles_then_global(5, 4),
    "smolvlm": lambda: tiles_then_global(5, 4),
    "internvl": lambda: tiles_then_global(5, 4),
    "aya_vision": lambda: tiles_then_global(5, 4),
    "mllama": mllama,
    "llava_next": lambda: raster(4, 4) + llava_next_high_resolution(),
}


def read_map(built) -> list[list[Patch]]:
    """The oracle's map in sequence order, boxes turned into (row, col) patch indices."""
    model = built.model.requires_grad_(False)
    reads = oracle.token_patch_map(model, prompt_inputs(built, [noise_image()]), built.processor)
    size = oracle.patch_size(model)
    return [
        sorted((r.image, r.tile, r.box[1] // size, r.box[0] // size) for r in reads[p])
        for p in sorted(reads)
    ]


@pytest.mark.parametrize("name", list(RULES))
def test_rule_is_what_the_model_reads(build, name):
    assert read_map(build(name)) == [sorted(t) for t in RULES[name]()]


def bilinear(size_in: int, size_out: int, index: int) -> dict[int, float]:
    """Source weights of output ``index`` in a bilinear resize (align_corners=False)."""
    source = max((index + 0.5) * size_in / size_out - 0.5, 0.0)
    low = min(int(source), size_in - 1)
    high = min(low + 1, size_in - 1)
    weights = {low: 1 - (source - low)}
    weights[high] = weights.get(high, 0.0) + source - low
    return weights


def test_onevision_shrinks_bilinearly_with_exact_weights(build):
    """OneVision: base 4×4 raster; the unpadded 6×8 grid has more than max·16 = 32 features
    (anyres_max_2), so it is resized bilinearly to 4×6, a newline after each row: a token mixes
    up to 2×2 patches with the interpolation's coefficients."""
    built = build("llava_onevision")
    model = built.model.requires_grad_(False)
    reads = oracle.token_patch_map(model, prompt_inputs(built, [noise_image()]), built.processor)
    positions = sorted(reads)
    assert [len(reads[p]) for p in positions[:16]] == [1] * 16
    high = positions[16:]
    assert len(high) == 4 * (6 + 1)
    size = oracle.patch_size(model)
    for row, col in itertools.product(range(4), range(7)):
        got = reads[high[row * 7 + col]]
        if col == 6:
            assert got == []  # the row's newline
            continue
        expected = {}
        for (r, wr), (c, wc) in itertools.product(
            bilinear(6, 4, row).items(), bilinear(8, 6, col).items()
        ):
            unpadded = r + 1  # rows 1-6 of the 8-row canvas
            tile = 1 + (unpadded // 4) * 2 + c // 4
            expected[(tile, unpadded % 4, c % 4)] = wr * wc
        measured = {(x.tile, x.box[1] // size, x.box[0] // size): x.weight for x in got}
        assert measured.keys() == {k for k, w in expected.items() if w > 0}
        for key, weight in measured.items():
            assert weight == pytest.approx(expected[key], abs=1e-5)


def test_gemma3_pooling_weights_are_a_quarter(build):
    built = build("gemma3")
    reads = oracle.token_patch_map(
        built.model.requires_grad_(False), prompt_inputs(built, [noise_image()]), built.processor
    )
    weights = [r.weight for rs in reads.values() for r in rs]
    assert weights == pytest.approx([0.25] * 64, abs=1e-5)
