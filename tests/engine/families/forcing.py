"""Inputs for one teacher-forced pass over prompt + answer: the side inputs grow with the answer.

Generation extends ``input_ids`` and ``attention_mask`` itself, but a recorder that replays
prompt + answer in one forward pass must extend the family's other per-position inputs the way
generation would: Qwen-VL ``mm_token_type_ids`` and Gemma 3 ``token_type_ids`` with 0 (text),
PaliGemma ``token_type_ids`` with **1** (0 would make the answer part of the bidirectional
prefix), Mllama's ``cross_attention_mask`` by repeating its last row. PaliGemma's processor also
returns ``labels``, which a forward pass must not get.
"""

from __future__ import annotations

import torch

# per-position inputs and the value an answer position takes; None: repeat the last position
GROWN = {"token_type_ids": 0, "mm_token_type_ids": 0, "cross_attention_mask": None}
ANSWER_IS_PREFIX_TYPE = ("paligemma",)  # token_type_ids 1 = "suffix" (causal) in PaliGemma


def teacher_forced(model_type: str, inputs: dict, answer: torch.Tensor) -> dict:
    """``inputs`` (batch 1) extended by ``answer`` ids [1, n] as one forward pass needs them."""
    n = answer.shape[-1]
    grown = {k: v for k, v in inputs.items() if k != "labels"}
    grown["input_ids"] = torch.cat([inputs["input_ids"], answer], dim=-1)
    grown["attention_mask"] = torch.cat(
        [inputs["attention_mask"], torch.ones_like(answer, dtype=inputs["attention_mask"].dtype)],
        dim=-1,
    )
    for key, fill in GROWN.items():
        if key not in inputs:
            continue
        value = inputs[key]
        if fill is None:
            tail = value[:, -1:].expand(-1, n, *value.shape[2:])
        else:
            if key == "token_type_ids" and model_type in ANSWER_IS_PREFIX_TYPE:
                fill = 1
            tail = torch.full((value.shape[0], n), fill, dtype=value.dtype)
        grown[key] = torch.cat([value, tail], dim=1)
    return grown
