"""LLaVA-NeXT and LLaVA-OneVision adapters: their geometry is what the tiny models do.

The token -> patch map (patches and weights) must equal what the oracle reads from the model's
own gradients, for images whose canvas is square, wide or tall, unpadded by rows or by
columns, shrunk (OneVision) or not, and for several images in one prompt. Tile boxes in
original pixels must put a painted square on the patches whose processed pixels change, and
the vision sequences must be what the tower attends over (a gradient per vision token).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers as tf

from engine.adapters import adapter_for
from engine.errors import UnsupportedModelError
from engine.inputs import load_image
from engine.loading import load_model
from store import RelevancyMode, TokenRole, open_store
from tests.engine.families import oracle
from tests.engine.families.builders import VISION, prompt_inputs
from tests.engine.families.images import noise_image, painted
from tests.engine.families.pieces import check_whole_sequence_pieces
from tests.engine.families.recording import record_with_cli, save_images
from tests.engine.families.relevancy_reference import reference_relevancy

FAMILIES = ("llava_next", "llava_onevision")
# (height, width): a wide image on a square canvas (rows unpadded), a tall one on a 2x1
# canvas, one exactly a tile, a small one upscaled, a square one (OneVision: shrunk 8x8 -> 5x5).
SIZES = [(40, 56), (70, 30), (32, 32), (20, 20), (64, 64)]


def _adapter(built):
    return adapter_for(built.model.requires_grad_(False), built.processor)


def _placement(built, images, processor=None):
    processor = processor or built.processor
    inputs = prompt_inputs(built, images, processor=processor)
    inputs_for = [load_image(im, f"image{i}") for i, im in enumerate(images)]
    return inputs, adapter_for(built.model, processor).geometry(inputs, inputs_for)


def _cropping(built):
    """The built processor, but each tile resized to 64 px then centre-cropped to 32: a tile
    shows only the middle half of its part of the image (or of the canvas)."""
    processor = copy.deepcopy(built.processor)
    images = processor.image_processor
    processor.image_processor = type(images)(
        size={"shortest_edge": 64},
        crop_size={"height": 32, "width": 32},
        do_center_crop=True,
        image_grid_pinpoints=images.image_grid_pinpoints,
    )
    return processor


def _global_patch(geometry, image: int, tile: int, box, patch: int) -> int:
    """The geometry's patch for an oracle read: ``tile`` counts within ``image``."""
    first = next(t for t, spec in enumerate(geometry.tiles) if spec.image == image)
    spec = geometry.tiles[first + tile]
    assert spec.image == image
    start = geometry.tile_patches(first + tile).start
    return start + (box[1] // patch) * spec.cols + box[0] // patch


def _adapter_reads(geometry) -> dict[int, dict[int, float]]:
    found: dict[int, dict[int, float]] = {}
    m = geometry.token_patches
    for row, p, w in zip(m.rows.tolist(), m.patches.tolist(), m.weights.tolist(), strict=True):
        found.setdefault(row, {})[p] = w
    return found


def _assert_map_is_the_models(built, inputs, placement) -> None:
    reads = oracle.token_patch_map(built.model, inputs, built.processor)
    geometry, patch = placement.geometry, oracle.patch_size(built.model)
    expected = {
        position: {_global_patch(geometry, r.image, r.tile, r.box, patch): r.weight for r in rs}
        for position, rs in reads.items()
        if rs
    }
    got = _adapter_reads(geometry)
    assert got.keys() == expected.keys()
    for position, patches in expected.items():
        assert got[position].keys() == patches.keys(), position
        for p, weight in patches.items():
            assert got[position][p] == pytest.approx(weight, abs=1e-5)
    # every image token (newlines too) knows its image; text positions know none
    image_tokens = set(reads)
    index = placement.image_index
    assert {int(i) for i in np.flatnonzero(index >= 0)} == image_tokens
    for position, rs in reads.items():
        assert {r.image for r in rs} <= {int(index[position])}
    assert np.all(np.diff(index[sorted(image_tokens)]) >= 0)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_token_patch_map_is_the_models(build, name, size):
    built = build(name)
    inputs, placement = _placement(built, [noise_image(*size)])
    _assert_map_is_the_models(built, inputs, placement)


def test_onevision_shrinks_with_bilinear_weights(build):
    """The map really is weighted where OneVision shrinks its grid (not a vacuous check)."""
    _, placement = _placement(build("llava_onevision"), [noise_image(64, 64)])
    weights = placement.geometry.token_patches.weights
    assert weights.min() < 0.5
    assert len(np.unique(placement.geometry.token_patches.rows)) < len(weights)


def test_next_two_images_of_different_aspect_ratios(build):
    built = build("llava_next")
    images = [noise_image(40, 56, seed=1), noise_image(70, 30, seed=2)]
    inputs, placement = _placement(built, images)
    _assert_map_is_the_models(built, inputs, placement)
    tiles = placement.geometry.tiles
    assert [t.image for t in tiles] == [0] * 5 + [1] * 3  # base + 2x2 crops, base + 2x1 crops
    assert [t.kind for t in tiles] == ["full", *["crop"] * 4, "full", *["crop"] * 2]


def test_onevision_multi_image_group_is_one_square_tile_each(build):
    """Images of one group (``batch_num_images`` 2) are padded squares, not tiled: G^2 tokens and
    a newline each; painting an image changes exactly the tokens the map gives that image."""
    built = build("llava_onevision")
    images = [noise_image(41, 56, seed=1), noise_image(70, 31, seed=2)]
    text = built.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}] * 2 + [{"type": "text", "text": "a"}]}],
        add_generation_prompt=True,
    )

    def inputs_for(pictures):
        return dict(built.processor(images=[pictures], text=[text], return_tensors="pt"))

    before = inputs_for(images)
    assert before["batch_num_images"].tolist() == [2]
    placement = _adapter(built).geometry(before, [load_image(im) for im in images])
    geometry = placement.geometry
    assert [(t.image, t.kind, t.rows) for t in geometry.tiles] == [(0, "full", 4), (1, "full", 4)]
    # centred in a square, the odd pixel of padding after: 7 px above the 41x56 image, 19 px
    # left of the 70x31 one
    assert geometry.tiles[0].box == (0, -7, 56, 49)
    assert geometry.tiles[1].box == (-19, 0, 51, 70)
    after = inputs_for([images[0], painted(images[1], (5, 30, 20, 45))])
    changed = oracle.embedding_change(built.model, before, after)
    square = geometry.patch_boxes
    hit = np.flatnonzero(
        (geometry.patch_tile == 1)
        & (square[:, 0] < 21)
        & (square[:, 2] > 5)
        & (square[:, 1] < 46)
        & (square[:, 3] > 30)
    )
    m = geometry.token_patches
    assert changed == {int(r) for r, p in zip(m.rows, m.patches, strict=True) if p in set(hit)}
    assert set(placement.image_index[sorted(changed)]) == {1}
    assert (placement.image_index == 1).sum() == 16 + 1


