"""Idefics3 / SmolVLM, InternVL and Aya Vision adapters against the models' own behaviour.

Each family's tiny random model (tests/engine/families/builders.py) is asked, through gradients
(oracle.py), which patches every LM image token and every vision token reads; the adapter's
geometry must say exactly the same, for single and multi-image prompts whose images are cut
into different grids (wide, tall, square, one tile). Tile boxes in original pixels are checked
with a painted square: patches over it must be the ones whose processed pixels change.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.adapters import adapter_for
from engine.adapters.base import Placement
from engine.adapters.idefics3 import grids_from_markers, tile_markers
from engine.adapters.tiled import CropGrid
from engine.errors import UnsupportedModelError
from engine.inputs import ImageInput, load_image
from engine.loading import load_model
from store import RelevancyMode, open_store
from store.schema import TokenRole
from tests.engine.families import oracle
from tests.engine.families.builders import prompt_inputs
from tests.engine.families.images import noise_image, painted
from tests.engine.families.pieces import check_whole_sequence_pieces
from tests.engine.families.recording import record_with_cli, save_images
from tests.engine.families.relevancy_reference import reference_relevancy

FAMILIES = ("idefics3", "smolvlm", "internvl", "aya_vision")
# (height, width) of each image of a prompt: wide, very wide (one row of crops), tall, square
# (one tile for the canvas families), and two images cut differently.
PROMPTS = {
    "wide": [(40, 56)],
    "strip": [(20, 64)],
    "tall": [(30, 20)],
    "square": [(40, 40)],
    "two images": [(40, 56), (30, 20)],
}
Patch = tuple[int, int, int, int]  # image, tile of that image, row, col


def images_of(sizes: list[tuple[int, int]]) -> list[ImageInput]:
    return [load_image(noise_image(h, w, seed=i), f"noise{i}") for i, (h, w) in enumerate(sizes)]


def placed(built, images: list[ImageInput], **options) -> tuple[dict, Placement]:
    """The processor's inputs (``options`` go to its call) and the adapter's placement."""
    inputs = prompt_inputs(built, [im.image for im in images], **options)
    return inputs, adapter_for(built.model, built.processor).geometry(inputs, images)


def tile_names(placement: Placement) -> list[tuple[int, int]]:
    """(image, tile of that image) of each tile of the geometry, the oracle's tile names."""
    counts: dict[int, int] = {}
    names = []
    for tile in placement.geometry.tiles:
        names.append((tile.image, counts.get(tile.image, 0)))
        counts[tile.image] = counts.get(tile.image, 0) + 1
    return names


def patch_names(placement: Placement) -> list[Patch]:
    geometry = placement.geometry
    names = tile_names(placement)
    out = []
    for tile_index, tile in enumerate(geometry.tiles):
        start = geometry.tile_patches(tile_index).start
        for p in range(tile.rows * tile.cols):
            out.append((*names[tile_index], *divmod(p, tile.cols)))
            assert start + p == len(out) - 1
    return out


