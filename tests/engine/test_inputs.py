"""Bad input gets a clear error that says what to do, never a deep stack trace."""

import pytest
from PIL import Image

from engine.errors import (
    ImageError,
    InputError,
    ModelLoadError,
    PromptError,
    UnsupportedModelError,
)
from engine.inputs import check_prompt, check_tags, check_text, load_image
from engine.loading import load_model


def test_missing_image(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_corrupt_and_unsupported_images(tmp_path):
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.png")
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (truncated, text):
        with pytest.raises(ImageError, match="not a readable image"):
            load_image(path)


def test_oversized_image_is_rejected_before_decoding(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 9000)).save(huge)  # tiny file, 81 Mpx once decoded
    with pytest.raises(ImageError, match="downscale"):
        load_image(huge)


def test_image_identity_is_its_content_hash(tmp_path):
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    first, second = load_image(tmp_path / "a.png"), load_image(tmp_path / "b.png")
    assert first.sha256 == second.sha256 and first.name == "a.png"
    assert first.image.mode == "RGB"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("", "empty"), ("   \n", "empty"), ("<image> what is this?", "Remove"), ("x" * 9000, "limit")],
)
def test_bad_prompts(prompt, message):
    with pytest.raises(PromptError, match=message):
        check_prompt(prompt)


def test_unknown_model_path():
    with pytest.raises(ModelLoadError, match="No folder /no/such/checkpoint"):
        load_model("/no/such/checkpoint")


def test_text_only_model_is_not_a_vlm(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.demo.architecture import build_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    with pytest.raises((ModelLoadError, UnsupportedModelError)):
        load_model(str(tmp_path))


def test_unknown_dtype():
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model("anything", dtype="float8")


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": float("inf")},
        {"do_sample": True, "temperature": 0.0},
        {"temperature": -1.0},
        {"top_p": float("nan")},
        {"seed": 2**70},
        {"seed": -1},
        {"max_new_tokens": 0},
        {"max_new_tokens": 100_000},
    ],
)
def test_record_refuses_settings_before_generating(demo_model, settings):
    from engine.recorder import RecordOptions, record
    from store.schema import GenerationSettings

    image = load_image(Image.new("RGB", (64, 64), "red"))
    with pytest.raises(InputError):
        record(demo_model, image, "Colour?", RecordOptions(GenerationSettings(**settings)))


def test_text_must_be_utf8_and_tags_follow_the_store_rules():
    with pytest.raises(InputError, match="not UTF-8"):
        check_text("caf\udce9", "The tag")
    with pytest.raises(PromptError, match="empty"):
        check_prompt("  ")
    with pytest.raises(InputError, match="control characters"):
        check_tags(["a\nb"])
    assert check_tags(["cafe\u0301"]) == ["caf\u00e9"]  # one tag however it was typed


def test_damaged_config_values_are_a_load_error(tmp_path, demo_checkpoint):
    """A config.json that parses but holds nonsense fails inside transformers, with its own
    exception types; the loader turns each into one ModelLoadError."""
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(demo_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "text_config": 5}))
    with pytest.raises(ModelLoadError, match="text_config"):
        load_model(str(folder))
