"""The Gemma 3 and PaliGemma adapters against the tiny models' own behaviour.

Tiny sizes (builders): both towers see a 32 px square. Gemma 3: 4 px patches (8x8) pooled 2x2
into 4x4 tokens; pan & scan (minimum crop 8 px here, 256 in the real processor) cuts a 120x40
(w x h) image into three 40 px strips. PaliGemma: 8 px patches (4x4), one token each.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from engine.adapters import adapter_for
from engine.adapters.gemma3 import Gemma3Adapter, PanAndScan
from engine.capture import capture_attention
from engine.errors import PromptError, UnsupportedModelError
from engine.inputs import ImageInput, load_image
from engine.loading import load_model
from engine.recorder import RecordOptions, record
from store import GenerationSettings, RelevancyMode, open_store
from tests.engine.families import oracle
from tests.engine.families.generation import greedy_answer
from tests.engine.families.images import noise_image, painted
from tests.engine.families.pieces import check_whole_sequence_pieces
from tests.engine.families.recording import record_with_cli, save_images
from tests.engine.families.relevancy_reference import reference_relevancy

PROMPT = "what is in the image ?"
PAN_AND_SCAN = PanAndScan(min_crop_size=8)
# (height, width) of each image of a prompt; whether Gemma 3 pans and scans it.
CASES = {
    "gemma3": {
        "wide": ([(40, 56)], None),
        "wide pan & scan": ([(40, 120)], PAN_AND_SCAN),
        "tall pan & scan + square": ([(120, 40), (40, 44)], PAN_AND_SCAN),
    },
    "paligemma": {"wide": ([(40, 56)], None), "tall": ([(90, 30)], None)},
}
CASE_IDS = [(name, case) for name, cases in CASES.items() for case in cases]


def sources(pictures: list[Image.Image]) -> list[ImageInput]:
    return [load_image(p, f"image{i}") for i, p in enumerate(pictures)]


def adapter_of(built, pan_and_scan: PanAndScan | None):
    if built.spec.name == "gemma3":
        return Gemma3Adapter(built.model, built.processor, pan_and_scan)
    return adapter_for(built.model, built.processor)


def setup(build, name: str, case: str):
    sizes, pan_and_scan = CASES[name][case]
    built = build(name)
    images = sources([noise_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)])
    adapter = adapter_of(built, pan_and_scan)
    inputs = adapter.build_inputs(images, PROMPT)
    return built, adapter, images, inputs


def reads_by_tile(geometry) -> dict[int, dict[tuple[int, int, int], float]]:
    """Position -> {(tile, row, col): weight} from the adapter's token -> patch map."""
    out: dict[int, dict] = {}
    token_map = geometry.token_patches
    for row, patch, weight in zip(
        token_map.rows, token_map.patches, token_map.weights, strict=True
    ):
        tile = int(geometry.patch_tile[patch])
        local = int(patch) - geometry.tile_patches(tile).start
        key = (tile, *divmod(local, geometry.tiles[tile].cols))
        out.setdefault(int(row), {})[key] = float(weight)
    return out