def read_name(read: oracle.Read, patch: int) -> Patch:
    return (read.image, read.tile, read.box[1] // patch, read.box[0] // patch)


@pytest.fixture(scope="module")
def family(build, request):
    built = build(request.param)
    built.model.requires_grad_(False)
    return built


# Processor options that keep every image whole (one squashed tile, no global view).
UNCUT = {"idefics3": {"do_image_splitting": False}, "smolvlm": {"do_image_splitting": False}}
UNCUT_CANVAS = {"crop_to_patches": False}


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
@pytest.mark.parametrize("prompt", [*PROMPTS, "uncut"])
def test_token_patch_map_is_what_the_model_reads(family, prompt):
    if prompt == "uncut":
        images = images_of(PROMPTS["two images"])
        options = UNCUT.get(family.spec.name, UNCUT_CANVAS)
        inputs, placement = placed(family, images, **options)
        assert [t.kind for t in placement.geometry.tiles] == ["full", "full"]
    else:
        images = images_of(PROMPTS[prompt])
        inputs, placement = placed(family, images)
    truth = oracle.token_patch_map(family.model, inputs, family.processor)
    size = oracle.patch_size(family.model)
    names = patch_names(placement)
    pmap = placement.geometry.token_patches
    got = {
        int(row): sorted(
            (names[int(p)], float(w))
            for r, p, w in zip(pmap.rows, pmap.patches, pmap.weights, strict=True)
            if r == row
        )
        for row in np.unique(pmap.rows)
    }
    expected = {
        pos: sorted((read_name(r, size), r.weight) for r in reads) for pos, reads in truth.items()
    }
    assert got.keys() == expected.keys()
    for position, reads in expected.items():
        assert [n for n, _ in got[position]] == [n for n, _ in reads], position
        assert [w for _, w in got[position]] == pytest.approx([w for _, w in reads], abs=1e-6)
    # which image each token reads, and tiles per image as the prompt's layout says
    index = placement.image_index
    assert {int(p) for p in np.flatnonzero(index >= 0)} == set(truth)
    assert all(index[p] == reads[0].image for p, reads in truth.items())
    counts = [sum(t.image == i for t in placement.geometry.tiles) for i in range(len(images))]
    assert counts == oracle.tiles_per_image(family.model, inputs, family.processor)


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
@pytest.mark.parametrize("prompt", ["wide", "tall", "two images"])
def test_tile_kinds_and_boxes_cover_each_image(family, prompt):
    _, placement = placed(family, images_of(PROMPTS[prompt]))
    geometry = placement.geometry
    for image, source in enumerate(geometry.images):
        tiles = [t for t in geometry.tiles if t.image == image]
        width, height = source.size
        whole = (0.0, 0.0, float(width), float(height))
        if len(tiles) == 1:
            assert tiles[0].kind == "full" and tiles[0].box == pytest.approx(whole)
            continue
        *crops, last = tiles
        assert last.kind == "global" and last.box == pytest.approx(whole)
        assert {t.kind for t in crops} == {"crop"}
        # the crops tile the image exactly: their areas add up to it and none overlap
        boxes = np.array([t.box for t in crops])
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
        assert area == pytest.approx(width * height)
        assert boxes[:, :2].min(0) == pytest.approx([0, 0])
        assert boxes[:, 2:].max(0) == pytest.approx([width, height])


# A red square in original pixels on the wide image (2x2 crops for every family here), in the
# top-right crop: a column-major tile order would put it bottom-left.
SQUARE = (36, 5, 45, 14)  # x0, y0, x1, y1 inclusive: inside the top-right crop


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
def test_painted_square_lands_on_the_patches_over_it(family):
    """Patches whose original-pixel box overlaps the square must have changed processed
    pixels; patches farther away than the resampling kernel reaches must not."""
    model = family.model
    before = noise_image(40, 56)
    after = painted(before, SQUARE)
    inputs_before, placement = placed(family, [load_image(before, "before")])
    inputs_after = prompt_inputs(family, [after])
    diff = inputs_after["pixel_values"] - inputs_before["pixel_values"]
    maps = oracle.pixel_maps(model, inputs_before, diff, family.processor)
    changed = {
        read_name(r, oracle.patch_size(model))
        for r in oracle.patches_read(
            {k: v for k, v in maps.items() if v.any()}, oracle.patch_size(model)
        )
    }
    geometry = placement.geometry
    names = patch_names(placement)
    sx0, sy0, sx1, sy1 = SQUARE[0], SQUARE[1], SQUARE[2] + 1, SQUARE[3] + 1
    over, far = set(), set()
    for g, (x0, y0, x1, y1) in enumerate(geometry.patch_boxes):
        tile = geometry.tiles[int(geometry.patch_tile[g])]
        # How far resampling spreads the square, in original pixels: Lanczos reaches 3 source
        # pixels, Idefics3 resizes twice (longest edge, then tile multiples), and a tile that
        # shrinks the image widens the reach by the shrink factor.
        scale_x = (tile.box[2] - tile.box[0]) / (tile.cols * oracle.patch_size(model))
        scale_y = (tile.box[3] - tile.box[1]) / (tile.rows * oracle.patch_size(model))
        mx, my = 7 * max(1.0, scale_x), 7 * max(1.0, scale_y)
        if x0 < sx1 - 1 and x1 > sx0 + 1 and y0 < sy1 - 1 and y1 > sy0 + 1:
            over.add(names[g])
        if x1 + mx <= sx0 or x0 - mx >= sx1 or y1 + my <= sy0 or y0 - my >= sy1:
            far.add(names[g])
    assert over and far
    assert over <= changed
    assert not far & changed
    # the square is seen in a crop and in the global view (the last tile)
    tiles = {tile for _, tile, _, _ in over}
    assert len(geometry.tiles) - 1 in tiles and min(tiles) < len(geometry.tiles) - 1


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
def test_vision_sequences_are_what_each_vision_token_reads(family):
    """With the vision attention zeroed, each output token of the tower depends on its own
    patch only (CLS on none): its gradient names the patch ``vision_sequences`` must list."""
    model = family.model
    images = images_of(PROMPTS["two images"])
    inputs, placement = placed(family, images)
    geometry = placement.geometry
    names = tile_names(placement)
    tower = oracle.vision_tower(model)
    seen: list[torch.Tensor] = []

    def keep(module, args, output):
        seen.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    pixel_values = inputs["pixel_values"].detach().clone().requires_grad_(True)
    handle = tower.register_forward_hook(keep)
    try:
        with oracle.vision_attention_zeroed(model), torch.enable_grad():
            model(**{**inputs, "pixel_values": pixel_values})
    finally:
        handle.remove()
    (hidden,) = seen
    assert hidden.shape[0] == len(geometry.vision_sequences) == len(geometry.tiles)
    assert {len(s) for s in geometry.vision_sequences} == {hidden.shape[1]}
    direction = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(0))
    size = oracle.patch_size(model)
    patch_of = {name: g for g, name in enumerate(patch_names(placement))}
    for v in range(hidden.shape[1]):
        (grad,) = torch.autograd.grad(
            (hidden[:, v] @ direction).sum(), pixel_values, retain_graph=True
        )
        maps = oracle.pixel_maps(model, inputs, grad, family.processor)
        for sequence, tile in enumerate(names):
            reads = oracle.patches_read({tile: maps[tile]} if maps[tile].any() else {}, size)
            got = [patch_of[read_name(r, size)] for r in reads]
            assert got == (
                []
                if geometry.vision_sequences[sequence][v] < 0
                else [geometry.vision_sequences[sequence][v]]
            )
    expected_summary = "cls" if family.spec.name == "internvl" else "mean"
    assert geometry.vision_summary == expected_summary


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
def test_vision_pieces_cover_every_sequence_at_every_layer(family):
    images = images_of(PROMPTS["two images"])
    inputs, placement = placed(family, images)
    adapter = adapter_for(family.model, family.processor)
    check_whole_sequence_pieces(adapter, family.model, inputs, placement.geometry)


