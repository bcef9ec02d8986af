"""PaliGemma (``PaliGemmaForConditionalGeneration``): a SigLIP tower feeding a Gemma LM one token
per patch, the image's tokens first in the prompt, raster order.

The image is squashed whole to the tower's square. The whole prompt (image, BOS, the user's
text, a newline) is a prefix that attends both ways ("prefix" mask, ``token_type_ids`` 0);
generated tokens are the causal suffix, so in a teacher-forced pass they take
``token_type_ids`` **1** (0 would fold the answer into the bidirectional prefix).

PaliGemma ships no chat template and is not a chat model: its prompt is the processor's own
convention, ``<image>`` tokens then BOS then the task text (``"caption en"``, ``"answer en
what is in the image?"``, ``"detect cat"``…) then a newline. The user's prompt is passed as
that task text unchanged. Checkpoints are trained on one image per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from engine.adapters.base import History, register_adapter
from engine.adapters.square_views import SquareViewsAdapter, View, whole
from engine.errors import PromptError
from engine.inputs import ImageInput


@register_adapter
class PaliGemmaAdapter(SquareViewsAdapter):
    name = "paligemma"
    model_types = ("paligemma",)
    lm_mask = "prefix"
    grown_inputs: ClassVar[dict[str, int | None]] = {"token_type_ids": 1}
    pool = 1

    def chat_text(self, prompt: str, num_images: int, history: History = ()) -> str:
        """The processor's prompt convention; it adds BOS after the image and the newline."""
        if history:
            raise PromptError(
                "PaliGemma has no chat template: it answers one question, no follow-ups."
            )
        return self.processor.image_token * num_images + prompt

    def build_inputs(
        self, images: Sequence[ImageInput], prompt: str, history: History = ()
    ) -> dict:
        """The processor's tensors, without the training ``labels`` it adds."""
        inputs = super().build_inputs(images, prompt, history)
        return {k: v for k, v in inputs.items() if k != "labels"}

    def views(self, images: Sequence[ImageInput]) -> list[View]:
        return [whole(i, image.size) for i, image in enumerate(images)]