@pytest.mark.parametrize(("name", "case"), CASE_IDS)
def test_token_patch_map_is_what_the_model_reads(build, name, case):
    """Every image token's patches and weights equal the gradient oracle's; each view of
    ``pixel_values`` is one tile, in order; the oracle's processed-pixel boxes, carried through
    the tile's box, are the geometry's patch boxes in original pixels."""
    built, adapter, images, inputs = setup(build, name, case)
    placement = adapter.geometry(inputs, images)
    geometry = placement.geometry
    model = built.model.requires_grad_(False)
    reads = oracle.token_patch_map(model, inputs, built.processor)
    patch = oracle.patch_size(model)
    side = inputs["pixel_values"].shape[-1]

    expected = {
        p: {(r.image, r.box[1] // patch, r.box[0] // patch): r.weight for r in rs}
        for p, rs in reads.items()
    }
    got = reads_by_tile(geometry)
    assert got.keys() == expected.keys()
    for position, patches in got.items():
        assert patches.keys() == expected[position].keys(), position
        for key, weight in patches.items():
            assert weight == pytest.approx(expected[position][key], abs=1e-5)

    for position, rs in reads.items():
        for r in rs:
            tile = geometry.tiles[r.image]
            x0, y0, x1, y1 = tile.box
            sx, sy = (x1 - x0) / side, (y1 - y0) / side
            box = (x0 + r.box[0] * sx, y0 + r.box[1] * sy, x0 + r.box[2] * sx, y0 + r.box[3] * sy)
            local = (r.box[1] // patch) * tile.cols + r.box[0] // patch
            index = geometry.tile_patches(r.image).start + local
            np.testing.assert_allclose(geometry.patch_boxes[index], box, rtol=1e-6)
            assert placement.image_index[position] == tile.image
    text = np.setdiff1d(np.arange(inputs["input_ids"].shape[1]), list(reads))
    assert (placement.image_index[text] == -1).all()


def test_pan_and_scan_views(build):
    """The wide image is the global view then three 40 px strips; the tall one three strips
    top to bottom; the near-square one (ratio 1.1) stays whole."""
    _, adapter, images, inputs = setup(build, "gemma3", "tall pan & scan + square")
    tiles = adapter.geometry(inputs, images).geometry.tiles
    assert [(t.image, t.kind, t.box) for t in tiles] == [
        (0, "global", (0, 0, 40, 120)),
        (0, "crop", (0, 0, 40, 40)),
        (0, "crop", (0, 40, 40, 80)),
        (0, "crop", (0, 80, 40, 120)),
        (1, "full", (0, 0, 44, 40)),
    ]
    _, adapter, images, inputs = setup(build, "gemma3", "wide pan & scan")
    tiles = adapter.geometry(inputs, images).geometry.tiles
    assert [t.box for t in tiles] == [
        (0, 0, 120, 40),
        (0, 0, 40, 40),
        (40, 0, 80, 40),
        (80, 0, 120, 40),
    ]


# A red square on black, on patch boundaries of every view of CASES (boxes inclusive).
SQUARES = {"wide pan & scan": (30, 10, 59, 19), "tall pan & scan + square": (10, 30, 19, 59)}
SQUARES_PALIGEMMA = {"wide": (14, 10, 41, 29), "tall": (15, 45, 29, 89)}


def red_share(pixel_values: torch.Tensor, patch: int) -> np.ndarray:
    """[views, rows, cols]: how red each processed patch is (0 black, 1 red), from the red
    channel normalised with mean 0.5 and std 0.5 (-1 black, +1 red)."""
    red = (pixel_values[:, 0].numpy() + 1) / 2
    views, h, w = red.shape
    return red.reshape(views, h // patch, patch, w // patch, patch).mean(axis=(2, 4))


@pytest.mark.parametrize(
    ("name", "case", "square"),
    [("gemma3", c, s) for c, s in SQUARES.items()]
    + [("paligemma", c, s) for c, s in SQUARES_PALIGEMMA.items()],
)
def test_painted_square_is_red_where_the_boxes_say(build, name, case, square):
    """A patch is red in the processed pixels exactly when its box in original pixels (from the
    geometry) has its centre inside the painted square: the crops' boxes are where the
    processor cut."""
    sizes, pan_and_scan = CASES[name][case]
    built = build(name)
    pictures = [Image.new("RGB", (w, h)) for h, w in sizes]
    pictures[0] = painted(pictures[0], square)
    images = sources(pictures)
    adapter = adapter_of(built, pan_and_scan)
    inputs = adapter.build_inputs(images, PROMPT)
    geometry = adapter.geometry(inputs, images).geometry
    patch = oracle.patch_size(built.model)

    centre = (geometry.patch_boxes[:, :2] + geometry.patch_boxes[:, 2:]) / 2
    x0, y0, x1, y1 = square[0], square[1], square[2] + 1, square[3] + 1
    inside = (
        (centre[:, 0] > x0)
        & (centre[:, 0] < x1)
        & (centre[:, 1] > y0)
        & (centre[:, 1] < y1)
        & (np.array([geometry.tiles[t].image for t in geometry.patch_tile]) == 0)
    )
    red = red_share(inputs["pixel_values"], patch).reshape(-1) > 0.5
    assert inside.any()
    np.testing.assert_array_equal(red, inside)


@pytest.mark.parametrize(("name", "case"), CASE_IDS)
def test_vision_pieces_cover_each_view(build, name, case):
    """One captured call per vision layer, one batch row per view: each piece is the whole
    [V, V] attention of its sequence, rows summing to 1, every (layer, sequence) once."""
    built, adapter, images, inputs = setup(build, name, case)
    geometry = adapter.geometry(inputs, images).geometry
    pieces = check_whole_sequence_pieces(adapter, built.model, inputs, geometry)
    assert len(geometry.vision_sequences) == inputs["pixel_values"].shape[0] == len(geometry.tiles)
    for piece in pieces:
        tile = geometry.tile_patches(piece.sequence)
        sequence = geometry.vision_sequences[piece.sequence]
        np.testing.assert_array_equal(sequence, np.arange(tile.start, tile.stop))
    assert geometry.vision_summary == "mean"  # SigLIP has no CLS


@pytest.mark.parametrize(
    ("name", "case"), [("gemma3", "tall pan & scan + square"), ("paligemma", "wide")]
)
def test_teacher_forced_pass_is_what_generation_saw(build, name, case):
    """The forced pass over prompt + answer (side inputs grown as the adapter says) gives the
    logits generation gave, and its LM attention has the mask the adapter names: Gemma 3's
    image blocks and PaliGemma's prefix attend both ways, everything else causally."""
    built, adapter, _, inputs = setup(build, name, case)
    sequence, steps = greedy_answer(built.model, inputs)
    prompt_length = inputs["input_ids"].shape[1]
    forced = adapter.forced_inputs(inputs, sequence)
    modules = adapter.language_attention_modules()
    with torch.no_grad(), capture_attention(modules) as captured:
        logits = built.model(**forced).logits[0, prompt_length - 1 : -1]
    torch.testing.assert_close(logits, steps, rtol=1e-4, atol=1e-4)

    attention = captured[0][0].sum(0)  # [T, T] over heads
    length = len(sequence)
    image = (sequence == adapter.image_token_id).numpy()
    both_ways = np.zeros((length, length), bool)
    if adapter.lm_mask == "prefix":
        both_ways[:prompt_length, :prompt_length] = True
    else:  # image blocks: each run of image tokens
        edges = np.flatnonzero(np.diff(np.concatenate([[0], image.astype(int), [0]])))
        for start, end in edges.reshape(-1, 2):
            both_ways[start:end, start:end] = True
    future = np.triu(np.ones((length, length), bool), k=1)
    reads_future = (attention > 0).numpy() & future
    np.testing.assert_array_equal(reads_future, both_ways & future)


def test_paligemma_prompt_is_the_processors_convention(build):
    """Image tokens first, then BOS, the user's text unchanged, a newline; no labels."""
    built = build("paligemma")
    adapter = adapter_for(built.model, built.processor)
    images = sources([noise_image()])
    inputs = adapter.build_inputs(images, PROMPT)
    assert "labels" not in inputs
    tokenizer = built.processor.tokenizer
    ids = inputs["input_ids"][0].tolist()
    assert ids[:16] == [adapter.image_token_id] * 16
    assert ids[16] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[17:]).split() == PROMPT.split()
    assert inputs["token_type_ids"].eq(0).all()  # the whole prompt is the prefix
    with pytest.raises(PromptError, match="one image"):
        adapter.build_inputs(images * 2, PROMPT)


def test_two_images_recorded_through_the_cli(build, tmp_path):
    """``record`` with two ``--image``: two tiles, each image token knows its image, one vision
    sequence per image, relevancy on all 128 patches; read back from the store."""
    built = build("gemma3")
    noise = [noise_image(h, w, seed=i) for i, (h, w) in enumerate([(40, 56), (48, 48)])]
    store = tmp_path / "store"
    trace_id = record_with_cli(built.folder, save_images(noise, tmp_path), PROMPT, store, 3)
    with open_store(store) as opened, opened.open(trace_id) as trace:
        geometry, tokens = trace.image, trace.tokens
        assert [(t.image, t.kind, t.box) for t in geometry.tiles] == [
            (0, "full", (0, 0, 56, 40)),
            (1, "full", (0, 0, 48, 48)),
        ]
        on_image = tokens.image_index[tokens.image_positions]
        np.testing.assert_array_equal(on_image, np.repeat([0, 1], 16))
        for sequence in range(2):
            assert trace.vision_attention_layer(1, sequence).shape == (2, 64, 64)
        for mode in trace.relevancy.modes:
            assert trace.relevancy.on_patches(mode, geometry).shape == (3, 128)
        assert trace.info.extra["recording"]["lm_mask"] == "image blocks"


def test_pan_and_scan_recorded(build):
    """The recorder with a pan & scan adapter, two images: the wide one's global view and three
    crops, then the near-square one whole, are five tiles and five vision sequences; every
    relevancy mode equals the slow float64 reference."""
    built = build("gemma3")
    loaded = load_model(str(built.folder))
    loaded = dataclasses.replace(
        loaded, adapter=Gemma3Adapter(loaded.model, loaded.processor, PAN_AND_SCAN)
    )
    images = sources([noise_image(40, 120), noise_image(40, 44, seed=1)])
    trace = record(loaded, images, PROMPT, RecordOptions(GenerationSettings(max_new_tokens=2)))
    geometry = trace.image
    kinds = [(t.image, t.kind) for t in geometry.tiles]
    assert kinds == [(0, "global"), (0, "crop"), (0, "crop"), (0, "crop"), (1, "full")]
    assert [a.shape for a in trace.vision_attention] == [(2, 2, 64, 64)] * 5
    inputs = loaded.adapter.build_inputs(images, PROMPT)
    expected = reference_relevancy(loaded, inputs, trace.tokens.ids, geometry)
    for mode, reference in zip(RelevancyMode, expected, strict=True):
        ours = trace.relevancy.map(mode)
        scale = max(float(np.abs(reference).max()), 1.0)
        np.testing.assert_allclose(ours, reference, atol=1e-5 * scale, err_msg=mode)


def test_geometry_refuses_inputs_built_with_other_pan_and_scan_settings(build):
    """Crops the adapter was not told about would shift every later view's boxes: refused."""
    built, _, images, inputs = setup(build, "gemma3", "wide pan & scan")
    plain = Gemma3Adapter(built.model, built.processor)
    with pytest.raises(UnsupportedModelError, match="4 view"):
        plain.geometry(inputs, images)
