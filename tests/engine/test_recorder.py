"""What one recording contains, checked against the model and the input it came from."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from engine.demo.world import ask, make_scene
from engine.errors import UnsupportedModelError
from engine.inputs import load_image
from engine.recorder import RecordOptions, record
from store.schema import GenerationSettings, TokenRole


@pytest.fixture(scope="module")
def scene_and_question():
    scene = make_scene(21)
    return scene, ask(scene, "colour", random.Random(3))


@pytest.fixture(scope="module")
def trace(demo_model, scene_and_question):
    scene, question = scene_and_question
    return record(
        demo_model,
        load_image(scene.image, "scene.png"),
        question.text,
        reference_answer=question.answer,
        extra={"ground_truth": scene.ground_truth()},
    )


def test_answer_equals_plain_generate(demo_model, scene_and_question, trace):
    scene, question = scene_and_question
    processor = demo_model.processor
    inputs = demo_model.adapter.build_inputs([load_image(scene.image, "s.png")], question.text)
    plain = demo_model.model.generate(**inputs, max_new_tokens=32, do_sample=False)
    np.testing.assert_array_equal(trace.tokens.ids, plain[0].numpy())
    expected = processor.tokenizer.decode(
        plain[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert trace.info.answer == expected.strip()
    assert trace.info.correct == (trace.info.answer == question.answer)


def test_attention_is_complete_row_stochastic_and_causal(demo_model, trace):
    config = demo_model.model.config
    length = len(trace.tokens.ids)
    lm = trace.lm_attention.astype(np.float32)
    assert lm.shape == (
        config.text_config.num_hidden_layers,
        config.text_config.num_attention_heads,
        length,
        length,
    )
    np.testing.assert_allclose(lm.sum(-1), 1.0, atol=2e-3)  # stored as float16
    assert np.all(np.triu(lm, k=1) == 0), "a query attended to a later token"
    (vision,) = trace.vision_attention  # one tile: one vision sequence
    vision = vision.astype(np.float32)
    grid = config.vision_config.image_size // config.vision_config.patch_size
    assert vision.shape[-1] == grid * grid + 1  # CLS + patches
    np.testing.assert_allclose(vision.sum(-1), 1.0, atol=2e-3)


def test_token_map_round_trips_to_patches(demo_model, trace):
    tokens, image = trace.tokens, trace.image
    positions = tokens.image_positions
    assert len(positions) == image.grid_rows * image.grid_cols
    assert np.all(np.diff(positions) == 1)
    # image token i <-> patch i, and each patch's box holds the pixels the tower saw there
    np.testing.assert_array_equal(tokens.image_patch[positions], np.arange(len(positions)))
    assert np.all(tokens.image_patch[tokens.roles != TokenRole.IMAGE] == -1)
    patch = demo_model.model.config.vision_config.patch_size
    for index in (0, 9, len(positions) - 1):
        row, col = divmod(index, image.grid_cols)
        np.testing.assert_allclose(
            image.patch_boxes[index],
            [col * patch, row * patch, (col + 1) * patch, (row + 1) * patch],
        )
    assert np.all(tokens.roles[tokens.prompt_length :] == TokenRole.ANSWER)
    assert np.all(tokens.word_ids[positions] == -1)


def test_patch_boxes_follow_resize_and_centre_crop(demo_model):
    wide = Image.new("RGB", (200, 100), "white")
    trace = record(demo_model, load_image(wide, "wide.png"), "What color is the circle?")
    boxes = trace.image.patch_boxes
    # shortest edge 100 -> 64 (scale 0.64); the 128-wide resize is centre-cropped to 64
    assert boxes[:, 1].min() == pytest.approx(0) and boxes[:, 3].max() == pytest.approx(100)
    assert boxes[:, 0].min() == pytest.approx(50) and boxes[:, 2].max() == pytest.approx(150)
    assert trace.image.original_size == (200, 100)


def test_top_k_and_summaries_are_consistent(trace):
    answer_length = trace.tokens.answer_length
    assert trace.top_k.ids.shape[0] == answer_length
    chosen = trace.tokens.ids[trace.tokens.prompt_length :]
    np.testing.assert_array_equal(trace.top_k.ids[:, 0], chosen)  # greedy picks the top token
    np.testing.assert_allclose(trace.top_k.probs[:, 0], trace.top_k.chosen_prob, rtol=1e-5)
    shares = trace.summaries.attention_shares
    assert shares.shape[2:] == (answer_length, 3)
    np.testing.assert_allclose(shares.sum(-1), 1.0, atol=2e-3)
    lm = trace.lm_attention.astype(np.float32)
    row = trace.tokens.prompt_length - 1
    image_share = lm[:, :, row, trace.tokens.image_positions].sum(-1)
    # shares come from the float32 attention; the stored attention is float16
    np.testing.assert_allclose(shares[:, :, 0, 0], image_share, atol=2e-3)
    np.testing.assert_allclose(trace.summaries.head_image_attention, shares[..., 0].mean(-1))


def test_recording_without_relevancy_or_vision(demo_model, scene_and_question):
    scene, question = scene_and_question
    options = RecordOptions(
        generation=GenerationSettings(max_new_tokens=2), relevancy=False, vision_attention=False
    )
    trace = record(demo_model, load_image(scene.image, "s.png"), question.text, options)
    assert trace.relevancy is None and trace.vision_attention is None
    assert trace.tokens.answer_length <= 2


def test_sampling_is_reproducible_from_its_seed(demo_model, scene_and_question):
    scene, question = scene_and_question
    settings = GenerationSettings(do_sample=True, temperature=1.5, seed=7, max_new_tokens=4)
    options = RecordOptions(generation=settings, relevancy=False)
    image = load_image(scene.image, "s.png")
    first = record(demo_model, image, question.text, options)
    second = record(demo_model, image, question.text, options)
    np.testing.assert_array_equal(first.tokens.ids, second.tokens.ids)


def test_model_without_attention_weights_is_refused(demo_checkpoint, scene_and_question):
    from engine.loading import load_model

    loaded = load_model(str(demo_checkpoint))
    loaded.model.set_attn_implementation("sdpa")
    scene, question = scene_and_question
    with pytest.raises(UnsupportedModelError, match="attn_implementation='eager'"):
        record(loaded, load_image(scene.image, "s.png"), question.text)
    torch.set_grad_enabled(True)


def test_template_without_an_image_placeholder_is_refused(demo_checkpoint, scene_and_question):
    from engine.errors import PromptError
    from engine.loading import load_model

    loaded = load_model(str(demo_checkpoint))
    text_only = "{% for m in messages %}{{ m['content'][-1]['text'] }}{% endfor %}"
    loaded.processor.chat_template = text_only
    scene, question = scene_and_question
    with pytest.raises(PromptError, match="no image token"):
        record(loaded, load_image(scene.image, "s.png"), question.text)
