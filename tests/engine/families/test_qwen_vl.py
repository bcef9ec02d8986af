"""The Qwen2-VL, Qwen2.5-VL and Qwen3-VL adapters against the tiny models' own behaviour.

Sizes (h x w) used here, with the builders' 8 px patches and 16 px merge blocks: 40x56 is
resized to 32x64 (shrunk in y, stretched in x: 4x8 patches), 70x30 to 64x32 (8x4), 48x80 stays
48x80 (6x10 patches, 3x5 merge blocks: Qwen2.5-VL's 2x2-block windows come out uneven).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from engine.adapters import Placement, VisionPiece, VlmAdapter, adapter_for
from engine.capture import capture_vision_attention
from engine.errors import UnsupportedModelError
from engine.inputs import ImageInput, load_image
from engine.loading import load_model
from store import RelevancyMode, open_store
from store.schema import ImageGeometry
from tests.engine.families import oracle
from tests.engine.families.builders import QWEN_TOKENS, Built, prompt_inputs, with_video
from tests.engine.families.generation import greedy_answer
from tests.engine.families.images import noise_image, painted
from tests.engine.families.recording import record_with_cli, save_images
from tests.engine.families.relevancy_reference import reference_relevancy

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PATCH = 8  # the builders' vision patch size
SIZES = {  # (height, width) of each image of a prompt
    "wide": [(40, 56)],
    "tall": [(70, 30)],
    "two images": [(40, 56), (48, 80)],
}


def images_of(sizes: list[tuple[int, int]]) -> list[Image.Image]:
    return [noise_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]


def placement_of(built: Built, images: list[Image.Image]) -> tuple[dict, VlmAdapter, Placement]:
    inputs = prompt_inputs(built, images)
    adapter = adapter_for(built.model, built.processor)
    sources = [load_image(im, f"image{i}") for i, im in enumerate(images)]
    return inputs, adapter, adapter.geometry(inputs, sources)


def processed_sizes(built: Built, inputs: dict) -> dict[int, tuple[int, int]]:
    """(height, width) of each processed image, from the oracle's own pixel layout."""
    maps = oracle.pixel_maps(built.model, inputs, inputs["pixel_values"], built.processor)
    return {image: values.shape for (image, _), values in maps.items()}


def processed_box(
    geometry: ImageGeometry, patch: int, shapes: dict[int, tuple[int, int]]
) -> tuple[int, ...]:
    """The box of ``patch`` (original pixels) in its processed image's pixels, which must fall
    on the processed image's patch grid."""
    tile = geometry.tiles[geometry.patch_tile[patch]]
    width, height = tile.box[2] - tile.box[0], tile.box[3] - tile.box[1]
    h, w = shapes[tile.image]
    x0, y0, x1, y1 = geometry.patch_boxes[patch]
    scaled = (x0 * w / width, y0 * h / height, x1 * w / width, y1 * h / height)
    box = tuple(round(v) for v in scaled)
    assert scaled == pytest.approx(box, abs=1e-3)
    return box


class _Stop(Exception):
    """Ends a forward pass once the LM's inputs are seen."""


@pytest.mark.parametrize("sizes", list(SIZES.values()), ids=list(SIZES))
@pytest.mark.parametrize("name", FAMILIES)
def test_token_patch_map_is_what_the_model_reads(build, name, sizes):
    """Patches, weights, image of every image token, and patch boxes (original pixels mapped
    to the processed image) equal the gradient oracle's reads exactly."""
    built = build(name)
    images = images_of(sizes)
    inputs, _, placement = placement_of(built, images)
    geometry = placement.geometry
    reads = oracle.token_patch_map(built.model.requires_grad_(False), inputs, built.processor)
    shapes = processed_sizes(built, inputs)

    expected = {p: {(r.image, r.tile, r.box): r.weight for r in rs} for p, rs in reads.items()}
    got: dict[int, dict] = {}
    token_map = geometry.token_patches
    for row, patch, weight in zip(
        token_map.rows, token_map.patches, token_map.weights, strict=True
    ):
        tile = geometry.tiles[geometry.patch_tile[patch]]
        assert tile.box == (0, 0, *images[tile.image].size)  # the whole image, no crop or pad
        box = processed_box(geometry, patch, shapes)
        got.setdefault(int(row), {})[(tile.image, 0, box)] = pytest.approx(float(weight))
    assert got == expected

    index = np.full(inputs["input_ids"].shape[1], -1)
    for position, rs in reads.items():
        index[position] = rs[0].image
    assert placement.image_index.tolist() == index.tolist()
    assert len(geometry.vision_sequences) == len(images)
    assert geometry.vision_summary == "mean"


