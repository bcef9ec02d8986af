"""The demo LVLM's parts: a word-level tokenizer, a LLaVA processor and a tiny LLaVA config.

Everything is a stock Hugging Face class (``LlavaForConditionalGeneration``, ``LlavaProcessor``,
``PreTrainedTokenizerFast``), so the saved checkpoint loads through the same ``Auto*`` path as a
hub model and the recorder needs no demo-specific code.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from engine.demo.world import IMAGE_SIZE, vocabulary

PATCH_SIZE = 8
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN)
TEMPLATE_WORDS = ("USER", "ASSISTANT", ":", "\n")

# LLaVA-1.5's turn format, but each turn's text comes before its image: image tokens can then
# attend to the question, which lets a model this small learn to ground answers (with the
# image first, training stalled near chance on colour/shape/position questions).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class Sizes:
    """Shape of a LLaVA built from these parts; MLPs are 4x (vision) and 3x (text) wide."""

    image_size: int = IMAGE_SIZE
    patch_size: int = PATCH_SIZE
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4


DEMO_SIZES = Sizes()
# LLaVA-1.5's image geometry (336 px, 14 px patches: 576 image tokens) on a model small enough
# for a CPU: the benchmarks' "mid-size" configuration (~68M parameters).
MID_SIZES = Sizes(
    image_size=336,
    patch_size=14,
    vision_hidden=384,
    vision_layers=6,
    vision_heads=6,
    text_hidden=768,
    text_layers=8,
    text_heads=12,
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    words = [*SPECIAL_TOKENS, *TEMPLATE_WORDS, *vocabulary()]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", words.index("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def build_processor(
    tokenizer: PreTrainedTokenizerFast | None = None, sizes: Sizes = DEMO_SIZES
) -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": sizes.image_size},
        crop_size={"height": sizes.image_size, "width": sizes.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer or build_tokenizer(),
        patch_size=sizes.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: PreTrainedTokenizerFast, sizes: Sizes = DEMO_SIZES) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=4 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
    )
    grid = sizes.image_size // sizes.patch_size
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.text_hidden,
        intermediate_size=3 * sizes.text_hidden,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_heads,
        max_position_embeddings=max(256, 2 * grid * grid),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=grid * grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast, sizes: Sizes = DEMO_SIZES
) -> LlavaForConditionalGeneration:
    """A randomly initialised model (seed torch before calling for reproducibility)."""
    return LlavaForConditionalGeneration(build_config(tokenizer, sizes))
