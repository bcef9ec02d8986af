"""Mllama adapter: the key -> patch map against the model's own gradients, tile boxes against a
painted square, vision sequences against the captured calls, and relevancy through
cross-attention against a slow float64 reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from engine.adapters import adapter_for
from engine.capture import capture_attention, capture_vision_attention
from engine.cross_relevancy import CrossRelevancyInputs, compute_cross_relevancy
from engine.errors import UnsupportedModelError
from engine.inputs import ImageInput
from engine.relevancy import VisionInputs
from store import open_store
from tests.engine.families import oracle
from tests.engine.families.builders import prompt_inputs
from tests.engine.families.cross_relevancy_reference import reference_relevancy
from tests.engine.families.images import noise_image, painted
from tests.engine.families.pieces import check_whole_sequence_pieces
from tests.engine.families.recording import record_with_cli, save_images

# (height, width): 2x2 tiles, all filled; 1x3 tiles plus a padding slot, the image not resized
# (it fits the canvas) and padded below; 4x1 tiles, shrunk; one tile, enlarged.
SIZES = [(40, 56), (20, 70), (100, 30), (13, 17)]


@pytest.fixture(scope="module")
def built(build):
    built = build("mllama")
    built.model.requires_grad_(False)
    return built


def image_inputs(*images: Image.Image) -> list[ImageInput]:
    return [ImageInput(im, f"image{i}.png", f"{i:064x}") for i, im in enumerate(images)]


def geometry_reads(geometry, patch: int) -> dict[int, list[tuple[int, int, tuple]]]:
    """Key row -> [(image, tile slot, box in the processed tile's pixels, weight)], from the
    adapter's geometry (a tile's slot is its rank among its image's tiles)."""
    first_tile: dict[int, int] = {}
    for index, tile in enumerate(geometry.tiles):
        first_tile.setdefault(tile.image, index)
    keys = geometry.key_patches
    reads: dict[int, list] = {}
    for key, p, weight in zip(keys.rows, keys.patches, keys.weights, strict=True):
        tile = int(geometry.patch_tile[p])
        row, col = divmod(int(p) - geometry.tile_patches(tile).start, geometry.tiles[tile].cols)
        box = (col * patch, row * patch, (col + 1) * patch, (row + 1) * patch)
        image = geometry.tiles[tile].image
        reads.setdefault(int(key), []).append((image, tile - first_tile[image], box, weight))
    return {key: sorted(values) for key, values in reads.items()}


def oracle_reads(built, inputs) -> dict[int, list[tuple[int, int, tuple]]]:
    """The same from the model's gradients, keys of padding tile slots left out (checked to be
    masked for every token)."""
    reads = oracle.token_patch_map(built.model, inputs, built.processor)
    mask = inputs["cross_attention_mask"][0]  # [P, images, tiles]
    tiles = mask.shape[-1]
    per_slot = len(reads) // (mask.shape[1] * tiles)
    out = {}
    for key, found in reads.items():
        image, slot = divmod(key // per_slot, tiles)
        if not inputs["aspect_ratio_mask"][0, image, slot]:
            assert not mask[:, image, slot].any(), "a padding tile slot is visible to a token"
            continue
        if found:
            out[key] = sorted((r.image, r.tile, r.box, r.weight) for r in found)
    return out


@pytest.mark.parametrize("size", SIZES)
def test_key_map_is_what_the_model_reads(built, size):
    image = noise_image(*size)
    inputs = prompt_inputs(built, [image])
    adapter = adapter_for(built.model, built.processor)
    placement = adapter.geometry(inputs, image_inputs(image))
    assert len(placement.geometry.token_patches.rows) == 0
    patch = oracle.patch_size(built.model)
    assert geometry_reads(placement.geometry, patch) == oracle_reads(built, inputs)


def test_two_images_each_key_knows_its_image(built):
    images = [noise_image(40, 56), noise_image(20, 70, seed=1)]
    inputs = prompt_inputs(built, images)
    adapter = adapter_for(built.model, built.processor)
    geometry = adapter.geometry(inputs, image_inputs(*images)).geometry
    patch = oracle.patch_size(built.model)
    expected = oracle_reads(built, inputs)
    assert geometry_reads(geometry, patch) == expected
    assert {reads[0][0] for reads in expected.values()} == {0, 1}
    assert [t.image for t in geometry.tiles] == [0] * 4 + [1] * 3


def test_tiles_the_tower_was_not_built_for_are_refused(built):
    processor = copy.deepcopy(built.processor)
    processor.image_processor = type(processor.image_processor)(
        size={"height": 64, "width": 64}, max_image_tiles=4
    )
    image = noise_image()
    inputs = prompt_inputs(built, [image], processor=processor)
    with pytest.raises(UnsupportedModelError, match="64 px tiles"):
        adapter_for(built.model, processor).geometry(inputs, image_inputs(image))


def tile_pixels(inputs, geometry, patch_index: int) -> torch.Tensor:
    """[C, p, p] processed pixels of one patch of the geometry."""
    tile = int(geometry.patch_tile[patch_index])
    image = geometry.tiles[tile].image
    slot = tile - next(i for i, t in enumerate(geometry.tiles) if t.image == image)
    grid = geometry.tiles[tile]
    row, col = divmod(patch_index - geometry.tile_patches(tile).start, grid.cols)
    pixels = inputs["pixel_values"][0, image, slot]
    side = pixels.shape[-1] // grid.cols
    return pixels[:, row * side : (row + 1) * side, col * side : (col + 1) * side]


@pytest.mark.parametrize("size", SIZES)
def test_tile_boxes_in_original_pixels_follow_a_painted_square(built, size):
    """A red square painted on the original changes exactly the processed patches whose boxes
    (original pixels) meet it: patches inside it change, patches clear of it (by the resize
    filter's reach) do not; patches past the image's edge hold the padding value."""
    height, width = size
    square = (int(0.4 * width), int(0.1 * height), int(0.9 * width), int(0.9 * height))
    plain = noise_image(*size)
    adapter = adapter_for(built.model, built.processor)
    before = prompt_inputs(built, [plain])
    after = prompt_inputs(built, [painted(plain, square)])
    geometry = adapter.geometry(before, image_inputs(plain)).geometry
    tile_side = built.processor.image_processor.size["height"]
    scale = (geometry.tiles[0].box[2] - geometry.tiles[0].box[0]) / tile_side  # original px/px
    reach = max(1.0, scale) + 0.5  # how far a bilinear resize reads, in original pixels
    x0, y0, x1, y1 = square[0], square[1], square[2] + 1, square[3] + 1  # inclusive -> box
    inside, clear = [], []
    for p, (bx0, by0, bx1, by1) in enumerate(geometry.patch_boxes):
        changed = bool((tile_pixels(after, geometry, p) != tile_pixels(before, geometry, p)).any())
        if bx0 >= x0 and bx1 <= x1 and by0 >= y0 and by1 <= y1:
            inside.append(changed)
        elif bx1 + reach <= x0 or bx0 - reach >= x1 or by1 + reach <= y0 or by0 - reach >= y1:
            clear.append(changed)
        if bx0 >= width or by0 >= height:  # all padding
            mean = torch.tensor(built.processor.image_processor.image_mean)[:, None, None]
            std = torch.tensor(built.processor.image_processor.image_std)[:, None, None]
            padding = (-mean / std).expand_as(tile_pixels(before, geometry, p))
            assert torch.allclose(tile_pixels(before, geometry, p), padding.float(), atol=1e-6)
    assert inside and all(inside)
    assert clear and not any(clear)


def vision_input_reads(built, inputs) -> list[list[tuple[int, int, int] | None]]:
    """Per image, the patch (tile slot, row, col) each token entering the vision encoder reads
    (None: no pixel, as CLS and padding), from gradients w.r.t. the pixels."""
    pixel_values = inputs["pixel_values"].detach().clone().requires_grad_(True)
    seen = []

    def grab(module, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])
        raise oracle._Captured

    encoder = built.model.model.vision_model.transformer
    handle = encoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.enable_grad():
            built.model(**{**inputs, "pixel_values": pixel_values})
    except oracle._Captured:
        pass
    finally:
        handle.remove()
    (states,) = seen  # [images, V, dim]
    direction = torch.randn(states.shape[-1], generator=torch.Generator().manual_seed(0))
    patch = oracle.patch_size(built.model)
    out = []
    for image in range(states.shape[0]):
        reads = []
        for v in range(states.shape[1]):
            (grad,) = torch.autograd.grad(
                states[image, v] @ direction, pixel_values, retain_graph=True
            )
            found = torch.nonzero(grad[0, image].abs().sum(1)).tolist()  # slot, y, x
            cells = {(s, y // patch, x // patch) for s, y, x in found}
            assert len(cells) <= 1, "a vision token reads more than one patch"
            reads.append(cells.pop() if cells else None)
        out.append(reads)
    return out


def sequence_reads(geometry, sequence: np.ndarray) -> list[tuple[int, int, int] | None]:
    """The adapter's vision sequence as (tile slot, row, col) per token, None for -1."""
    images = [t.image for t in geometry.tiles]
    reads = []
    for p in sequence:
        if p < 0:
            reads.append(None)
            continue
        tile = int(geometry.patch_tile[p])
        cols = geometry.tiles[tile].cols
        row, col = divmod(int(p) - geometry.tile_patches(tile).start, cols)
        reads.append((tile - images.index(geometry.tiles[tile].image), row, col))
    return reads


def test_vision_sequences_and_pieces_match_the_tower(built):
    """Each vision sequence token's patch is the one the tower's input token reads (padding
    tile slots, left out of the geometry, read only their own zero pixels); every captured
    call is one layer with one batch row per image, covering its whole sequence."""
    images = [noise_image(20, 70), noise_image(40, 56, seed=1)]
    inputs = prompt_inputs(built, images)
    adapter = adapter_for(built.model, built.processor)
    geometry = adapter.geometry(inputs, image_inputs(*images)).geometry
    real = inputs["aspect_ratio_mask"][0]
    for image, (sequence, measured) in enumerate(
        zip(geometry.vision_sequences, vision_input_reads(built, inputs), strict=True)
    ):
        expected = sequence_reads(geometry, sequence)
        for v, (got, want) in enumerate(zip(measured, expected, strict=True)):
            if got is not None and not real[image, got[0]]:
                assert want is None  # a padding tile slot's token
            else:
                assert got == want, f"image {image} token {v}"
    assert sum(int((s >= 0).sum()) for s in geometry.vision_sequences) == geometry.num_patches

    assert len(geometry.vision_sequences) == len(images)  # one sequence per image
    check_whole_sequence_pieces(adapter, built.model, inputs, geometry)


def teacher_forced(model, adapter, inputs, answer_words: str):
    """Logits and every attention tensor of one forward over prompt + answer, in an autograd
    graph reaching the token embeddings and pixels (what the recorder's forced pass holds)."""
    tokenizer = adapter.processor.tokenizer
    answer = torch.tensor(tokenizer.convert_tokens_to_ids(answer_words.split()))
    sequence = torch.cat([inputs["input_ids"][0], answer])
    forced = adapter.forced_inputs(inputs, sequence)
    forced["pixel_values"] = forced["pixel_values"].to(torch.float64).requires_grad_(True)

    def leaf(_module, _inputs, output):
        return output.requires_grad_(True)

    handle = model.get_input_embeddings().register_forward_hook(leaf)
    cross_modules = [module for _, module in adapter.cross_attention_modules()]
    try:
        with (
            torch.enable_grad(),
            capture_attention(adapter.language_attention_modules()) as self_attention,
            capture_attention(cross_modules) as cross_attention,
            capture_vision_attention(model) as vision_calls,
        ):
            logits = model(**forced).logits[0, inputs["input_ids"].shape[1] - 1 : -1]
    finally:
        handle.remove()
    return logits, answer, self_attention, cross_attention, list(vision_calls)


@pytest.fixture(scope="module")
def model64(built):
    """A float64 variant with a self-attention layer after the cross-attention layer (so the
    order of the LM's blocks matters) and weights at 2/sqrt(fan-in): at the builder's 0.02
    scale the vision tower's gradient-weighted attention is ~1e-7 of the identity, and a
    relevancy that skipped the tower would pass."""
    config = copy.deepcopy(built.model.config)
    config.text_config.num_hidden_layers = 3
    config.text_config.cross_attention_layers = [1]
    torch.manual_seed(1)
    model = type(built.model)._from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "embed" not in name:
                param.normal_(0, 2 / param.shape[-1] ** 0.5)
        built.spec.repair(model)
    return model.eval().requires_grad_(False).to(torch.float64)


@pytest.mark.parametrize("sizes", [[(40, 56)], [(20, 70), (100, 30)]])
def test_cross_relevancy_matches_the_float64_reference(built, model64, sizes):
    images = [noise_image(*size, seed=i) for i, size in enumerate(sizes)]
    inputs = prompt_inputs(built, images)
    adapter = adapter_for(model64, built.processor)
    geometry = adapter.geometry(inputs, image_inputs(*images)).geometry
    logits, answer, self_attention, cross_attention, calls = teacher_forced(
        model64, adapter, inputs, "a red square"
    )
    pieces = adapter.vision_pieces(calls, geometry)
    key_tokens = adapter.key_vision_tokens(len(images))
    prompt_length = inputs["input_ids"].shape[1]
    maps = compute_cross_relevancy(
        CrossRelevancyInputs(
            answer_logits=logits,
            answer_ids=answer,
            self_attention=self_attention,
            cross_attention=cross_attention,
            cross_layers=adapter.cross_layers,
            vision=VisionInputs(calls, pieces, geometry.vision_sequences, geometry.vision_summary),
            key_tokens=key_tokens,
            prompt_length=prompt_length,
            num_patches=geometry.num_patches,
        )
    )
    expected = reference_relevancy(
        logits,
        answer,
        self_attention,
        cross_attention,
        adapter.cross_layers,
        calls,
        geometry.vision_sequences,
        key_tokens,
        prompt_length,
        geometry.num_patches,
    )
    for mode in ("llm", "llm_keys", "vision", "llm_through_vision"):
        np.testing.assert_allclose(
            getattr(maps, mode), getattr(expected, mode), rtol=1e-4, atol=1e-7, err_msg=mode
        )
    # the image matters, on real patches of every image, and the shares add up
    assert (maps.llm_keys.sum(1) > 0.01).all()
    np.testing.assert_allclose(maps.llm.sum(1) + maps.llm_keys.sum(1), 1, rtol=1e-5)
    for image in range(len(images)):
        tiles = [t for t, tile in enumerate(geometry.tiles) if tile.image == image]
        on_image = np.isin(geometry.patch_tile, tiles)
        assert (maps.llm_through_vision[:, on_image].sum(1) > 0).all()


def test_two_images_recorded_through_the_cli(built, tmp_path):
    """``record`` with two ``--image`` (2x2 tiles, and 1x3 tiles + a padding slot): seven
    tiles, the key map and one vision sequence per image read back from the store; the
    ``<|image|>`` markers are text; cross-attention [Lx, H, T, K] over 2 x 4 x 17 keys, where
    no row from its image's marker on reads a padding slot or an image whose marker is later."""
    noise = [noise_image(h, w, seed=i) for i, (h, w) in enumerate([(40, 56), (20, 70)])]
    files = save_images(noise, tmp_path)
    store = tmp_path / "store"
    trace_id = record_with_cli(built.folder, files, "what is in the image ?", store, 3)
    with open_store(store) as opened, opened.open(trace_id) as trace:
        trace = trace.read()
    geometry, tokens = trace.image, trace.tokens
    assert trace.info.adapter == "mllama"
    assert [(t.image, t.kind) for t in geometry.tiles] == [(0, "crop")] * 4 + [(1, "crop")] * 3
    assert geometry.tiles[4].box == (0.0, 0.0, 32.0, 32.0)  # 20x70 fits 32x96: no resize
    assert len(geometry.token_patches.rows) == 0 and len(tokens.image_positions) == 0
    assert [len(s) for s in geometry.vision_sequences] == [4 * 24] * 2
    assert [a.shape for a in trace.vision_attention] == [(3, 2, 96, 96)] * 2
    assert trace.lm_attention.shape[0] == 1  # layer 0; layer 1 is cross-attention only

    cross = trace.cross_attention
    assert cross.layers == [1]
    keys = 2 * 4 * 17
    assert cross.weights.shape == (1, 2, len(tokens.ids), keys)
    weights = cross.weights.astype(np.float32)
    np.testing.assert_allclose(weights.sum(-1), 1, atol=2e-3)
    markers = np.flatnonzero(tokens.ids == built.model.config.image_token_index)
    padding = slice((4 + 3) * 17, 8 * 17)  # image 1's fourth tile slot
    assert weights[..., markers[0] :, padding].max() == 0
    assert weights[..., markers[0] : markers[1], 4 * 17 :].max() == 0
    assert set(geometry.key_patches.rows) == set(range(keys)) - set(range(0, keys, 17)) - set(
        range(padding.start, padding.stop)
    )