def test_qwen3_deepstack_features_read_the_same_patches(build):
    """Qwen3-VL adds intermediate vision layers' merged features to the image positions of
    the first LM layers (DeepStack): each of those rows reads the same patches as the image
    token's embedding, so the one token -> patch map serves both (gradient oracle, vision
    attention zeroed)."""
    built = build("qwen3_vl")
    model = built.model.requires_grad_(False)
    images = images_of(SIZES["two images"])
    inputs, _, placement = placement_of(built, images)
    geometry = placement.geometry
    pixel_values = inputs["pixel_values"].detach().clone().requires_grad_(True)
    seen: dict = {}

    def capture(_module, _args, kwargs):
        seen.update(kwargs)
        raise _Stop

    handle = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    with oracle.vision_attention_zeroed(model), torch.enable_grad():
        try:
            model(**{**inputs, "pixel_values": pixel_values})
        except _Stop:
            pass
        finally:
            handle.remove()
        stacked = seen["deepstack_visual_embeds"]
        assert len(stacked) == len(model.config.vision_config.deepstack_visual_indexes) > 0
        positions = np.flatnonzero(seen["visual_pos_masks"][0].numpy())
        direction = torch.randn(stacked[0].shape[-1], generator=torch.Generator().manual_seed(0))
        shapes = processed_sizes(built, inputs)
        for features in stacked:
            for row, position in zip(features, positions, strict=True):
                (grad,) = torch.autograd.grad(row @ direction, pixel_values, retain_graph=True)
                maps = oracle.pixel_maps(model, inputs, grad, built.processor)
                reads = {(r.image, r.box) for r in oracle.patches_read(maps, PATCH)}
                mapped = geometry.token_patches
                image = int(placement.image_index[position])
                expected = {
                    (image, processed_box(geometry, p, shapes))
                    for p in mapped.patches[mapped.rows == position]
                }
                assert reads == expected, position


@pytest.mark.parametrize("name", FAMILIES)
def test_painted_square_lands_on_the_patches_over_it(build, name):
    """A red square painted on the second of two images changes exactly the processed patches
    whose boxes (original pixels) overlap it, up to the resampling kernel's reach."""
    built = build(name)
    first, second = images_of([(48, 80), (40, 56)])
    square = (20, 8, 35, 27)  # x0, y0, x1, y1 inclusive, on the 56x40 image
    before, _, placement = placement_of(built, [first, second])
    after = prompt_inputs(built, [first, painted(second, square)])
    diff = oracle.pixel_maps(
        built.model, before, after["pixel_values"] - before["pixel_values"], built.processor
    )
    geometry = placement.geometry
    assert not diff[(0, 0)].any()
    tile = next(t for t in geometry.tiles if t.image == 1)
    patches = np.arange(geometry.num_patches)[geometry.patch_tile == geometry.tiles.index(tile)]
    changed = diff[(1, 0)].reshape(tile.rows, PATCH, tile.cols, PATCH).any(axis=(1, 3)).reshape(-1)

    x0, y0, x1, y1 = square[0], square[1], square[2] + 1, square[3] + 1
    boxes = geometry.patch_boxes[patches]
    inside = (boxes[:, 0] >= x0) & (boxes[:, 2] <= x1) & (boxes[:, 1] >= y0) & (boxes[:, 3] <= y1)
    # bicubic: 2 source pixels each way, times the shrink factor when downscaling
    reach_x = 2 * max(1.0, second.width / (tile.cols * PATCH)) + 1
    reach_y = 2 * max(1.0, second.height / (tile.rows * PATCH)) + 1
    near = (
        (boxes[:, 2] > x0 - reach_x)
        & (boxes[:, 0] < x1 + reach_x)
        & (boxes[:, 3] > y0 - reach_y)
        & (boxes[:, 1] < y1 + reach_y)
    )
    assert inside.sum() >= 2
    assert changed[inside].all()
    assert not changed[~near].any()


def assemble(
    pieces: list[VisionPiece], calls: list[torch.Tensor], geometry: ImageGeometry
) -> list[np.ndarray]:
    """Per vision sequence, [Lv, Hv, V, V]: each piece's probabilities at its tokens."""
    layers = 1 + max(p.layer for p in pieces)
    heads = calls[0].shape[1]
    dense = [np.zeros((layers, heads, len(s), len(s))) for s in geometry.vision_sequences]
    for p in pieces:
        weights = calls[p.call][p.batch].detach().double().numpy()
        length = len(geometry.vision_sequences[p.sequence])
        tokens = np.arange(length) if p.tokens is None else np.asarray(p.tokens)
        dense[p.sequence][p.layer][:, tokens[:, None], tokens[None, :]] += weights
    return dense


