"""The model-family boundary: everything the recorder needs to know about one VLM family.

A family is one :class:`VlmAdapter` subclass in its own module, registered with
:func:`register_adapter` for its ``config.model_type`` values (see docs/add-a-family.md).
What every family shares lives here: the processor call with the chat template, LM attention
through forward hooks, vision attention through transformers' ``AttentionInterface``
(engine/capture.py), the teacher-forced inputs. What differs is the
image geometry (tiles, merges, pixel shuffle, pooling: :meth:`VlmAdapter.geometry`) and, for
a few families, how the captured vision attention calls split into sequences
(:meth:`VlmAdapter.vision_pieces`) and how side inputs grow with the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from engine.errors import PromptError, UnsupportedModelError
from engine.inputs import ImageInput
from store.schema import ImageGeometry

# config attributes naming tokens only a processor writes (see placeholder_token_ids)
PLACEHOLDER_TOKENS = (
    "video_token_id",
    "video_token_index",
    "vision_start_token_id",
    "vision_end_token_id",
)
ADD_A_FAMILY = "docs/add-a-family.md"
History = Sequence[tuple[str, str]]  # earlier (question, answer) turns of a conversation


@dataclass(frozen=True)
class Placement:
    """Where the images sit in one prompt: the geometry and, per prompt position, the image
    an image token belongs to (-1 for text)."""

    geometry: ImageGeometry
    image_index: np.ndarray  # [P] int32


@dataclass(frozen=True)
class VisionPiece:
    """Where one batch row of one captured vision attention call sits: its layer, its vision
    sequence (index into ``ImageGeometry.vision_sequences``) and which tokens of that sequence
    its queries and keys are (``None``: all of them, in order; a window otherwise)."""

    call: int
    batch: int
    layer: int
    sequence: int
    tokens: np.ndarray | None = None


def resolve(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


class VlmAdapter:
    """Base class; a family sets the class attributes and implements :meth:`geometry`."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # ``config.model_type`` values this adapter serves
    language_layers_path: ClassVar[str] = "model.language_model.layers"  # the decoder layers
    attention_attr: ClassVar[str] = "self_attn"
    # How the LM masks its attention: "causal", "prefix" (PaliGemma: the prompt attends both
    # ways) or "image blocks" (Gemma 3: each image's tokens attend both ways).
    lm_mask: ClassVar[str] = "causal"
    # Per-position inputs that grow with the answer in a teacher-forced pass, and the value an
    # answer position takes (None: repeat the last position's value).
    grown_inputs: ClassVar[dict[str, int | None]] = {
        "token_type_ids": 0,
        "mm_token_type_ids": 0,
    }
    multi_image: ClassVar[bool] = False  # several images in one prompt are supported
    vision_attention: ClassVar[bool] = True  # the vision tower's attention is captured

    def __init__(self, model: nn.Module, processor) -> None:
        self.model = model
        self.processor = processor

    # -- the prompt ---------------------------------------------------------------------------
    def chat_text(self, prompt: str, num_images: int, history: History = ()) -> str:
        """The model's own chat template around the images and the prompt; ``history``: the
        earlier (question, answer) turns of a conversation, the images in its first turn."""
        if getattr(self.processor, "chat_template", None) is None:
            raise PromptError(
                "This processor has no chat template, so the image cannot be placed in the "
                "prompt. Use a chat (instruction-tuned) checkpoint, or set "
                "processor.chat_template."
            )
        questions = [question for question, _ in history] + [prompt]
        answers = [answer for _, answer in history]
        messages = []
        for turn, question in enumerate(questions):
            images = [{"type": "image"}] * (num_images if turn == 0 else 0)
            content = [*images, {"type": "text", "text": question}]
            messages.append({"role": "user", "content": content})
            if turn < len(answers):
                reply = [{"type": "text", "text": answers[turn]}]
                messages.append({"role": "assistant", "content": reply})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def build_inputs(
        self, images: Sequence[ImageInput], prompt: str, history: History = ()
    ) -> dict[str, torch.Tensor]:
        """The processor's tensors for ``images`` and ``prompt`` (batch 1)."""
        if len(images) > 1 and not self.multi_image:
            raise PromptError(
                f"The {self.name} adapter records one image per prompt; {len(images)} were given."
            )
        try:
            return dict(
                self.processor(
                    images=self.processor_images(images),
                    text=self.chat_text(prompt, len(images), history),
                    return_tensors="pt",
                    **self.processor_options(),
                )
            )
        except ValueError as error:  # e.g. "0 <image> tokens and 1 images"
            raise PromptError(
                "The chat template placed no image token where the processor expects one, so "
                f"the model would not see the image ({error}). Check the processor's chat "
                "template and image token."
            ) from error

    def build_batch(
        self, image_lists: Sequence[Sequence[ImageInput]], prompt: str, history: History = ()
    ) -> dict[str, torch.Tensor]:
        """The tensors of ``prompt`` over each image list (same sizes, same count), one batch
        row per list, from ONE processor call: the chat template and tokeniser run once per
        batch, not once per image, for the perturbation metrics' hundreds of re-reads of one
        image. Equal to the lists' :meth:`build_inputs` concatenated (tested per family)."""
        inputs = dict(
            self.processor(
                images=[[im.image for im in images] for images in image_lists],  # row = group
                text=[self.chat_text(prompt, len(image_lists[0]), history)] * len(image_lists),
                return_tensors="pt",
                **self.processor_options(),
            )
        )
        return {k: v for k, v in inputs.items() if k != "labels"}

    def processor_images(self, images: Sequence[ImageInput]) -> list:
        """The processor's ``images`` argument for one prompt: the images, flat."""
        return [im.image for im in images]

    def processor_options(self) -> dict:
        """Keyword options for the processor call that the geometry must agree with."""
        return {}

    @property
    def image_token_id(self) -> int:
        config = self.model.config
        for name in ("image_token_id", "image_token_index"):
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        raise UnsupportedModelError(f"{type(config).__name__} names no image token")

    def placeholder_token_ids(self) -> list[int]:
        """Tokens that only the processor writes (image, video, vision start/end): generation
        never picks them, since a replayed answer holding one would have no pixels behind it."""
        config = self.model.config
        found = {self.image_token_id}
        for name in PLACEHOLDER_TOKENS:
            value = getattr(config, name, None)
            if isinstance(value, int):
                found.add(value)
        return sorted(found)

    def image_positions(self, input_ids: torch.Tensor) -> np.ndarray:
        """Prompt positions that hold an image feature (``input_ids`` is [P])."""
        return np.flatnonzero(input_ids.cpu().numpy() == self.image_token_id)

    def geometry(self, inputs: dict[str, torch.Tensor], images: Sequence[ImageInput]) -> Placement:
        """Tiles, patches and the token -> patch map of this prompt."""
        raise NotImplementedError

    # -- attention ----------------------------------------------------------------------------
    def language_attention_modules(self) -> list[nn.Module]:
        layers = resolve(self.model, self.language_layers_path)
        return [getattr(layer, self.attention_attr) for layer in layers]

    def cross_attention_modules(self) -> list[tuple[int, nn.Module]]:
        """(LM layer, module) of each cross-attention block; none for most families."""
        return []

    def num_vision_layers(self) -> int:
        """Vision-tower layers, each one captured attention call per forward pass."""
        return int(self.model.config.vision_config.num_hidden_layers)

    def key_vision_tokens(self, num_images: int) -> np.ndarray:
        """Cross-attention families: each key row's token in the vision sequences laid end to
        end (relevancy carries key values through the vision tower from there)."""
        raise NotImplementedError(f"{self.name} has no cross-attention")

    def vision_layers_feeding_lm(self) -> int:
        """How many vision layers (from the first) the LM's image features depend on."""
        return self.num_vision_layers()

    def vision_pieces(
        self, calls: Sequence[torch.Tensor], geometry: ImageGeometry
    ) -> list[VisionPiece]:
        """Where each captured vision attention call belongs. Default: one call per layer,
        in order, whose batch rows are the vision sequences (one per tile)."""
        layers = self.num_vision_layers()
        if len(calls) != layers:
            raise UnsupportedModelError(
                f"{self.name}: expected {layers} vision attention calls, captured {len(calls)}"
            )
        return [
            VisionPiece(call=layer, batch=b, layer=layer, sequence=b)
            for layer in range(layers)
            for b in range(calls[layer].shape[0])
        ]

    # -- the teacher-forced pass --------------------------------------------------------------
    def forced_inputs(self, inputs: dict[str, torch.Tensor], sequence: torch.Tensor) -> dict:
        """``inputs`` for one forward pass over prompt + answer (``sequence`` [T]), every
        batch row of ``inputs`` (:meth:`build_batch`) forced on the same ``sequence``."""
        prompt_length = inputs["input_ids"].shape[1]
        n = len(sequence) - prompt_length
        forced = {k: v for k, v in inputs.items() if k != "labels"}
        forced["input_ids"] = sequence[None].repeat(inputs["input_ids"].shape[0], 1)
        forced["attention_mask"] = torch.ones_like(forced["input_ids"])
        for key, fill in self.grown_inputs.items():
            if key not in inputs:
                continue
            value = inputs[key]
            if fill is None:
                tail = value[:, -1:].expand(-1, n, *value.shape[2:])
            else:
                tail = torch.full((value.shape[0], n), fill, dtype=value.dtype, device=value.device)
            forced[key] = torch.cat([value, tail], dim=1)
        return forced

    def pixel_inputs(self) -> tuple[str, ...]:
        """Input names that carry pixels (made gradient leaves for relevancy)."""
        return ("pixel_values",)


_ADAPTERS: dict[str, type[VlmAdapter]] = {}


def register_adapter(cls: type[VlmAdapter]) -> type[VlmAdapter]:
    _ADAPTERS[cls.name] = cls
    return cls


def list_adapters() -> list[type[VlmAdapter]]:
    return [_ADAPTERS[name] for name in sorted(_ADAPTERS)]


def served_model_types() -> set[str]:
    """Every ``config.model_type`` some registered adapter serves."""
    return {t for cls in _ADAPTERS.values() for t in cls.model_types}


def adapter_class(model_type: str) -> type[VlmAdapter]:
    """The adapter serving ``model_type``, or a clear error naming the known ones."""
    for cls in _ADAPTERS.values():
        if model_type in cls.model_types:
            return cls
    known = ", ".join(sorted(served_model_types()))
    raise UnsupportedModelError(
        f"No adapter for model type {model_type!r}. Supported: {known}. "
        f"A new family is one small module in engine/adapters/ (see {ADD_A_FAMILY})."
    )


def adapter_for(model: nn.Module, processor) -> VlmAdapter:
    return adapter_class(getattr(model.config, "model_type", "?"))(model, processor)
