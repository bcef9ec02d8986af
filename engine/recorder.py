"""Record one trace: generate an answer, then capture everything that explains it.

The answer comes from plain ``generate`` (what a user would get). One teacher-forced forward
pass over prompt + answer then yields every layer's full attention (the prompt square and each
answer row, identical to what generation saw) and the autograd graph that relevancy needs,
with parameters frozen so backward passes only reach attention probabilities. What differs
between model families (image geometry, how vision attention is split, side inputs) comes
from the family's adapter (engine/adapters/).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from engine.adapters import Placement, VisionPiece
from engine.capture import capture_attention, capture_vision_attention, require_all
from engine.cross_relevancy import CrossRelevancyInputs, compute_cross_relevancy
from engine.errors import PromptError
from engine.inputs import (
    ImageInput,
    check_generation,
    check_prompt,
    check_reference,
    check_tags,
)
from engine.loading import LoadedModel
from engine.relevancy import RelevancyInputs, VisionInputs, compute_relevancy
from engine.tokens import token_texts, word_ids
from methods.summaries import attention_shares
from store.policy import choose_policy, policy_rows
from store.schema import (
    CrossAttention,
    GenerationSettings,
    ImageGeometry,
    RecordingPolicy,
    Relevancy,
    Summaries,
    TokenRole,
    TokenTable,
    TopK,
    Trace,
    TraceInfo,
    answer_row,
    new_trace_id,
    utc_now,
)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class RecordOptions:
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    relevancy: bool = True
    vision_attention: bool = True
    policy: RecordingPolicy | None = None  # None: chosen by the sequence's size (store)


@dataclass
class Generated:
    prompt_inputs: dict[str, torch.Tensor]
    sequence: torch.Tensor  # [T] prompt + answer ids
    step_logits: torch.Tensor  # [N, vocab] raw logits of each generation step


def _library_versions() -> dict[str, str]:
    names = ("torch", "transformers", "numpy")
    return {"python": platform.python_version()} | {n: importlib.metadata.version(n) for n in names}


def generate(loaded: LoadedModel, inputs: dict, settings: GenerationSettings) -> Generated:
    """Plain ``generate``, except that the processor's placeholder tokens (image, video,
    vision start/end) are never chosen: an answer holding one has no pixels behind it, so the
    teacher-forced replay would fail or mislead (random test models pick them; trained ones
    practically never do)."""
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
            suppress_tokens=loaded.adapter.placeholder_token_ids(),
            return_dict_in_generate=True,
            output_logits=True,
        )
    return Generated(inputs, output.sequences[0], torch.cat(output.logits).float())


@dataclass
class Forward:
    """What the teacher-forced pass leaves: logits and every attention tensor it captured."""

    logits: torch.Tensor  # [N, vocab]
    lm: list[torch.Tensor]  # L x [1, H, T, T]
    vision_calls: list[torch.Tensor]  # each [B, Hv, q, k], in call order
    cross: list[torch.Tensor]  # Lx x [1, H, T, K]


@contextmanager
def _embeddings_in_graph(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Make the LM's token embeddings a gradient leaf, so every LM layer's attention is in the
    graph even where no image feature reaches it (Mllama's layers before its first
    cross-attention layer, text-only rows of any family)."""

    def leaf(_module, _inputs, output):
        if enabled and not output.requires_grad:
            output.requires_grad_(True)
        return output

    handle = model.get_input_embeddings().register_forward_hook(leaf)
    try:
        yield
    finally:
        handle.remove()


def teacher_forced(
    loaded: LoadedModel, inputs: dict, sequence: torch.Tensor, *, with_graph: bool
) -> Forward:
    """One forward over prompt + answer: answer logits and every layer's attention.

    With ``with_graph`` the pixels and token embeddings are gradient leaves (parameters stay
    frozen), so the captured attention tensors stay in an autograd graph that reaches only them.
    """
    adapter = loaded.adapter
    answer_length = len(sequence) - inputs["input_ids"].shape[1]
    forced = adapter.forced_inputs(inputs, sequence)
    for name in adapter.pixel_inputs():
        if name in forced:
            forced[name] = forced[name].clone().requires_grad_(with_graph)
    cross_modules = [module for _, module in adapter.cross_attention_modules()]
    with (
        torch.set_grad_enabled(with_graph),
        _embeddings_in_graph(loaded.model, with_graph),
        capture_attention(adapter.language_attention_modules()) as lm_captured,
        capture_attention(cross_modules) as cross_captured,
        capture_vision_attention(loaded.model) as vision_calls,
    ):
        logits = loaded.model(**forced, logits_to_keep=answer_length + 1).logits[0, :-1]
    return Forward(
        logits,
        require_all(lm_captured, "language-model"),
        list(vision_calls),
        require_all(cross_captured, "cross-attention"),
    )