def vision_attention(
    built: Built, images: list[Image.Image]
) -> tuple[list[np.ndarray], ImageGeometry]:
    """Each image's assembled vision attention ([Lv, Hv, V, V]) and the geometry."""
    model = built.model
    inputs = prompt_inputs(built, images)
    adapter = adapter_for(model, built.processor)
    sources = [load_image(im, f"image{i}") for i, im in enumerate(images)]
    geometry = adapter.geometry(inputs, sources).geometry
    with torch.no_grad(), capture_vision_attention(model) as calls:
        model(**inputs)
    return assemble(adapter.vision_pieces(calls, geometry), calls, geometry), geometry


@pytest.mark.parametrize("name", FAMILIES)
def test_vision_pieces_cover_each_image_once(build, name):
    """Every row of every layer of each image's sequence is covered exactly once (rows sum to
    1), and each image's attention equals what the tower gives it alone."""
    built = build(name)
    images = images_of([(40, 56), (48, 80)])
    together, geometry = vision_attention(built, images)
    for s, dense in enumerate(together):
        assert dense.shape[-1] == len(geometry.vision_sequences[s])
        assert dense.sum(-1) == pytest.approx(1.0, abs=1e-5)
        alone, _ = vision_attention(built, [images[s]])
        assert dense == pytest.approx(alone[0], abs=1e-6)


def all_layers_full(built: Built) -> Built:
    """Qwen2.5-VL whose every vision layer attends the whole image (still permuted)."""
    model = copy.deepcopy(built.model)
    layers = list(range(model.config.vision_config.depth))
    model.config.vision_config.fullatt_block_indexes = layers
    model.model.visual.fullatt_block_indexes = layers
    return replace(built, model=model)


def checkpoint_shaped(built: Built) -> Built:
    """Qwen2.5-VL with its checkpoints' vision numbers: 14 px patches, 112 px windows (4x4
    merge blocks), images resized to multiples of 28 px."""
    config = copy.deepcopy(built.model.config)
    config.vision_config.patch_size = 14
    config.vision_config.window_size = 112
    torch.manual_seed(0)
    model = type(built.model)._from_config(config, attn_implementation="eager").eval()
    images = tf.Qwen2VLImageProcessorPil(
        size={"shortest_edge": 4 * 28**2, "longest_edge": 64 * 28**2}, patch_size=14, merge_size=2
    )
    processor = with_video(
        "Qwen2_5_VLProcessor",
        "qwen2_5_vl",
        image_processor=images,
        tokenizer=built.processor.tokenizer,
        chat_template=built.processor.chat_template,
    )
    return replace(built, model=model, processor=processor)