# How far (original pixels) a painted edge spreads through resampling: bicubic reads 2 source
# pixels each side, a crop is resampled twice (into the canvas, into the tile), and the base
# tile's squash shrinks 56 px to 32 (2 x 1.75 px).
REACH = 4.0
MIDDLE = (10, 12, 25, 27)  # a painted square that tiles of both test images show


def _overlapping(boxes: np.ndarray, square, grow: float) -> set[int]:
    """Patches whose box overlaps the inclusive pixel ``square`` grown by ``grow`` (negative:
    shrunk)."""
    x0, y0, x1, y1 = square
    return set(
        np.flatnonzero(
            (boxes[:, 0] < x1 + 1 + grow)
            & (boxes[:, 2] > x0 - grow)
            & (boxes[:, 1] < y1 + 1 + grow)
            & (boxes[:, 3] > y0 - grow)
        ).tolist()
    )


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", [(40, 56), (70, 30)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("crop", [False, True], ids=["stock", "centre-crop"])
@pytest.mark.parametrize("square", [MIDDLE, (0, 0, 11, 11)], ids=["middle", "corner"])
def test_tile_boxes_put_a_painted_square_where_the_pixels_change(build, name, size, crop, square):
    """Patches whose original-pixel box overlaps the square shrunk by ``REACH`` change; no
    patch farther than ``REACH`` from it does. Boxes that miss the canvas offset or the centre
    crop are off by 7 px or more here, and fail (the corner square is outside the part of the
    image a centre-cropped tile shows)."""
    built = build(name)
    processor = _cropping(built) if crop else built.processor
    image = noise_image(*size)
    before, placement = _placement(built, [image], processor)
    after = prompt_inputs(built, [painted(image, square)], processor=processor)
    diff = oracle.pixel_maps(
        built.model, before, after["pixel_values"] - before["pixel_values"], processor
    )
    geometry, patch = placement.geometry, oracle.patch_size(built.model)
    reads = oracle.patches_read({k: v > 1e-6 for k, v in diff.items()}, patch)
    changed = {_global_patch(geometry, r.image, r.tile, r.box, patch) for r in reads}
    boxes = geometry.patch_boxes
    inside = _overlapping(boxes, square, -REACH)
    near = _overlapping(boxes, square, REACH)
    if square == MIDDLE:
        assert inside  # every tile shows the middle: the check is not vacuous
    assert inside <= changed <= near


