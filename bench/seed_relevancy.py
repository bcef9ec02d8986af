"""The seed tool's relevancy (IntelLabs LVLM-Interpret, ``utils_relevancy.py``), re-implemented
to compare every mode we store with the seed's own definition of that mode.

Its strategy, kept here: parameters keep ``requires_grad``; ``generate`` runs with autograd on
so the whole generation graph (KV cache included) is retained; each answer token's score is
back-propagated through that graph with ``retain_graph=True``; the attention pieces of every
step are stitched into full T x T matrices and relevancy is propagated as full matrices,
``R ← R + Ā·R`` (O(L·T³) per token). Its maps, as it builds them per answer token:

- ``llama``: ``handle_residual(R_LM)`` at the query row (R - I, each row scaled to sum 1).
- ``vit``: ``handle_residual(R_vit)[0, 1:]`` (CLS row) over the vision layers feeding the LM.
- ``all`` (the map its UI shows as "all"): ``R_vit · pad(R_LM[img, img])`` (the LM's image x
  image block, padded with a CLS row and column that are 1 on the diagonal), normalised the
  same way, CLS row.
- ``all_v2`` (computed, never shown): ``R_vit · (I + e_0 rᵀ + r e_0ᵀ)`` with ``r`` the answer
  token's raw LM row over the image tokens, CLS row: ``R_vit[0, 0] · r + R_vit[0, 1:]``.

Its quirks are switches of :class:`SeedQuirks`, off by default so the maps are the paper's;
each can be turned on to measure what it changes (``python bench/seed_relevancy.py``):

- ``score_scale``: it back-propagates the *processed* score, which with sampling is the logit
  divided by the temperature (its UI default 0.2: a scale of 5), so every Ā is scaled.
- ``stale_prompt_rows``: it caches each layer's Ā and only appends the new row per token, so
  the prompt block keeps the first answer token's gradients and row j keeps token j's.
- ``accumulate_vision``: it never clears the gradients of the retained vision attention, so
  token k's vision maps use the sum of the gradients of tokens 0..k.
"""

from __future__ import annotations

import argparse
import inspect
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SEED_MODES = ("llama", "vit", "all", "all_v2")


@dataclass(frozen=True)
class SeedQuirks:
    score_scale: float = 1.0
    stale_prompt_rows: bool = False
    accumulate_vision: bool = False


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
    """A retained tensor's gradient; None means the score does not depend on it."""
    return tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)