def changed_token(before: np.ndarray, after: np.ndarray) -> int:
    """The token whose query and key changed between two [H, V, V] attentions of one layer.

    Only that token's inputs differ, so every other row keeps its logits except at that
    token's column: the row rescales uniformly (new softmax total) except at that column. The
    changed column is the one that breaks the typical row's uniform rescaling.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(after / before)
    ratio[~np.isfinite(ratio)] = np.nan  # keys outside the query's window
    deviation = np.abs(ratio - np.nanmedian(ratio, axis=-1, keepdims=True))
    score = np.nanmedian(deviation, axis=1).sum(axis=0)  # typical row, summed over heads
    best = int(np.argmax(score))
    assert score[best] > 10 * np.partition(score, -2)[-2]
    return best


@pytest.mark.parametrize(
    ("name", "variant", "blocks"),
    [
        ("qwen2_vl", None, (3, 5)),
        ("qwen3_vl", None, (3, 5)),
        ("qwen2_5_vl", None, (3, 5)),  # layer 0 per window (2x2 blocks), permuted sequence
        ("qwen2_5_vl", all_layers_full, (3, 5)),  # layer 0 per image, still permuted
        ("qwen2_5_vl", checkpoint_shaped, (6, 7)),  # windows of 4x4 blocks, uneven
    ],
    ids=["qwen2_vl", "qwen3_vl", "qwen2_5_vl", "qwen2_5_vl-full", "qwen2_5_vl-checkpoint"],
)
def test_vision_tokens_sit_where_the_geometry_says(build, name, variant, blocks):
    """Repaint one patch of an image of ``blocks`` merge blocks (not resized): in the first
    vision layer the token whose attention row and column change is the one the geometry puts
    on that patch."""
    built = build(name) if variant is None else variant(build(name))
    patch = built.model.config.vision_config.patch_size
    rows, cols = 2 * blocks[0], 2 * blocks[1]
    image = noise_image(rows * patch, cols * patch, seed=3)
    before, geometry = vision_attention(built, [image])
    sequence = geometry.vision_sequences[0]
    for row, col in [(0, 0), (1, cols - 4), (rows - 1, cols - 1), (rows // 2, cols // 2)]:
        x, y = col * patch, row * patch
        repainted = painted(image, (x, y, x + patch - 1, y + patch - 1))
        after, _ = vision_attention(built, [repainted])
        token = changed_token(before[0][0], after[0][0])
        box = geometry.patch_boxes[sequence[token]]
        assert tuple(box) == (x, y, x + patch, y + patch)


@pytest.mark.parametrize("name", FAMILIES)
def test_teacher_forced_pass_matches_generation(build, name):
    """One forward pass over prompt + answer (mm_token_type_ids grown with text) gives the
    logits generation saw at each step, rope positions included."""
    built = build(name)
    images = images_of(SIZES["two images"])
    inputs, adapter, _ = placement_of(built, images)
    tokenizer = built.processor.tokenizer
    banned = [[tokenizer.convert_tokens_to_ids(t)] for t in QWEN_TOKENS.values()]
    sequence, steps = greedy_answer(built.model, inputs, bad_words_ids=banned)
    with torch.no_grad():
        forced = built.model(**adapter.forced_inputs(inputs, sequence))
    prompt = inputs["input_ids"].shape[1]
    rows = forced.logits[0, prompt - 1 : prompt - 1 + steps.shape[0]]
    assert torch.allclose(rows, steps, atol=1e-4)


def test_image_count_mismatch_is_refused(build):
    """A prompt whose image tokens do not fill the image's merge blocks is refused in words."""
    built = build("qwen2_vl")
    image = noise_image(40, 56)
    inputs = prompt_inputs(built, [image])
    ids = inputs["input_ids"][0]
    first = int(torch.nonzero(ids == built.model.config.image_token_id)[0])
    inputs["input_ids"] = torch.cat([ids[:first], ids[first + 1 :]])[None]  # one token short
    adapter = adapter_for(built.model, built.processor)
    source = ImageInput(image, "image", "0" * 64)
    with pytest.raises(UnsupportedModelError, match="image tokens"):
        adapter.geometry(inputs, [source])


PROMPT = "what is in the image ?"


@pytest.fixture(scope="module")
def two_image_files(tmp_path_factory) -> list[Path]:
    return save_images(images_of(SIZES["two images"]), tmp_path_factory.mktemp("qwen-images"))


@pytest.mark.parametrize("name", FAMILIES)
def test_two_image_trace_through_the_cli(build, tmp_path, two_image_files, name):
    """``lvlm-interpret record`` with two images of different sizes: the stored trace keeps
    both images, each image token's image, one vision sequence per image (rows summing to 1,
    windows included), and relevancy in every mode equal to the slow reference."""
    built = build(name)
    store_dir = tmp_path / "store"
    trace_id = record_with_cli(built.folder, two_image_files, PROMPT, store_dir, 3)

    loaded = load_model(str(built.folder))
    sources = [load_image(path) for path in two_image_files]
    inputs = loaded.adapter.build_inputs(sources, PROMPT)
    placement = loaded.adapter.geometry(inputs, sources)
    with open_store(store_dir) as store, store.open(trace_id) as trace:
        geometry, tokens = trace.image, trace.tokens
        assert [image.size for image in geometry.images] == [(56, 40), (80, 48)]
        prompt = tokens.prompt_length
        assert tokens.image_index[:prompt].tolist() == placement.image_index.tolist()
        assert (tokens.image_index[prompt:] == -1).all()
        for field in ("rows", "patches", "weights"):
            stored = getattr(geometry.token_patches, field)
            assert stored.tolist() == getattr(placement.geometry.token_patches, field).tolist()
        assert len(geometry.vision_sequences) == 2
        for s, sequence in enumerate(geometry.vision_sequences):
            for layer in range(loaded.adapter.num_vision_layers()):
                attention = trace.vision_attention_layer(layer, s)
                assert attention.shape[-2:] == (len(sequence), len(sequence))
                assert attention.sum(-1) == pytest.approx(1.0, abs=1e-2)
        expected = reference_relevancy(loaded, inputs, tokens.ids, geometry)
        for mode, reference in zip(RelevancyMode, expected, strict=True):
            ours = trace.relevancy.map(mode)
            scale = max(float(np.abs(reference).max()), 1.0)
            np.testing.assert_allclose(ours, reference, atol=1e-5 * scale, err_msg=mode)
