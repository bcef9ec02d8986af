"""The seed tool's relevancy algorithm (IntelLabs LVLM-Interpret), re-implemented to compare.

Its strategy, kept here: parameters keep ``requires_grad``; ``generate`` runs with autograd on
so the whole generation graph (KV cache included) is retained; each answer token's logit is
back-propagated through that graph with ``retain_graph=True``; the attention pieces of every
step are stitched into full T x T matrices and relevancy is propagated as full matrices,
``R ← R + Ā·R`` (O(L·T³) per token).

Two seed quirks are *not* copied, so both algorithms compute the same, paper-exact maps: the
seed reuses stale gradients for earlier rows (cached from earlier tokens) and never clears
gradients of retained attention tensors between tokens.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import torch


def _stitch(pieces: list[torch.Tensor], steps: int) -> torch.Tensor:
    """Step 0's [1,H,P,P] square plus one [1,H,1,P+j] row per later step -> [H, T, T]."""
    size = pieces[0].shape[-1] + steps - 1
    heads = pieces[0].shape[1]
    full = torch.zeros(heads, size, size)
    prompt = pieces[0].shape[-1]
    full[:, :prompt, :prompt] = pieces[0][0]
    for j in range(1, steps):
        full[:, prompt + j - 1, : prompt + j] = pieces[j][0, :, 0]
    return full


def _grad(tensor: torch.Tensor) -> torch.Tensor:
    """A retained tensor's gradient; None means the logit does not depend on it."""
    return tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)


def _relevancy_matrix(
    attentions: list[torch.Tensor], gradients: list[torch.Tensor]
) -> torch.Tensor:
    size = attentions[0].shape[-1]
    relevancy = torch.eye(size)
    for attention, gradient in zip(attentions, gradients, strict=True):
        cam = (gradient * attention).clamp(min=0).mean(dim=0)
        relevancy = relevancy + cam @ relevancy
    return relevancy


def seed_relevancy(model, adapter, inputs: dict, max_new_tokens: int, timings: dict | None = None):
    """(sequence, llm [N,T], vision [N,G], all [N,G]) by the seed tool's strategy.

    ``timings`` (when given) receives ``generate_s``: the time before the per-token loop."""
    started = time.perf_counter()
    lm_modules = adapter.language_attention_modules()
    vision_modules = adapter.vision_attention_modules()[: adapter.vision_layers_feeding_lm()]
    lm_steps: list[list[torch.Tensor]] = [[] for _ in lm_modules]
    vision_steps: list[list[torch.Tensor]] = [[] for _ in vision_modules]

    def keeper(store: list[torch.Tensor]):
        def hook(_module, _inputs, output):
            output[1].retain_grad()
            store.append(output[1])

        return hook

    hooks = [m.register_forward_hook(keeper(s)) for m, s in zip(lm_modules, lm_steps, strict=True)]
    hooks += [
        m.register_forward_hook(keeper(s))
        for m, s in zip(vision_modules, vision_steps, strict=True)
    ]
    model.requires_grad_(True)
    generate = inspect.unwrap(type(model).generate)  # the seed drops @torch.no_grad too
    try:
        with torch.enable_grad():
            output = generate(
                model,
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                output_logits=True,
            )
        if timings is not None:
            timings["generate_s"] = time.perf_counter() - started
        prompt_length = inputs["input_ids"].shape[1]
        sequence = output.sequences[0]
        answer = sequence[prompt_length:]
        image_positions = torch.nonzero(sequence == adapter.image_token_id).flatten()
        retained = [t for steps in (*lm_steps, *vision_steps) for t in steps]
        llm_rows, vision_rows, all_rows = [], [], []
        for k in range(len(answer)):
            model.zero_grad(set_to_none=True)
            for tensor in retained:
                tensor.grad = None
            output.logits[k][0, answer[k]].backward(retain_graph=True)
            steps = k + 1
            lm_full = [_stitch([t.detach() for t in s[:steps]], steps) for s in lm_steps]
            lm_grad = [_stitch([_grad(t) for t in s[:steps]], steps) for s in lm_steps]
            r_lm = _relevancy_matrix(lm_full, lm_grad)
            query = prompt_length + k - 1
            llm = r_lm[query] - torch.eye(len(r_lm))[query]
            llm = llm / llm.sum()
            vision_full = [s[0][0].detach() for s in vision_steps]
            vision_grad = [_grad(s[0])[0] for s in vision_steps]
            r_vit = _relevancy_matrix(vision_full, vision_grad)
            cls_row = r_vit[0] - torch.eye(len(r_vit))[0]
            vision_rows.append((cls_row / cls_row.sum())[1:])
            carried = torch.zeros(len(r_vit))
            carried[1:] = llm[image_positions]
            spread = (carried @ r_vit)[1:]
            all_rows.append(spread * carried.sum() / spread.sum())
            llm_rows.append(torch.cat([llm, torch.zeros(len(sequence) - len(llm))]))
    finally:
        for hook in hooks:
            hook.remove()
        model.requires_grad_(False)
    maps = (
        torch.stack(rows).numpy().astype(np.float32) for rows in (llm_rows, vision_rows, all_rows)
    )
    return (sequence.numpy(), *maps)