@pytest.mark.parametrize("name", FAMILIES)
def test_vision_sequences_are_what_the_tower_reads(build, name):
    """Token j of vision sequence s depends only on patch ``vision_sequences[s][j]`` (CLS: none)
    with the tower's attention zeroed; the captured attention covers every sequence."""
    built = build(name)
    inputs, placement = _placement(built, [noise_image(40, 56)])
    geometry, model = placement.geometry, built.model
    patch = oracle.patch_size(model)
    pixel_values = inputs["pixel_values"].clone().requires_grad_(True)
    tower = model.model.vision_tower
    with oracle.vision_attention_zeroed(model), torch.enable_grad():
        hidden = tower(pixel_values[0]).last_hidden_state
        direction = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(0))
        assert len(geometry.vision_sequences) == hidden.shape[0]
        for s, sequence in enumerate(geometry.vision_sequences):
            assert len(sequence) == hidden.shape[1]
            for j, expected in enumerate(sequence.tolist()):
                (grad,) = torch.autograd.grad(
                    hidden[s, j] @ direction, pixel_values, retain_graph=True
                )
                maps = oracle.pixel_maps(model, inputs, grad, built.processor)
                read = oracle.patches_read(maps, patch)
                got = [_global_patch(geometry, r.image, r.tile, r.box, patch) for r in read]
                assert got == ([] if expected < 0 else [expected]), (s, j)
    assert geometry.vision_summary == ("cls" if name == "llava_next" else "mean")
    check_whole_sequence_pieces(_adapter(built), model, inputs, geometry)


@pytest.mark.parametrize("name", FAMILIES)
def test_two_images_recorded_through_the_cli(build, tmp_path, name):
    """``lvlm-interpret record`` with two images of different aspect ratios stores both, every
    tile's vision attention, relevancy in every mode as the slow reference computes it, and
    image tokens that know their image: repainting the second image changes only LM rows the
    trace assigns to it."""
    built = build(name)
    images = [noise_image(40, 56, seed=1), noise_image(70, 30, seed=2)]
    files = save_images(images, tmp_path)
    store_dir = tmp_path / "store"
    trace_id = record_with_cli(built.folder, files, "what is in the image ?", store_dir, 2)
    with open_store(store_dir) as store, store.open(trace_id) as t:
        geometry, tokens, relevancy = t.image, t.tokens, t.relevancy
        vision_shapes = t.vision_shapes
    assert [im.size for im in geometry.images] == [(56, 40), (30, 70)]
    if name == "llava_next":  # each image tiled: base + 2x2 crops, base + 2x1 crops
        assert [tile.image for tile in geometry.tiles] == [0] * 5 + [1] * 3
        assert [shape[2:] for shape in vision_shapes] == [(17, 17)] * 8  # CLS + 16 patches
    else:  # OneVision groups several images: one padded square tile each
        assert [tile.image for tile in geometry.tiles] == [0, 1]
        assert [shape[2:] for shape in vision_shapes] == [(16, 16)] * 2
    on_image = tokens.roles == TokenRole.IMAGE
    assert np.all((tokens.image_index >= 0) == on_image)
    assert relevancy.vision.shape[1] == geometry.num_patches
    assert np.isfinite(relevancy.llm_through_vision).all()

    loaded = load_model(str(built.folder))
    adapter = loaded.adapter
    before = adapter.build_inputs([load_image(im) for im in images], "what is in the image ?")
    expected = reference_relevancy(loaded, before, tokens.ids, geometry)
    for mode, reference in zip(RelevancyMode, expected, strict=True):
        scale = max(float(np.abs(reference).max()), 1.0)
        np.testing.assert_allclose(relevancy.map(mode), reference, atol=1e-5 * scale, err_msg=mode)
    after_images = [images[0], painted(images[1], (0, 0, 29, 69))]
    after = adapter.build_inputs([load_image(im) for im in after_images], "what is in the image ?")
    changed = oracle.embedding_change(loaded.model, before, after)
    second = set(np.flatnonzero(tokens.image_index == 1).tolist())
    newlines = second - set(geometry.token_patches.rows.tolist())
    mapped = geometry.token_patches
    boxes = geometry.patch_boxes[mapped.patches]
    width, height = geometry.images[1].size  # rows reading only padding keep its colour
    on_photo = (
        (boxes[:, 0] < width) & (boxes[:, 2] > 0) & (boxes[:, 1] < height) & (boxes[:, 3] > 0)
    )
    reading = set(mapped.rows[on_photo].tolist()) & second
    assert changed == reading
    assert newlines  # the second image's rows end in newline tokens, still its own