@pytest.mark.parametrize("name", ["internvl", "aya_vision"])
@pytest.mark.parametrize("feature_layer", [-1, -2, 1])  # 0: the models themselves fail
def test_vision_layers_feeding_lm_match_the_features(build, name, feature_layer):
    """Changing the weights of a vision layer the adapter says the LM does not read must leave
    the LM's image rows unchanged; changing any layer it says it reads must change them."""
    built = build(name)
    model = built.model.requires_grad_(False)
    config = model.config
    saved = config.vision_feature_layer
    config.vision_feature_layer = feature_layer
    try:
        adapter = adapter_for(model, built.processor)
        depth = adapter.vision_layers_feeding_lm()
        inputs = prompt_inputs(built, [noise_image()])
        layers = next(
            m
            for n, m in oracle.vision_tower(model).named_modules()
            if n.endswith(("layers", "layer")) and isinstance(m, torch.nn.ModuleList)
        )
        assert len(layers) == adapter.num_vision_layers()
        base, _ = oracle.lm_image_rows(model, inputs)
        for layer, module in enumerate(layers):
            saved_weights = [p.clone() for p in module.parameters()]
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(0.5)
            try:
                rows, _ = oracle.lm_image_rows(model, inputs)
            finally:
                with torch.no_grad():
                    for p, w in zip(module.parameters(), saved_weights, strict=True):
                        p.copy_(w)
            assert (not torch.equal(rows, base)) == (layer < depth), (layer, depth)
    finally:
        config.vision_feature_layer = saved


