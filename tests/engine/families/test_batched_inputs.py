"""One processor call for many image lists (``VlmAdapter.build_batch``, what the perturbation
metrics use) must give exactly the tensors of one call per list, concatenated, and the
teacher-forced inputs of the batch exactly those of each list: for every family, with one
image per prompt and, where the family takes several, two."""

from __future__ import annotations

import pytest
import torch

from engine.adapters import adapter_for, served_model_types
from engine.inputs import load_image
from tests.engine.families.builders import FAMILIES
from tests.engine.families.images import noise_image

PROMPT = "what is in the image ?"


def joined(rows: list[dict]) -> dict:
    """Per-list inputs as one batch, as the perturbation metrics joined them before."""
    return {
        k: torch.cat([row[k] for row in rows]) if torch.is_tensor(rows[0][k]) else rows[0][k]
        for k in rows[0]
    }


def assert_same(batch: dict, expected: dict) -> None:
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        if torch.is_tensor(value):
            assert torch.equal(batch[key], value), key
        else:
            assert batch[key] == value, key


@pytest.mark.parametrize("name", [n for n in FAMILIES if n in served_model_types()])
def test_one_call_equals_one_call_per_image_list(build, name):
    built = build(name)
    adapter = adapter_for(built.model, built.processor)
    for per in (1, 2) if adapter.multi_image else (1,):
        lists = [
            [load_image(noise_image(seed=per * i + j), f"{i}-{j}.png") for j in range(per)]
            for i in range(3)
        ]
        batch = adapter.build_batch(lists, PROMPT)
        singles = [adapter.build_inputs(images, PROMPT) for images in lists]
        assert_same(batch, joined(singles))
        answer = torch.tensor([built.processor.tokenizer.convert_tokens_to_ids("red")] * 2)
        sequence = torch.cat([singles[0]["input_ids"][0], answer])
        forced = [adapter.forced_inputs(single, sequence) for single in singles]
        assert_same(adapter.forced_inputs(batch, sequence), joined(forced))