# Checkpoint-sized settings: llava-v1.6 (CLIP 336/14, 5 canvases up to 672 x 672) and
# llava-onevision (SigLIP 384/14, canvases up to 2304 x 2304 px, anyres_max_9); tiny widths.
CHECKPOINT_SIZES = {
    "llava_next": {
        "vision": tf.CLIPVisionConfig(**VISION, image_size=336, patch_size=14),
        "pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        "processor": {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}},
        "counts": {"patch_size": 14},  # the processor's settings for counting image tokens
    },
    "llava_onevision": {
        "vision": tf.SiglipVisionConfig(**VISION, image_size=384, patch_size=14),
        "pinpoints": [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)],
        "processor": {"size": {"height": 384, "width": 384}},
        "counts": {"num_image_tokens": 27 * 27, "vision_aspect_ratio": "anyres_max_9"},
        "config": {"vision_aspect_ratio": "anyres_max_9"},
    },
}
# (height, width): photos, a panorama, a receipt, odd sizes whose rounding differs
PHOTO_SIZES = [(480, 640), (1080, 1920), (300, 2000), (1000, 37), (333, 500), (719, 1283)]


def _checkpoint_sized(built):
    """``built`` with its vision tower, canvases and processor at checkpoint sizes."""
    sizes = CHECKPOINT_SIZES[built.spec.name]
    config = copy.deepcopy(built.model.config)
    config.vision_config = sizes["vision"]
    config.image_grid_pinpoints = sizes["pinpoints"]
    for key, value in sizes.get("config", {}).items():
        setattr(config, key, value)
    model = type(built.model)._from_config(config, attn_implementation="eager").eval()
    processor = copy.deepcopy(built.processor)
    processor.image_processor = type(processor.image_processor)(
        image_grid_pinpoints=sizes["pinpoints"], **sizes["processor"]
    )
    for key, value in sizes["counts"].items():
        setattr(processor, key, value)
    return model, processor


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpoint_sized_map_is_the_models_packing(build, name):
    """At checkpoint sizes (hundreds of tiles' patches, the oracle would take minutes) random
    patch features pushed through the model's own ``pack_image_features`` must equal the
    adapter's map applied to them: W @ F, newline rows zero. Any linear packing (unpadding,
    bilinear shrink) is checked exactly, and the processor's token count with it."""
    built = build(name)
    model, processor = _checkpoint_sized(built)
    for size in PHOTO_SIZES:
        images = [noise_image(*size)]
        inputs = prompt_inputs(built, images, processor=processor)
        placement = adapter_for(model, processor).geometry(inputs, [load_image(images[0])])
        geometry = placement.geometry
        grid = model.config.vision_config.image_size // 14
        features = torch.randn(geometry.num_patches, 8, generator=torch.Generator().manual_seed(0))
        per_tile = features.reshape(len(geometry.tiles), grid * grid, 8)
        newline = torch.zeros(8)
        image_sizes = inputs["image_sizes"]
        if name == "llava_next":
            packed, _ = model.model.pack_image_features([per_tile], image_sizes, "default", newline)
        else:
            packed, _ = model.model.pack_image_features(
                [per_tile], image_sizes, newline, model.config.vision_aspect_ratio
            )
        positions = np.flatnonzero(placement.image_index >= 0)
        mapped = geometry.token_patches.matrix(positions, geometry.num_patches) @ features.numpy()
        assert mapped.shape == packed[0].shape, size
        # torch interpolates from float32 source coordinates: ~1e-5 off the exact weights
        np.testing.assert_allclose(mapped, packed[0].numpy(), atol=1e-4, err_msg=str(size))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_feature_strategy_that_breaks_the_packing_is_refused(build, monkeypatch, name):
    """CLIP with its CLS kept (or SigLIP with a patch dropped) gives G^2 +- 1 features a tile,
    which the model's packing cannot reshape: refused in one line, before recording."""
    built = build(name)
    wrong = {"llava_next": "full", "llava_onevision": "default"}[name]
    monkeypatch.setattr(built.model.config, "vision_feature_select_strategy", wrong)
    with pytest.raises(UnsupportedModelError, match=f"vision_feature_select_strategy '{wrong}'"):
        _placement(built, [noise_image()])
