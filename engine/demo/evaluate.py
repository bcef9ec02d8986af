"""Held-out accuracy of the demo model, per question kind.

Two measurements of the same thing: ``generation_accuracy`` decodes greedily with
``generate`` exactly as a user would; ``teacher_forced_accuracy`` scores the answer tokens in
one batched forward pass (greedy decoding yields the reference iff every reference token,
EOS included, is the argmax given the ones before), cheap enough to run during training.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from engine.demo.train import chat_prompt
from engine.demo.world import QUESTION_KINDS, questions

EVAL_SEED = 20261129  # held-out scenes: training draws its seeds from another stream


@dataclass(frozen=True)
class KindAccuracy:
    kind: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def _summarise(hits: dict[str, list[bool]]) -> dict[str, KindAccuracy]:
    table = {k: KindAccuracy(k, sum(hits[k]), len(hits[k])) for k in QUESTION_KINDS if hits[k]}
    table["overall"] = KindAccuracy(
        "overall", sum(a.correct for a in table.values()), sum(a.total for a in table.values())
    )
    return table


@torch.no_grad()
def teacher_forced_accuracy(
    model, processor, per_kind: int, seed: int = EVAL_SEED, batch_size: int = 50
) -> dict[str, float]:
    items = questions(seed, per_kind)
    eos = processor.tokenizer.eos_token
    hits: dict[str, list[bool]] = defaultdict(list)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        answers = [f" {q.answer} {eos}" for _, q in chunk]
        batch = processor(
            images=[s.image for s, _ in chunk],
            text=[
                chat_prompt(processor, q.text) + a for (_, q), a in zip(chunk, answers, strict=True)
            ],
            return_tensors="pt",
            padding=True,
            padding_side="right",
        )
        predicted = model(**batch).logits.argmax(-1)
        for row, ((_, question), answer) in enumerate(zip(chunk, answers, strict=True)):
            n = len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"])
            end = int(batch["attention_mask"][row].sum())
            target = batch["input_ids"][row, end - n : end]
            hits[question.kind].append(
                bool((predicted[row, end - n - 1 : end - 1] == target).all())
            )
    return {k: round(v.accuracy, 3) for k, v in _summarise(hits).items()}


@torch.no_grad()
def generation_accuracy(
    model, processor, per_kind: int, seed: int = EVAL_SEED, max_new_tokens: int = 4
) -> dict[str, KindAccuracy]:
    """Exact-match accuracy of greedy ``generate`` answers, one question at a time."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for scene, question in questions(seed, per_kind):
        inputs = processor(
            images=scene.image, text=chat_prompt(processor, question.text), return_tensors="pt"
        )
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        answer = processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        hits[question.kind].append(answer == question.answer)
    return _summarise(hits)