def _vision_arrays(
    calls: Sequence[torch.Tensor], pieces: Sequence[VisionPiece], geometry: ImageGeometry
) -> list[np.ndarray]:
    """Per vision sequence, [Lv, Hv, V, V] float16 assembled from the captured pieces (zero
    outside a piece's window)."""
    layers = 1 + max(piece.layer for piece in pieces)
    heads = int(calls[0].shape[1])
    out = [np.zeros((layers, heads, len(s), len(s)), np.float16) for s in geometry.vision_sequences]
    for piece in pieces:
        values = calls[piece.call][piece.batch].detach().to(torch.float16).cpu().numpy()
        if piece.tokens is None:
            out[piece.sequence][piece.layer] = values
        else:
            index = np.asarray(piece.tokens)
            out[piece.sequence][piece.layer][:, index[:, None], index[None, :]] = values
    return out


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
    tokenizer,
    sequence: np.ndarray,
    prompt_length: int,
    image_positions: np.ndarray,
    placement: Placement,
) -> TokenTable:
    roles = np.full(len(sequence), TokenRole.TEXT, dtype=np.int8)
    roles[image_positions] = TokenRole.IMAGE
    roles[prompt_length:] = TokenRole.ANSWER
    image_index = np.full(len(sequence), -1, dtype=np.int32)
    image_index[: len(placement.image_index)] = placement.image_index
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
        image_patch=placement.geometry.token_patches.main_patch(len(sequence)),
        prompt_length=prompt_length,
        image_index=image_index,
    )


def relevancy_maps(
    loaded: LoadedModel,
    forward: Forward,
    pieces: Sequence[VisionPiece],
    geometry: ImageGeometry,
    answer_ids: torch.Tensor,
    prompt_length: int,
    report: Progress,
) -> Relevancy:
    """Every relevancy mode of every answer token: through the LM's self-attention, or through
    its cross-attention where the image never enters the sequence (engine/cross_relevancy.py)."""
    adapter = loaded.adapter
    feeding = adapter.vision_layers_feeding_lm()
    vision = VisionInputs(
        forward.vision_calls,
        [piece for piece in pieces if piece.layer < feeding],
        geometry.vision_sequences,
        geometry.vision_summary,
    )
    on_token = partial(report, "relevancy")
    if forward.cross:
        cross = compute_cross_relevancy(
            CrossRelevancyInputs(
                answer_logits=forward.logits,
                answer_ids=answer_ids,
                self_attention=forward.lm,
                cross_attention=forward.cross,
                cross_layers=[layer for layer, _ in adapter.cross_attention_modules()],
                vision=vision,
                key_tokens=adapter.key_vision_tokens(len(geometry.images)),
                prompt_length=prompt_length,
                num_patches=geometry.num_patches,
            ),
            on_token=on_token,
        )
        return Relevancy(cross.llm, cross.vision, None, cross.llm_through_vision, cross.llm_keys)
    maps = compute_relevancy(
        RelevancyInputs(
            answer_logits=forward.logits,
            answer_ids=answer_ids,
            language_attention=forward.lm,
            vision=vision,
            prompt_length=prompt_length,
            token_patches=geometry.token_patches,
            num_patches=geometry.num_patches,
        ),
        on_token=on_token,
    )
    return Relevancy(maps.llm, maps.vision, maps.all, maps.llm_through_vision)


def _images_identity(images: Sequence[ImageInput]) -> tuple[str, str]:
    """The name and content hash a trace is indexed by: the image's own for one image."""
    if len(images) == 1:
        return images[0].name, images[0].sha256
    joined = "\n".join(image.sha256 for image in images).encode()
    return " + ".join(image.name for image in images), hashlib.sha256(joined).hexdigest()


