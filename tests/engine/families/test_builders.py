"""Every family's tiny random model: builds, reloads, generates, shows its attention, and its
token → patch map is what the model itself does (gradients with vision attention zeroed, and a
painted square that lands on exactly the tokens the map names)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoProcessor
from transformers.utils import is_torchvision_available

from engine.adapters import adapter_class
from engine.capture import capture_vision_attention
from engine.errors import InputError
from engine.loading import StandInVideoProcessor, load_processor, load_weights
from tests.engine.families import oracle
from tests.engine.families.builders import FAMILIES, VIDEO_SETTINGS, prompt_inputs
from tests.engine.families.images import noise_image, painted

NAMES = list(FAMILIES)
ANSWER_TOKENS = 6

# The token -> patch map of a 40x56 noise image, as the oracle reads it from each model:
# (image-token positions, positions reading no pixels, patches read per other position).
EXPECTED = {
    # 64 px square crop, 8 px patches: 8x8 tokens, one patch each, CLS dropped
    "llava": (64, 0, {1}),
    # base tile 4x4 + best canvas 64x64 (4 tiles) unpadded to 6 rows x 8 cols, a newline per row
    "llava_next": (70, 6, {1}),
    # as NeXT, but 48 > 2·16 features: 6x8 bilinearly shrunk to 4x6, tokens mix 2x2 patches
    "llava_onevision": (44, 4, {1, 4}),
    # resized to 32x64 (multiples of 16), 4x8 patches, one token per 2x2 merge block
    "qwen2_vl": (8, 0, {4}),
    "qwen2_5_vl": (8, 0, {4}),
    "qwen3_vl": (8, 0, {4}),
    # 32 px squash, 8x8 patches of 4 px average-pooled 2x2 into 4x4 tokens
    "gemma3": (16, 0, {4}),
    # 32 px squash, 4x4 patches, image tokens first in raster order
    "paligemma": (16, 0, {1}),
    # 64 px longest edge -> 2x2 tiles of 32 px (+ global view): 5 tiles x 2x2 tokens (shuffle 2)
    "idefics3": (20, 0, {4}),
    "smolvlm": (20, 0, {4}),
    # cross-attention keys: 4 tiles x (CLS + 4x4 patches); CLS rows read no pixels
    "mllama": (68, 4, {1}),
    # 2x2 tiles + thumbnail, 2x2 pixel shuffle: 5 tiles x 4 tokens
    "internvl": (20, 0, {4}),
    "aya_vision": (20, 0, {4}),
}


def _generate(built, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy answer ids [1, n] and the raw logits of each step [n, vocab]; special and image
    tokens suppressed (random models emit them)."""
    tokenizer = built.processor.tokenizer
    output = built.model.generate(
        **inputs,
        max_new_tokens=ANSWER_TOKENS,
        do_sample=False,
        suppress_tokens=list(tokenizer.all_special_ids),
        output_attentions=True,
        output_logits=True,
        return_dict_in_generate=True,
    )
    assert len(output.attentions) == ANSWER_TOKENS
    assert len(output.attentions[0]) == built.model.config.get_text_config().num_hidden_layers
    answer = output.sequences[:, inputs["input_ids"].shape[-1] :]
    return answer, torch.cat(output.logits)


