"""Record one trace: generate an answer, then capture everything that explains it.

The answer comes from plain ``generate`` (what a user would get). One teacher-forced forward
pass over prompt + answer then yields every layer's full attention (the prompt square and each
answer row, identical to what generation saw) and the autograd graph that relevancy needs,
with parameters frozen so backward passes only reach attention probabilities.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.capture import capture_attention, require_all
from engine.errors import PromptError
from engine.inputs import (
    ImageInput,
    chat_text,
    check_generation,
    check_prompt,
    check_reference,
    check_tags,
)
from engine.loading import LoadedModel
from engine.relevancy import RelevancyInputs, compute_relevancy
from engine.summaries import attention_shares
from engine.tokens import token_texts, word_ids
from store.schema import (
    GenerationSettings,
    ImageGeometry,
    Relevancy,
    Summaries,
    TokenRole,
    TokenTable,
    TopK,
    Trace,
    TraceInfo,
    new_trace_id,
    utc_now,
)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class RecordOptions:
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    relevancy: bool = True
    vision_attention: bool = True


@dataclass
class Generated:
    prompt_inputs: dict[str, torch.Tensor]
    sequence: torch.Tensor  # [T] prompt + answer ids
    step_logits: torch.Tensor  # [N, vocab] raw logits of each generation step


def _library_versions() -> dict[str, str]:
    names = ("torch", "transformers", "numpy")
    return {"python": platform.python_version()} | {n: importlib.metadata.version(n) for n in names}


def _generate(loaded: LoadedModel, inputs: dict, settings: GenerationSettings) -> Generated:
    tokenizer = loaded.processor.tokenizer
    torch.manual_seed(settings.seed)
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p}
    with torch.no_grad():
        output = loaded.model.generate(
            **inputs,
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            **(sampling if settings.do_sample else {}),
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
    return Generated(inputs, output.sequences[0], torch.cat(output.logits).float())


def _teacher_forced(
    loaded: LoadedModel, inputs: dict, sequence: torch.Tensor, *, with_graph: bool
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One forward over prompt + answer: answer logits and every layer's attention.

    With ``with_graph`` the pixels require grad (parameters stay frozen), so the captured
    attention tensors stay in an autograd graph that reaches only them.
    """
    answer_length = len(sequence) - inputs["input_ids"].shape[1]
    pixel_values = inputs["pixel_values"].clone().requires_grad_(with_graph)
    others = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    others["pixel_values"] = pixel_values
    with (
        torch.set_grad_enabled(with_graph),
        capture_attention(loaded.adapter.language_attention_modules()) as lm_captured,
        capture_attention(loaded.adapter.vision_attention_modules()) as vision_captured,
    ):
        logits = loaded.model(
            input_ids=sequence[None],
            attention_mask=torch.ones_like(sequence)[None],
            logits_to_keep=answer_length + 1,
            **others,
        ).logits[0, :-1]
    return (
        logits,
        require_all(lm_captured, "language-model"),
        require_all(vision_captured, "vision-tower"),
    )


