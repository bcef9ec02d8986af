"""Tiny random-initialised models of the real transformers classes of each main VLM family.

Each family is one :class:`FamilySpec`: its special tokens, how an image is written in a chat
turn, its config (the stock config class with tiny sizes) and its processor (the stock
processor class with tiny image sizes). :func:`build_family` turns a spec into a saved folder
that loads through the same ``Auto*`` path as a hub checkpoint, without any download.

Random initialisation has two traps that make a model ignore its image, fixed in ``repair``:
Gemma 3 starts its projector at zero and Mllama its cross-attention tanh gates at zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PretrainedConfig, PreTrainedTokenizerFast, ProcessorMixin

from engine.demo import architecture as llava15
from engine.loading import StandInVideoProcessor, needs_video_free, video_free

WORDS = ("user", "assistant", ":", "what", "is", "in", "the", "image", "?", "a", "red", "square")
BASE_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
HIDDEN = 32
# The LM's shape for every family: head_dim 16, MLP 2x wide, two layers.
TEXT = {
    "hidden_size": HIDDEN,
    "intermediate_size": 2 * HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
# The vision tower's shape for ViT-style towers (CLIP, SigLIP, Idefics3, InternViT).
VISION = {
    "hidden_size": HIDDEN,
    "intermediate_size": 2 * HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


@dataclass(frozen=True)
class FamilySpec:
    """What differs between families: tokens, how a turn shows an image, config, processor."""

    name: str
    image_in_turn: str  # what the chat template writes for one image
    special_tokens: dict[str, str]  # tokenizer attributes (``image_token`` …) -> token text
    config: Callable[[PreTrainedTokenizerFast], PretrainedConfig]
    processor: Callable[[PreTrainedTokenizerFast], ProcessorMixin]
    extra_tokens: tuple[str, ...] = ()  # more special tokens the processor writes
    repair: Callable[[torch.nn.Module], None] | None = None
    needs: tuple[str, ...] = ()  # importable modules the processor requires
    tokenizer: Callable[[], PreTrainedTokenizerFast] | None = None  # else build_tokenizer


def chat_template(image_in_turn: str) -> str:
    """A plain ``role: text`` template; images come before the text of their turn."""
    return (
        "{% for message in messages %}{{ message['role'] + ': ' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
        f"{{{{ {image_in_turn!r} }}}}"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    )


def build_tokenizer(spec: FamilySpec) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: the base specials, the family's tokens, then a few words."""
    specials = [*BASE_SPECIALS, *dict.fromkeys([*spec.special_tokens.values(), *spec.extra_tokens])]
    words = [*specials, *WORDS]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=spec.special_tokens,
        chat_template=chat_template(spec.image_in_turn),
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[len(BASE_SPECIALS) :]})
    return tokenizer


def _ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


# Video settings the processors read even for images (saved with the stand-in, and given to the
# real video processor where torchvision is installed).
VIDEO_SETTINGS = {
    "smolvlm": {"num_frames": 64, "fps": 1},
    "qwen2_vl": {"merge_size": 2, "temporal_patch_size": 2, "patch_size": 8},
    "qwen2_5_vl": {"merge_size": 2, "temporal_patch_size": 2, "patch_size": 8},
    "qwen3_vl": {"merge_size": 2, "temporal_patch_size": 2, "patch_size": 8},
}


def with_video(processor_class: str, model_type: str, **parts) -> ProcessorMixin:
    """A processor that declares a video processor: the real one where torchvision is here."""
    cls = getattr(tf, processor_class)
    settings = VIDEO_SETTINGS.get(model_type, {})
    if needs_video_free(cls):
        return video_free(cls)(video_processor=StandInVideoProcessor(**settings), **parts)
    from transformers.models.auto import video_processing_auto as auto

    real = auto.video_processor_class_from_name(
        auto.VIDEO_PROCESSOR_MAPPING_NAMES[model_type]["torchvision"]
    )
    return cls(video_processor=real(**settings), **parts)


def _id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


# ---- LLaVA-NeXT / OneVision: anyres tiles of a 32 px base resolution, 8 px patches ----------
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
# OneVision shrinks (bilinearly) a high-resolution grid of more than max·G² features; real
# checkpoints say anyres_max_9, which these 4x4-patch tiles never reach: max 2 makes the shrink
# (by a non-integer factor), and with it the weighted many-to-one token map, happen at this size.
ONEVISION_ASPECT = "anyres_max_2"