@pytest.mark.parametrize("name", NAMES)
def test_builds_tiny_and_reloads_with_identical_logits(build, name):
    built = build(name)
    assert built.params < 300_000
    assert built.model.config._attn_implementation == "eager"
    processor = load_processor(str(built.folder))
    model = load_weights(str(built.folder)).eval()
    assert type(processor).__name__ == type(built.processor).__name__
    inputs = prompt_inputs(built, [noise_image()])
    reloaded = prompt_inputs(built, [noise_image()], processor=processor)
    assert reloaded.keys() == inputs.keys()
    assert all(torch.equal(reloaded[k], inputs[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(built.model(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("name", NAMES)
def test_generates_and_teacher_forcing_reproduces_the_answer(build, name):
    """The adapter's one pass over prompt + answer, side inputs grown, gives generation's
    logits at each step: e.g. PaliGemma answer positions typed 0 (prefix) instead of 1 change
    them."""
    built = build(name)
    inputs = prompt_inputs(built, [noise_image()])
    answer, step_logits = _generate(built, inputs)
    assert answer.shape == (1, ANSWER_TOKENS)
    adapter = adapter_class(built.model.config.model_type)(built.model, built.processor)
    sequence = torch.cat([inputs["input_ids"][0], answer[0]])
    with torch.no_grad():
        logits = built.model(**adapter.forced_inputs(inputs, sequence)).logits
    prompt = inputs["input_ids"].shape[-1]
    forced = logits[0, prompt - 1 : prompt - 1 + ANSWER_TOKENS]
    torch.testing.assert_close(forced, step_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_vision_and_lm_attention_with_gradients(build, name):
    """Probabilities of every LM layer and every vision chunk, each with a gradient."""
    built = build(name)
    model = built.model.requires_grad_(False)
    inputs = prompt_inputs(built, [noise_image()])
    inputs["pixel_values"] = inputs["pixel_values"].clone().requires_grad_(True)

    def embeddings_as_leaf(module, args, output):  # layers before the image still get gradients
        return output.detach().requires_grad_(True)

    handle = model.get_input_embeddings().register_forward_hook(embeddings_as_leaf)
    try:
        with capture_vision_attention(model) as chunks, torch.enable_grad():
            output = model(**inputs, output_attentions=True)
            score = output.logits[0, -1].max()
            lm = list(output.attentions)
            grads = torch.autograd.grad(score, lm + chunks, allow_unused=True)
    finally:
        handle.remove()
    text_config = model.config.get_text_config()
    assert len(lm) == text_config.num_hidden_layers
    assert len(chunks) >= model.config.vision_config.to_dict().get(
        "num_hidden_layers", model.config.vision_config.to_dict().get("depth")
    )
    for probabilities in [*lm, *chunks]:
        sums = probabilities.detach().sum(-1)
        assert torch.allclose(sums[sums > 0], torch.ones(()), atol=1e-5)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[: len(lm)])
    assert any(g is not None and g.abs().sum() > 0 for g in grads[len(lm) :])


@pytest.mark.parametrize("name", NAMES)
def test_oracle_matches_the_model_and_a_painted_square(build, name):
    built = build(name)
    model = built.model.requires_grad_(False)
    inputs = prompt_inputs(built, [noise_image()])
    reads = oracle.token_patch_map(model, inputs, built.processor)
    positions, empty, per_token = EXPECTED[name]
    assert len(reads) == positions
    assert sum(1 for r in reads.values() if not r) == empty
    assert {len(r) for r in reads.values() if r} == per_token
    for token_reads in reads.values():
        if token_reads:
            assert sum(r.weight for r in token_reads) == pytest.approx(1.0)
    if name not in oracle.MIXING_LEAF:  # no interpolation: each patch feeds one token
        patches = [(r.image, r.tile, r.box) for rs in reads.values() for r in rs]
        assert len(patches) == len(set(patches))
    for rs in reads.values():
        if len(rs) == 4:  # a 2x2 block of neighbouring patches
            xs = sorted({r.box[0] for r in rs})
            ys = sorted({r.box[1] for r in rs})
            size = rs[0].box[2] - rs[0].box[0]
            assert len(xs) == len(ys) == 2
            assert xs[1] - xs[0] == ys[1] - ys[0] == size
    square = painted(noise_image(), (6, 6, 16, 14))
    after = prompt_inputs(built, [square])
    changed = oracle.embedding_change(model, inputs, after)
    assert changed
    assert changed == oracle.tokens_over_change(model, inputs, after, reads, built.processor)


def test_oracle_rasters_paligemma_tokens(build):
    """PaliGemma: image token k reads patch k in raster order (4x4 grid of 8 px patches)."""
    built = build("paligemma")
    reads = oracle.token_patch_map(
        built.model, prompt_inputs(built, [noise_image()]), built.processor
    )
    for k, position in enumerate(sorted(reads)):
        (read,) = reads[position]
        assert read.box == (8 * (k % 4), 8 * (k // 4), 8 * (k % 4) + 8, 8 * (k // 4) + 8)


@pytest.mark.parametrize("name", ["llava_next", "qwen2_vl", "idefics3", "aya_vision"])
def test_multi_image_tokens_know_their_image(build, name):
    built = build(name)
    model = built.model.requires_grad_(False)
    images = [noise_image(seed=1), noise_image(32, 32, seed=2)]
    inputs = prompt_inputs(built, images)
    reads = oracle.token_patch_map(model, inputs, built.processor)
    by_image = {p: {r.image for r in rs} for p, rs in reads.items() if rs}
    assert set().union(*by_image.values()) == {0, 1}
    assert all(len(images_read) == 1 for images_read in by_image.values())
    second = [p for p, i in by_image.items() if i == {1}]
    assert min(second) > max(p for p, i in by_image.items() if i == {0})  # image order kept
    after = prompt_inputs(built, [images[0], painted(images[1], (2, 2, 12, 12))])
    changed = oracle.embedding_change(model, inputs, after)
    assert changed and changed <= set(second)
    assert changed == oracle.tokens_over_change(model, inputs, after, reads, built.processor)


VIDEO_PROCESSOR_FAMILIES = [
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "internvl",
    "smolvlm",
]


@pytest.mark.skipif(is_torchvision_available(), reason="the fallback is for torchvision's absence")
@pytest.mark.parametrize("name", VIDEO_PROCESSOR_FAMILIES)
def test_processor_with_a_video_processor_loads_without_torchvision(build, name, caplog):
    built = build(name)
    with pytest.raises(ValueError, match="torchvision"):  # what load_processor exists for
        AutoProcessor.from_pretrained(str(built.folder))
    processor = load_processor(str(built.folder))
    assert not [r for r in caplog.records if "StandInVideoProcessor" in r.getMessage()]
    assert type(processor).__name__ == type(built.processor).__name__
    assert isinstance(processor.video_processor, StandInVideoProcessor)
    for key, value in VIDEO_SETTINGS.get(name, {}).items():  # settings survive the round trip
        assert getattr(processor.video_processor, key) == value
    with pytest.raises(InputError, match="torchvision"):
        processor.video_processor([])


@pytest.mark.skipif(is_torchvision_available(), reason="the fallback is for torchvision's absence")
def test_processor_saved_without_video_settings_still_loads(build, tmp_path):
    """Checkpoints saved before their family had a video processor have no video settings."""
    built = build("qwen2_vl")
    folder = tmp_path / "old"
    shutil.copytree(built.folder, folder)
    config_file = folder / "processor_config.json"
    config = json.loads(config_file.read_text())
    del config["video_processor"]
    config_file.write_text(json.dumps(config))
    processor = load_processor(str(folder))
    assert isinstance(processor.video_processor, StandInVideoProcessor)
    inputs = prompt_inputs(built, [noise_image()], processor=processor)
    assert torch.equal(inputs["input_ids"], prompt_inputs(built, [noise_image()])["input_ids"])


@pytest.mark.parametrize("name", NAMES)
def test_answer_depends_on_the_image(build, name):
    """The zero-init traps are fixed: Gemma 3's projector and Mllama's gates let pixels through."""
    built = build(name)
    before = prompt_inputs(built, [noise_image()])
    after = prompt_inputs(built, [painted(noise_image(), (0, 0, 39, 39))])
    with torch.no_grad():
        last = [built.model(**inputs).logits[0, -1] for inputs in (before, after)]
    assert not torch.equal(*last)


def test_gemma3_pan_and_scan_crops_are_extra_images(build):
    """Pan & scan (asked per call): the whole image first, then its crops, 16 tokens each; the
    oracle sees each crop as one ``pixel_values`` row (an adapter groups them as tiles)."""
    built = build("gemma3")
    model = built.model.requires_grad_(False)
    options = {
        "do_pan_and_scan": True,
        "pan_and_scan_min_crop_size": 8,
        "pan_and_scan_max_num_crops": 4,
        "pan_and_scan_min_ratio_to_activate": 1.2,
    }
    inputs = prompt_inputs(built, [noise_image()], **options)
    assert inputs["pixel_values"].shape[0] == 3  # 40x56: the whole image and two crops
    reads = oracle.token_patch_map(model, inputs, built.processor)
    images = [{r.image for r in reads[p]} for p in sorted(reads)]
    assert images == [{0}] * 16 + [{1}] * 16 + [{2}] * 16
    after = prompt_inputs(built, [painted(noise_image(), (50, 30, 55, 39))], **options)
    changed = oracle.embedding_change(model, inputs, after)
    assert {r.image for p in changed for r in reads[p]} == {0, 2}  # the whole, the right crop
    assert changed == oracle.tokens_over_change(model, inputs, after, reads, built.processor)


# Vision attention chunks [query, key] of the 40x56 image, one per eager call, in call order.
VISION_CHUNKS = {
    "qwen2_vl": [(32, 32)] * 2,  # per image, both layers full attention over 4x8 patches
    # layer 0 windowed (window_size 32 px = 4x4 patches): the 4x8 grid is two windows of 16;
    # layer 1 (fullatt_block_indexes) attends over all 32 patches
    "qwen2_5_vl": [(16, 16), (16, 16), (32, 32)],
    # 2 local + 1 global layer over 4 tiles x (CLS + 16 patches, padded to 24)
    "mllama": [(96, 96)] * 3,
    "llava_next": [(17, 17)] * 2,  # 5 tiles a call (batch), CLS + 16 patches
    "gemma3": [(64, 64)] * 2,  # 8x8 patches of 4 px, no CLS (SigLIP)
}


@pytest.mark.parametrize("name", list(VISION_CHUNKS))
def test_vision_attention_chunks(build, name):
    built = build(name)
    with capture_vision_attention(built.model) as chunks, torch.no_grad():
        built.model(**prompt_inputs(built, [noise_image()]))
    assert [tuple(c.shape[-2:]) for c in chunks] == VISION_CHUNKS[name]