@pytest.mark.parametrize("name", FAMILIES)
def test_two_image_prompt_recorded_through_the_cli(build, tmp_path, name):
    """``lvlm-interpret record --image a --image b`` stores both images, the geometry the
    adapter gives for the same inputs, the image each token reads, one vision attention block
    per tile, and relevancy over every patch."""
    built = build(name)
    noise = [noise_image(h, w, seed=i) for i, (h, w) in enumerate(PROMPTS["two images"])]
    files = save_images(noise, tmp_path)
    store_dir = tmp_path / "store"
    prompt = "what is in the image ?"
    trace_id = record_with_cli(built.folder, files, prompt, store_dir, 2)

    loaded = load_model(str(built.folder))
    images = [load_image(file) for file in files]
    expected = loaded.adapter.geometry(loaded.adapter.build_inputs(images, prompt), images)
    with open_store(store_dir) as store, store.open(trace_id) as trace:
        geometry, tokens, relevancy = trace.image, trace.tokens, trace.relevancy
        vision_shapes = trace.vision_shapes
        vision = [trace.vision_attention_layer(0, s) for s in range(len(vision_shapes))]
    assert [im.size for im in geometry.images] == [(w, h) for h, w in PROMPTS["two images"]]
    assert geometry.tiles == expected.geometry.tiles
    for field in ("rows", "patches", "weights"):
        got = getattr(geometry.token_patches, field)
        np.testing.assert_array_equal(got, getattr(expected.geometry.token_patches, field))
    prompt_index = tokens.image_index[: tokens.prompt_length]
    np.testing.assert_array_equal(prompt_index, expected.image_index)
    assert set(prompt_index[tokens.roles[: tokens.prompt_length] == TokenRole.IMAGE]) == {0, 1}
    layers = loaded.adapter.num_vision_layers()
    lengths = [len(s) for s in geometry.vision_sequences]
    assert [(shape[0], shape[2], shape[3]) for shape in vision_shapes] == [
        (layers, v, v) for v in lengths
    ]
    assert len(vision_shapes) == len(geometry.tiles)
    for heads in vision:
        np.testing.assert_allclose(heads.sum(-1), 1.0, atol=2e-3)
    # relevancy of the two-image prompt, every mode, against the slow float64 reference
    inputs = loaded.adapter.build_inputs(images, prompt)
    for mode, reference in zip(
        RelevancyMode, reference_relevancy(loaded, inputs, tokens.ids, geometry), strict=True
    ):
        ours = relevancy.map(mode)
        assert ours.shape == reference.shape, mode
        scale = max(float(np.abs(reference).max()), 1e-12)
        np.testing.assert_allclose(ours, reference, atol=1e-5 * max(1.0, scale), err_msg=mode)


@pytest.mark.parametrize(("name", "strategy"), [("internvl", "full"), ("aya_vision", "default")])
def test_a_feature_strategy_that_cannot_pixel_shuffle_is_refused(build, name, strategy):
    """InternVL keeping its CLS feature, or Aya Vision dropping a SigLIP patch as if it were
    one, leaves a non-square grid: one clear error, not a wrong map."""
    built = build(name)
    config = built.model.config
    saved, config.vision_feature_select_strategy = config.vision_feature_select_strategy, strategy
    try:
        with pytest.raises(UnsupportedModelError, match="strategy"):
            placed(built, images_of(PROMPTS["wide"]))
    finally:
        config.vision_feature_select_strategy = saved


def test_idefics3_grids_come_from_the_markers_however_they_are_tokenised():
    """The text before each run of image tokens, decoded (a marker may be split into several
    tokens): crops row-major then the global view make a grid; anything else is refused."""
    before = ["user: <fake_token_around_image><row_1_col_1>"]
    before += [f"<fake_token_around_image><row_{r}_col_{c}>" for r, c in [(1, 2), (1, 3)]]
    before += ["\n\n<fake_token_around_image><global-img>", "<fake><global-img>"]
    assert grids_from_markers(tile_markers(before)) == [CropGrid(1, 3), CropGrid(1, 1)]
    with pytest.raises(UnsupportedModelError, match="row-major"):
        grids_from_markers(tile_markers(["<row_1_col_2>", "<row_1_col_1>", "<global-img>"]))
    with pytest.raises(UnsupportedModelError, match="no <global-img> view"):
        grids_from_markers(tile_markers(["<row_1_col_1>", "<row_1_col_2>"]))
    with pytest.raises(UnsupportedModelError, match="no <row_i_col_j>"):
        tile_markers(["user: <fake_token_around_image>"])
