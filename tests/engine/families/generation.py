"""Greedy generation on a built family, for tests that replay the answer in one forced pass
and compare it with what generation saw step by step."""

from __future__ import annotations

import torch


def greedy_answer(
    model: torch.nn.Module, inputs: dict, steps: int = 4, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole sequence [T] (prompt + greedy answer) and each step's logits [steps, vocab];
    ``options`` go to ``generate`` (e.g. ``bad_words_ids`` for tokens a random model emits)."""
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **options,
        )
    return out.sequences[0], torch.cat(out.logits)