def _llava_next_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return tf.LlavaNextConfig(
        vision_config=tf.CLIPVisionConfig(**VISION, image_size=32, patch_size=8),
        text_config=tf.LlamaConfig(**TEXT, **_ids(tok)),
        image_token_index=_id(tok, "<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )


def _llava_next_processor(tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    images = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=PINPOINTS,
    )
    return tf.LlavaNextProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )


def _onevision_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return tf.LlavaOnevisionConfig(
        vision_config=tf.SiglipVisionConfig(**VISION, image_size=32, patch_size=8),
        text_config=tf.Qwen2Config(**TEXT, **_ids(tok)),
        image_token_index=_id(tok, "<image>"),
        video_token_index=_id(tok, "<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio=ONEVISION_ASPECT,
    )


def _onevision_processor(tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    images = tf.LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    return with_video(
        "LlavaOnevisionProcessor",
        "llava_onevision",
        image_processor=images,
        tokenizer=tok,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=ONEVISION_ASPECT,
        chat_template=tok.chat_template,
    )


# ---- Qwen2/2.5/3-VL: native resolution, 8 px patches, 2x2 merge ---------------------------------
QWEN_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def _qwen_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "image_token_id": _id(tok, "<|image_pad|>"),
        "video_token_id": _id(tok, "<|video_pad|>"),
        "vision_start_token_id": _id(tok, "<|vision_start|>"),
        "vision_end_token_id": _id(tok, "<|vision_end|>"),
    }


QWEN_ROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
QWEN_VISION = {"depth": 2, "hidden_size": HIDDEN, "num_heads": 2, "patch_size": 8}


def _qwen2_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return tf.Qwen2VLConfig(
        text_config={**TEXT, **_ids(tok), "rope_parameters": QWEN_ROPE},
        vision_config={**QWEN_VISION, "embed_dim": HIDDEN, "mlp_ratio": 2},
        **_qwen_ids(tok),
    )


def _qwen25_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return tf.Qwen2_5_VLConfig(
        text_config={**TEXT, **_ids(tok), "rope_parameters": QWEN_ROPE},
        vision_config={
            **QWEN_VISION,
            "intermediate_size": 2 * HIDDEN,
            "out_hidden_size": HIDDEN,
            "window_size": 32,  # px: windows of 2x2 merge blocks (4x4 patches)
            "fullatt_block_indexes": [1],
        },
        **_qwen_ids(tok),
    )


def _qwen3_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    rope = {**QWEN_ROPE, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    return tf.Qwen3VLConfig(
        text_config={**TEXT, **_ids(tok), "head_dim": 16, "rope_parameters": rope},
        vision_config={
            **QWEN_VISION,
            "intermediate_size": 2 * HIDDEN,
            "out_hidden_size": HIDDEN,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        **_qwen_ids(tok),
    )


def _qwen_processor(cls_name: str, model_type: str) -> Callable:
    """Images resized to multiples of one merge block (16 px), 4 to 16 blocks in area."""

    def build(tok: PreTrainedTokenizerFast) -> ProcessorMixin:
        block = 2 * QWEN_VISION["patch_size"]
        images = tf.Qwen2VLImageProcessorPil(
            size={"shortest_edge": 4 * block**2, "longest_edge": 16 * block**2},
            patch_size=QWEN_VISION["patch_size"],
            merge_size=2,
        )
        return with_video(
            cls_name,
            model_type,
            image_processor=images,
            tokenizer=tok,
            chat_template=tok.chat_template,
        )

    return build


# ---- Gemma 3 / PaliGemma: SigLIP, square squash ----------------------------------------------
GEMMA_TOKENS = {
    "image_token": "<image_soft_token>",
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
}


def _gemma3_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return tf.Gemma3Config(
        text_config=tf.Gemma3TextConfig(**TEXT, **_ids(tok), head_dim=16, sliding_window=64),
        vision_config=tf.SiglipVisionConfig(**VISION, image_size=32, patch_size=4),
        mm_tokens_per_image=16,  # 8x8 patches pooled 2x2
        boi_token_index=_id(tok, "<start_of_image>"),
        eoi_token_index=_id(tok, "<end_of_image>"),
        image_token_index=_id(tok, "<image_soft_token>"),
    )


def _gemma3_processor(tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    images = tf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    return tf.Gemma3Processor(
        image_processor=images, tokenizer=tok, image_seq_length=16, chat_template=tok.chat_template
    )


def _gemma3_repair(model: torch.nn.Module) -> None:
    """Gemma 3 initialises its projector weight to zero: the image would never reach the LM."""
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    torch.nn.init.normal_(weight, std=0.5)


def _paligemma_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return tf.PaliGemmaConfig(
        text_config=tf.GemmaConfig(**TEXT, **_ids(tok), head_dim=16),
        vision_config=tf.SiglipVisionConfig(**VISION, image_size=32, patch_size=8),
        image_token_index=_id(tok, "<image>"),
        projection_dim=HIDDEN,
        hidden_size=HIDDEN,
    )


def _paligemma_processor(tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    images = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    images.image_seq_length = 16  # the processor reads the token count from here (4x4 patches)
    return tf.PaliGemmaProcessor(image_processor=images, tokenizer=tok, chat_template=None)


# ---- Idefics3 / SmolVLM: 32 px tiles of 8 px patches, 2x2 pixel shuffle ------------------------
IDEFICS_TOKENS = {"image_token": "<image>"}
IDEFICS_EXTRA = (
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)


def _idefics3_config(cls_name: str) -> Callable:
    def build(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
        return getattr(tf, cls_name)(
            vision_config={**VISION, "image_size": 32, "patch_size": 8},
            text_config=tf.LlamaConfig(**TEXT, **_ids(tok)).to_dict(),
            image_token_id=_id(tok, "<image>"),
            scale_factor=2,
        )

    return build


def _idefics3_processor(cls_name: str, image_cls: str) -> Callable:
    def build(tok: PreTrainedTokenizerFast) -> ProcessorMixin:
        images = getattr(tf, image_cls)(
            size={"longest_edge": 64},
            max_image_size={"longest_edge": 32},
        )
        parts = {"image_processor": images, "tokenizer": tok, "chat_template": tok.chat_template}
        if cls_name == "SmolVLMProcessor":
            return with_video(cls_name, "smolvlm", image_seq_len=4, **parts)
        return tf.Idefics3Processor(image_seq_len=4, **parts)

    return build


# ---- Mllama: 32 px tiles, 8 px patches, cross-attention --------------------------------------
def _mllama_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return tf.MllamaConfig(
        vision_config=tf.MllamaVisionConfig(
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=2,
            vision_output_dim=2 * HIDDEN,
            image_size=32,
            patch_size=8,
            max_num_tiles=4,
            intermediate_layers_indices=[0],
            supported_aspect_ratios=[
                [1, 1],
                [1, 2],
                [2, 1],
                [2, 2],
                [1, 3],
                [3, 1],
                [1, 4],
                [4, 1],
            ],
        ),
        text_config=tf.MllamaTextConfig(
            **TEXT,
            **_ids(tok),
            cross_attention_layers=[1],
        ),
        image_token_index=_id(tok, "<|image|>"),
    )


def _mllama_processor(tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    images = tf.MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=4)
    return tf.MllamaProcessor(
        image_processor=images, tokenizer=tok, chat_template=tok.chat_template
    )


def _mllama_repair(model: torch.nn.Module) -> None:
    """Mllama starts its cross-attention tanh gates at zero: the image would be ignored."""
    for name, param in model.named_parameters():
        if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
            torch.nn.init.constant_(param, 1.0)


# ---- InternVL: 32 px tiles of 8 px patches, 2x2 pixel shuffle, thumbnail last ------------------
INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def _internvl_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return tf.InternVLConfig(
        vision_config=tf.InternVLVisionConfig(**VISION, image_size=[32, 32], patch_size=[8, 8]),
        text_config=tf.Qwen2Config(**TEXT, **_ids(tok)),
        image_token_id=_id(tok, "<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )


def _internvl_processor(tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    images = tf.GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4
    )
    return with_video(
        "InternVLProcessor",
        "internvl",
        image_processor=images,
        tokenizer=tok,
        image_seq_length=4,
        chat_template=tok.chat_template,
    )


# LLaVA-1.5 from the demo's own parts (engine.demo.architecture) at this file's tiny sizes.
LLAVA15_SIZES = llava15.Sizes(
    vision_hidden=HIDDEN,
    vision_layers=2,
    vision_heads=2,
    text_hidden=HIDDEN,
    text_layers=2,
    text_heads=2,
)

# ---- Aya Vision: InternVL-like tiles (32 px, thumbnail last), SigLIP, pixel shuffle 2 ------------
AYA_TOKENS = {"image_token": "<image>"}
AYA_EXTRA = (
    "<|START_OF_IMG|>",
    "<|END_OF_IMG|>",
    "<|IMG_PATCH|>",
    "<|IMG_LINE_BREAK|>",
    "TILE_GLOBAL",
    *(f"TILE_{i}" for i in range(1, 5)),
)


def _aya_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return tf.AyaVisionConfig(
        vision_config=tf.SiglipVisionConfig(**VISION, image_size=32, patch_size=8),
        text_config=tf.Cohere2Config(**TEXT, **_ids(tok), sliding_window=64),
        image_token_index=_id(tok, "<|IMG_PATCH|>"),
        downsample_factor=2,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )


def _aya_processor(tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    images = tf.GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4
    )
    return tf.AyaVisionProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=8,
        img_size=32,
        downsample_factor=2,
        chat_template=tok.chat_template,
    )


FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec(
            "llava",
            "<image>\n",
            {"image_token": "<image>"},
            lambda tok: llava15.build_config(tok, LLAVA15_SIZES),
            lambda tok: llava15.build_processor(tok, LLAVA15_SIZES),
            tokenizer=llava15.build_tokenizer,
        ),
        FamilySpec(
            "llava_next",
            "<image>",
            {"image_token": "<image>"},
            _llava_next_config,
            _llava_next_processor,
        ),
        FamilySpec(
            "llava_onevision",
            "<image>",
            {"image_token": "<image>", "video_token": "<video>"},
            _onevision_config,
            _onevision_processor,
        ),
        FamilySpec(
            "qwen2_vl",
            QWEN_IMAGE,
            QWEN_TOKENS,
            _qwen2_config,
            _qwen_processor("Qwen2VLProcessor", "qwen2_vl"),
        ),
        FamilySpec(
            "qwen2_5_vl",
            QWEN_IMAGE,
            QWEN_TOKENS,
            _qwen25_config,
            _qwen_processor("Qwen2_5_VLProcessor", "qwen2_5_vl"),
        ),
        FamilySpec(
            "qwen3_vl",
            QWEN_IMAGE,
            QWEN_TOKENS,
            _qwen3_config,
            _qwen_processor("Qwen3VLProcessor", "qwen3_vl"),
        ),
        FamilySpec(
            "gemma3",
            "<start_of_image>",
            GEMMA_TOKENS,
            _gemma3_config,
            _gemma3_processor,
            repair=_gemma3_repair,
        ),
        FamilySpec(
            "paligemma",
            "<image>",
            {"image_token": "<image>"},
            _paligemma_config,
            _paligemma_processor,
        ),
        FamilySpec(
            "idefics3",
            "<image>",
            IDEFICS_TOKENS,
            _idefics3_config("Idefics3Config"),
            _idefics3_processor("Idefics3Processor", "Idefics3ImageProcessorPil"),
            extra_tokens=IDEFICS_EXTRA,
        ),
        FamilySpec(
            "smolvlm",
            "<image>",
            IDEFICS_TOKENS,
            _idefics3_config("SmolVLMConfig"),
            _idefics3_processor("SmolVLMProcessor", "SmolVLMImageProcessorPil"),
            extra_tokens=IDEFICS_EXTRA,
            needs=("num2words",),
        ),
        FamilySpec(
            "mllama",
            "<|image|>",
            {"image_token": "<|image|>"},
            _mllama_config,
            _mllama_processor,
            extra_tokens=("<|python_tag|>",),
            repair=_mllama_repair,
        ),
        FamilySpec(
            "internvl", "<IMG_CONTEXT>", INTERNVL_TOKENS, _internvl_config, _internvl_processor
        ),
        FamilySpec(
            "aya_vision", "<image>", AYA_TOKENS, _aya_config, _aya_processor, extra_tokens=AYA_EXTRA
        ),
    )
}


@dataclass
class Built:
    """A built family: the live model and processor, and the folder they were saved to."""

    spec: FamilySpec
    model: torch.nn.Module
    processor: ProcessorMixin
    folder: Path
    seconds: float

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_family(name: str, folder: Path, seed: int = 0) -> Built:
    """Build family ``name`` with random weights (eager attention) and save it to ``folder``."""
    start = time.perf_counter()
    spec = FAMILIES[name]
    torch.manual_seed(seed)
    tokenizer = spec.tokenizer() if spec.tokenizer else build_tokenizer(spec)
    config = spec.config(tokenizer)
    model_cls = tf.AutoModelForImageTextToText._model_mapping[type(config)]
    model = model_cls._from_config(config, attn_implementation="eager")
    if spec.repair is not None:
        with torch.no_grad():
            spec.repair(model)
    model.eval()
    processor = spec.processor(tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Built(spec, model, processor, Path(folder), time.perf_counter() - start)


def prompt_inputs(
    built: Built,
    images: list,
    question: str = "what is in the image ?",
    processor: ProcessorMixin | None = None,
    **options,
) -> dict:
    """Processor outputs for one user turn with ``images`` then ``question``, ready to generate.

    ``processor`` defaults to the built one; ``options`` go to its call (e.g. Gemma 3's
    ``do_pan_and_scan``). PaliGemma ships no chat template: its prompt is the image tokens,
    then the text.
    """
    processor = processor or built.processor
    if built.spec.name == "paligemma":
        text = built.spec.image_in_turn * len(images) + question
    else:
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        turn = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(turn, add_generation_prompt=True)
    inputs = dict(processor(images=images, text=[text], return_tensors="pt", **options))
    inputs.pop("labels", None)  # PaliGemma's processor adds them; a forward pass must not get them
    return inputs