def _cam(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Rule 5 (``avg_heads``): ``E_h[(∇A ⊙ A)⁺]``."""
    return (gradient * attention).clamp(min=0).mean(dim=0)


def _rollout(cams: list[torch.Tensor], start: torch.Tensor) -> torch.Tensor:
    """Rule 6 from ``start``: ``R ← R + Ā·R`` layer by layer."""
    relevancy = start.clone()
    for cam in cams:
        relevancy = relevancy + cam @ relevancy
    return relevancy


def _residual_row(matrix: torch.Tensor, row: int) -> torch.Tensor:
    """``handle_residual`` (eqs. 8-9) at one row: (R - I)[row] scaled to sum 1 (0 stays 0)."""
    values = matrix[row].clone()
    values[row] -= 1
    total = values.sum()
    return values / total if total != 0 else values


def seed_maps(
    lm_cams: list[torch.Tensor],
    vision_cams: list[torch.Tensor],
    query: int,
    image_positions: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The seed's four maps of one answer token from its per-layer maps (full matrices)."""
    r_lm = _rollout(lm_cams, torch.eye(lm_cams[0].shape[-1]))
    r_vit = _rollout(vision_cams, torch.eye(vision_cams[0].shape[-1]))
    padded = torch.eye(len(r_vit))
    padded[1:, 1:] = r_lm[image_positions][:, image_positions]
    answer_row = r_lm[query, image_positions]
    v2_start = torch.eye(len(r_vit))
    v2_start[0, 1:] += answer_row
    v2_start[1:, 0] += answer_row
    return {
        "llama": _residual_row(r_lm, query),
        "vit": _residual_row(r_vit, 0)[1:],
        "all": _residual_row(_rollout(vision_cams, padded), 0)[1:],
        "all_v2": _residual_row(_rollout(vision_cams, v2_start), 0)[1:],
    }


def seed_relevancy(
    model,
    adapter,
    inputs: dict,
    max_new_tokens: int,
    timings: dict | None = None,
    quirks: SeedQuirks = SeedQuirks(),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sequence, {seed mode: [N, T] or [N, G]}) by the seed tool's strategy.

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
        lm_retained = [t for steps in lm_steps for t in steps]
        vision_retained = [s[0] for s in vision_steps]
        stale: list[torch.Tensor] = []  # the seed's ``privious_cam``
        rows: dict[str, list[torch.Tensor]] = {mode: [] for mode in SEED_MODES}
        for k in range(len(answer)):
            model.zero_grad(set_to_none=True)
            cleared = lm_retained if quirks.accumulate_vision else lm_retained + vision_retained
            for tensor in cleared:
                tensor.grad = None
            output.logits[k][0, answer[k]].mul(quirks.score_scale).backward(retain_graph=True)
            steps = k + 1
            lm_cams = [
                _cam(
                    _stitch([t.detach() for t in s[:steps]], steps),
                    _stitch([_grad(t) for t in s[:steps]], steps),
                )
                for s in lm_steps
            ]
            if quirks.stale_prompt_rows:
                if k == 0:
                    stale = lm_cams
                else:  # keep earlier rows, append the new one (zero column for it above)
                    stale = [
                        torch.cat([torch.nn.functional.pad(old, (0, 1)), cam[-1:]])
                        for old, cam in zip(stale, lm_cams, strict=True)
                    ]
                lm_cams = stale
            vision_cams = [_cam(s[0][0].detach(), _grad(s[0])[0]) for s in vision_steps]
            maps = seed_maps(lm_cams, vision_cams, prompt_length + k - 1, image_positions)
            maps["llama"] = torch.cat(
                [maps["llama"], torch.zeros(len(sequence) - len(maps["llama"]))]
            )
            for mode in SEED_MODES:
                rows[mode].append(maps[mode])
    finally:
        for hook in hooks:
            hook.remove()
        model.requires_grad_(False)
    stacked = {mode: torch.stack(r).numpy().astype(np.float32) for mode, r in rows.items()}
    return sequence.numpy(), stacked


# --- comparison: every stored mode against the seed's definition of it ------------------

OURS_VS_SEED = {"llm": "llama", "vision": "vit", "all": "all", "llm_through_vision": "all_v2"}
VARIANTS = {
    "paper-exact (no quirks)": SeedQuirks(),
    "processed score (T = 0.2)": SeedQuirks(score_scale=5.0),
    "stale prompt rows": SeedQuirks(stale_prompt_rows=True),
    "accumulated vision grads": SeedQuirks(accumulate_vision=True),
    "seed as shipped (all three)": SeedQuirks(5.0, True, True),
}


def _image_part(maps: np.ndarray, mode: str, image_positions: np.ndarray) -> np.ndarray:
    return maps[:, image_positions] if mode == "llm" else maps


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float]:
    """(max |Δ|, mean per-token Pearson r, share of tokens with the same top patch)."""
    pearson = [
        float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
        for a, b in zip(ours, theirs, strict=True)
    ]
    same_top = np.mean(ours.argmax(-1) == theirs.argmax(-1))
    return float(np.abs(ours - theirs).max()), float(np.nanmean(pearson)), float(same_top)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from engine.demo.world import QUESTION_KINDS, ask, make_scene
    from engine.inputs import load_image
    from engine.loading import load_model
    from engine.recorder import RecordOptions, record
    from store import GenerationSettings, RelevancyMode

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    loaded = load_model(str(Path(__file__).resolve().parents[1] / "engine/demo/checkpoint"))
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    all_vs_vision, all_vs_through = [], []
    for n in range(args.questions):
        scene = make_scene(100 + n)
        question = ask(scene, QUESTION_KINDS[n % len(QUESTION_KINDS)], random.Random(n))
        options = RecordOptions(GenerationSettings(max_new_tokens=args.max_new_tokens))
        image = load_image(scene.image, "scene.png")
        trace = record(loaded, image, question.text, options)
        image_positions = trace.tokens.image_positions
        inputs = loaded.adapter.build_inputs([image], question.text)
        for variant, quirks in VARIANTS.items():
            sequence, seed = seed_relevancy(
                loaded.model,
                loaded.adapter,
                dict(inputs),
                trace.tokens.answer_length,
                quirks=quirks,
            )
            assert np.array_equal(sequence, trace.tokens.ids), "different answers"
            for mode in RelevancyMode:
                theirs_name = OURS_VS_SEED[mode.value]
                ours = _image_part(trace.relevancy.map(mode), mode.value, image_positions)
                theirs = _image_part(seed[theirs_name], mode.value, image_positions)
                key = (variant, f"{mode.value} vs seed {theirs_name}")
                results.setdefault(key, []).append(agreement(ours, theirs))
            if quirks == SeedQuirks():
                relative = np.abs(seed["all"] - seed["vit"]).sum(-1) / seed["vit"].sum(-1)
                all_vs_vision.extend(relative.tolist())
        through = trace.relevancy.llm_through_vision
        all_vs_through.extend(
            float(np.corrcoef(a, b)[0, 1])
            for a, b in zip(trace.relevancy.all, through, strict=True)
        )
    print(f"demo model, {args.questions} questions, up to {args.max_new_tokens} answer tokens\n")
    print(
        f"{'seed variant':30} {'our mode vs seed mode':38} {'max |Δ|':>9} {'mean r':>7} {'top=':>6}"
    )
    for (variant, pair), values in results.items():
        worst = max(v[0] for v in values)
        mean_r = float(np.nanmean([v[1] for v in values]))
        top = float(np.mean([v[2] for v in values]))
        print(f"{variant:30} {pair:38} {worst:9.2e} {mean_r:7.3f} {top:6.0%}")
    print(
        f"\nseed 'all' vs seed 'vit' (L1 / L1 of vit, per token): "
        f"{min(all_vs_vision):.2%} .. {max(all_vs_vision):.2%}"
    )
    print(
        f"seed 'all' vs our llm_through_vision (Pearson r per token): "
        f"{min(all_vs_through):.2f} .. {max(all_vs_through):.2f}"
    )


if __name__ == "__main__":
    main()