def _top_k(tokenizer, logits: torch.Tensor, chosen: torch.Tensor, k: int) -> TopK:
    probs = logits.softmax(-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return TopK(
        ids=top.indices.numpy().astype(np.int64),
        probs=top.values.numpy().astype(np.float32),
        text=[token_texts(tokenizer, row.tolist()) for row in top.indices],
        chosen_prob=probs.gather(1, chosen[:, None])[:, 0].numpy().astype(np.float32),
    )


def _token_table(
    tokenizer, sequence: np.ndarray, prompt_length: int, image_token_id: int, patches: np.ndarray
) -> TokenTable:
    roles = np.full(len(sequence), TokenRole.TEXT, dtype=np.int8)
    roles[sequence == image_token_id] = TokenRole.IMAGE
    roles[prompt_length:] = TokenRole.ANSWER
    image_patch = np.full(len(sequence), -1, dtype=np.int32)
    image_patch[roles == TokenRole.IMAGE] = patches
    words = np.full(len(sequence), -1, dtype=np.int32)
    # Word ids run through every contiguous run of non-image tokens, numbered globally.
    boundaries = np.flatnonzero(np.diff(roles, prepend=-1) != 0)
    next_word = 0
    for start, end in zip(boundaries, [*boundaries[1:], len(sequence)], strict=True):
        if roles[start] == TokenRole.IMAGE:
            continue
        run = word_ids(tokenizer, sequence[start:end].tolist())
        words[start:end] = run + next_word
        next_word += int(run.max()) + 1
    return TokenTable(
        ids=sequence.astype(np.int64),
        text=token_texts(tokenizer, sequence.tolist()),
        roles=roles,
        word_ids=words,
        image_patch=image_patch,
        prompt_length=prompt_length,
    )


def record(
    loaded: LoadedModel,
    image: ImageInput,
    prompt: str,
    options: RecordOptions | None = None,
    *,
    reference_answer: str | None = None,
    tags: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> Trace:
    """Generate an answer to ``prompt`` about ``image`` and record its full trace."""
    options = options or RecordOptions()
    settings = check_generation(options.generation)
    prompt = check_prompt(prompt)
    reference_answer = check_reference(reference_answer)
    tags = check_tags(tags)
    adapter, processor, tokenizer = loaded.adapter, loaded.processor, loaded.processor.tokenizer
    report = progress or (lambda stage, done, total: None)

    no_image = (
        "The chat template placed no image token in the prompt, so the model would not see "
        "the image. Check the processor's chat template and image token."
    )
    try:
        inputs = processor(
            images=image.image, text=chat_text(processor, prompt), return_tensors="pt"
        )
    except ValueError as error:  # e.g. "0 <image> tokens and 1 images"
        raise PromptError(f"{no_image} ({error})") from error
    inputs = {k: v.to(loaded.device) for k, v in inputs.items()}
    prompt_ids = inputs["input_ids"][0]
    image_positions = torch.nonzero(prompt_ids == adapter.image_token_id).flatten()
    if len(image_positions) == 0:
        raise PromptError(no_image)
    report("generate", 0, 1)
    generated = _generate(loaded, inputs, settings)
    report("generate", 1, 1)
    prompt_length = int(prompt_ids.shape[0])
    answer_ids = generated.sequence[prompt_length:]
    if len(answer_ids) == 0:
        raise PromptError("The model generated no tokens; raise max_new_tokens.")

    layout = adapter.image_layout(inputs["pixel_values"], image.size)
    patches = adapter.image_token_patches(len(image_positions), layout)
    report("forward", 0, 1)
    forward = _teacher_forced(loaded, inputs, generated.sequence, with_graph=options.relevancy)
    report("forward", 1, 1)
    logits, lm_attention, vision_attention = forward

    relevancy = None
    if options.relevancy:
        used = adapter.vision_layers_feeding_lm()
        maps = compute_relevancy(
            RelevancyInputs(
                answer_logits=logits,
                answer_ids=answer_ids,
                language_attention=lm_attention,
                vision_attention=vision_attention[:used],
                prompt_length=prompt_length,
                image_positions=image_positions,
                image_patches=torch.as_tensor(patches, device=image_positions.device).long(),
            ),
            num_patches=layout.grid_rows * layout.grid_cols,
            on_token=lambda done, total: report("relevancy", done, total),
        )
        relevancy = Relevancy(maps.llm, maps.vision, maps.all, maps.llm_through_vision)

    lm_array = torch.cat([a.detach() for a in lm_attention]).to(torch.float16).cpu().numpy()
    vision_array = None
    if options.vision_attention:
        vision_array = (
            torch.cat([a.detach() for a in vision_attention]).to(torch.float16).cpu().numpy()
        )
    sequence = generated.sequence.cpu().numpy()
    tokens = _token_table(tokenizer, sequence, prompt_length, adapter.image_token_id, patches)
    answer = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
    shares = attention_shares(lm_array, tokens.roles, prompt_length)
    info = TraceInfo(
        trace_id=new_trace_id(),
        model_id=loaded.model_id,
        model_revision=loaded.revision,
        prompt=prompt,
        answer=answer,
        image_name=image.name,
        image_sha256=image.sha256,
        created_at=utc_now(),
        adapter=adapter.name,
        attn_implementation="eager",
        generation=settings,
        reference_answer=reference_answer,
        correct=None if reference_answer is None else _same_answer(answer, reference_answer),
        tags=list(tags),
        extra={"versions": _library_versions(), **(extra or {})},
    )
    return Trace(
        info=info,
        tokens=tokens,
        image=ImageGeometry(
            grid_rows=layout.grid_rows,
            grid_cols=layout.grid_cols,
            processed=adapter.processed_image(inputs["pixel_values"]),
            original_size=image.size,
            patch_boxes=layout.patch_boxes,
            vision_has_cls=layout.vision_has_cls,
        ),
        top_k=_top_k(
            tokenizer, generated.step_logits.cpu(), answer_ids.cpu(), settings.top_k_logged
        ),
        lm_attention=lm_array,
        vision_attention=vision_array,
        relevancy=relevancy,
        summaries=Summaries(attention_shares=shares, head_image_attention=shares[..., 0].mean(-1)),
    )


def _same_answer(answer: str, reference: str) -> bool:
    def norm(text: str) -> str:
        return " ".join(text.lower().strip(" .!?").split())

    return norm(answer) == norm(reference)