def record(
    loaded: LoadedModel,
    images: ImageInput | Sequence[ImageInput],
    prompt: str,
    options: RecordOptions | None = None,
    *,
    reference_answer: str | None = None,
    tags: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
    progress: Progress | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> Trace:
    """Generate an answer to ``prompt`` about ``images`` and record its full trace;
    ``history``: earlier (question, answer) turns the prompt follows in the chat."""
    images = [images] if isinstance(images, ImageInput) else list(images)
    options = options or RecordOptions()
    settings = check_generation(options.generation)
    prompt = check_prompt(prompt)
    reference_answer = check_reference(reference_answer)
    tags = check_tags(tags)
    adapter, tokenizer = loaded.adapter, loaded.processor.tokenizer
    report = progress or (lambda stage, done, total: None)

    inputs = adapter.build_inputs(images, prompt, history)
    inputs = {k: v.to(loaded.device) if hasattr(v, "to") else v for k, v in inputs.items()}
    prompt_ids = inputs["input_ids"][0]
    image_positions = adapter.image_positions(prompt_ids)
    placement = adapter.geometry(inputs, images)
    geometry = placement.geometry
    if len(geometry.token_patches.rows) == 0 and geometry.key_patches is None:
        raise PromptError(
            "The chat template placed no image token in the prompt, so the model would not see "
            "the image. Check the processor's chat template and image token."
        )
    report("generate", 0, 1)
    generated = generate(loaded, inputs, settings)
    report("generate", 1, 1)
    prompt_length = int(prompt_ids.shape[0])
    answer_ids = generated.sequence[prompt_length:]
    if len(answer_ids) == 0:
        raise PromptError("The model generated no tokens; raise max_new_tokens.")

    report("forward", 0, 1)
    forward = teacher_forced(loaded, inputs, generated.sequence, with_graph=options.relevancy)
    report("forward", 1, 1)
    pieces = adapter.vision_pieces(forward.vision_calls, geometry)

    relevancy = None
    if options.relevancy:
        relevancy = relevancy_maps(
            loaded, forward, pieces, geometry, answer_ids, prompt_length, report
        )

    sequence = generated.sequence.cpu().numpy()
    tokens = _token_table(tokenizer, sequence, prompt_length, image_positions, placement)
    layers, heads = len(forward.lm), int(forward.lm[0].shape[1])
    policy = options.policy or choose_policy(
        len(sequence), len(image_positions), len(answer_ids), layers, heads
    )
    rows = policy_rows(policy, tokens)
    lm_array = np.stack(
        [
            (a[0] if rows is None else a[0][:, torch.as_tensor(rows, device=a.device).long()])
            .detach()
            .to(torch.float16)
            .cpu()
            .numpy()
            for a in forward.lm
        ]
    )
    answer_rows = np.stack(
        [
            a[0, :, answer_row(prompt_length, 0) : -1].detach().float().cpu().numpy()
            for a in forward.lm
        ]
    )
    shares = attention_shares(answer_rows, tokens.roles)
    cross = None
    if forward.cross:
        cross = CrossAttention(
            layers=[layer for layer, _ in adapter.cross_attention_modules()],
            weights=np.stack(
                [a[0].detach().to(torch.float16).cpu().numpy() for a in forward.cross]
            ),
        )
    answer = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
    image_name, image_sha256 = _images_identity(images)
    recording = {"policy": policy.value, "lm_mask": adapter.lm_mask, "images": len(images)}
    info = TraceInfo(
        trace_id=new_trace_id(),
        model_id=loaded.model_id,
        model_revision=loaded.revision,
        prompt=prompt,
        answer=answer,
        image_name=image_name,
        image_sha256=image_sha256,
        created_at=utc_now(),
        adapter=adapter.name,
        attn_implementation="eager",
        generation=settings,
        reference_answer=reference_answer,
        correct=None if reference_answer is None else _same_answer(answer, reference_answer),
        tags=list(tags),
        extra={
            "versions": _library_versions(),
            "recording": recording,
            "loading": loaded.provenance(),
            **(extra or {}),
        },
    )
    return Trace(
        info=info,
        tokens=tokens,
        image=geometry,
        top_k=_top_k(
            tokenizer, generated.step_logits.cpu(), answer_ids.cpu(), settings.top_k_logged
        ),
        lm_attention=lm_array,
        vision_attention=(
            _vision_arrays(forward.vision_calls, pieces, geometry)
            if options.vision_attention and pieces
            else None
        ),
        relevancy=relevancy,
        summaries=Summaries(attention_shares=shares, head_image_attention=shares[..., 0].mean(-1)),
        lm_rows=rows,
        cross_attention=cross,
    )


def _same_answer(answer: str, reference: str) -> bool:
    def norm(text: str) -> str:
        return " ".join(text.lower().strip(" .!?").split())

    return norm(answer) == norm(reference)
