"""Reproduce the demo checkpoint from a seed on a CPU, in two stages as LLaVA trains.

Stage 1 teaches the vision tower what is in every patch (a dense auxiliary loss: colour and
shape of the object covering each patch), because end-to-end question answering alone stayed
at chance on colour, shape and position questions. Stage 2 freezes the tower and trains
projector + LM on questions, from single-object scenes to the full world, with an auxiliary
"which patches is the question about" loss on the LM's image tokens (see ``Recipe``).
Schedules are counted in steps with fixed seeds, never wall-clock, so the same recipe gives
the same weights (up to floating-point reduction order across thread counts).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.demo.architecture import PATCH_SIZE, build_model, build_processor, build_tokenizer
from engine.demo.world import (
    COLOURS,
    IMAGE_SIZE,
    QUESTION_KINDS,
    SHAPES,
    Question,
    Scene,
    ask,
    make_scene,
)

GRID = IMAGE_SIZE // PATCH_SIZE
COLOUR_CLASSES = ("background", *sorted(COLOURS))
SHAPE_CLASSES = ("background", *SHAPES)
NON_COUNT_KINDS = tuple(k for k in QUESTION_KINDS if k != "count")
TRAIN_SEED_OFFSET = 1_000_000  # training scenes never share a seed with evaluation scenes


@dataclass
class Recipe:
    seed: int = 0
    batch_size: int = 48
    vision_steps: int = 400
    vision_lr: float = 2e-3
    joint_steps: int = 2500
    joint_lr: float = 1e-3
    warmup_steps: int = 200
    # One question per image: in a multi-turn conversation only the first question precedes
    # the image, and later turns taught the image-first lookup that never trained.
    questions_per_image: int = 1
    # Curriculum (fractions of the answer stage): single-object scenes first teach "read the
    # object's colour/shape/place" without having to pick one object; then mixed; then 2-4.
    single_object_until: float = 0.25
    mixed_until: float = 0.5
    # Auxiliary loss on the LM's image tokens after ``referent_layer``: is this patch part of
    # the object the (first) question is about? It teaches the step that plain training never
    # found: picking the queried object among several.
    referent_weight: float = 0.5
    referent_layer: int = 1
    weight_decay: float = 0.01
    # Answer steps actually run (None: all of joint_steps). The schedule still spans
    # joint_steps, so a stopped recipe is the full one caught mid-training, not a shorter
    # schedule that would converge: its mistakes are those a model makes while still learning.
    stop_after: int | None = None


# Named recipes ``lvlm-interpret demo train --recipe`` reproduces. "weak" is the main recipe
# stopped in the answer stage, at a step chosen from one run's snapshots
# (training-log-weak.txt) where some question kinds are learnt and others are not yet: a
# second checkpoint with real, uneven mistakes to compare with the main one.
RECIPES: dict[str, Recipe] = {"main": Recipe(), "weak": Recipe(stop_after=950)}


def _coverage(obj) -> np.ndarray:
    return obj.mask.reshape(GRID, PATCH_SIZE, GRID, PATCH_SIZE).mean(axis=(1, 3))


def referent_patches(scene: Scene, question: Question) -> np.ndarray:
    """[G] 1.0 where a patch is 20%+ covered by what the question is about, else 0.0.

    Count questions are about every object; absent objects (hallucination bait) about none.
    """
    if question.kind == "count":
        referents = scene.objects
    elif question.target is None:
        referents = ()
    else:
        referents = (scene.objects[question.target],)
    covered = np.zeros((GRID, GRID), dtype=bool)
    for obj in referents:
        covered |= _coverage(obj) >= 0.2
    return covered.reshape(-1).astype(np.float32)


def patch_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Colour and shape class of the object covering most of each patch (0 = background)."""
    colour = np.zeros((GRID, GRID), dtype=np.int64)
    shape = np.zeros((GRID, GRID), dtype=np.int64)
    best = np.full((GRID, GRID), 0.2)  # a patch needs 20% coverage to belong to an object
    for obj in scene.objects:
        cover = _coverage(obj)
        wins = cover > best
        best = np.where(wins, cover, best)
        colour[wins] = COLOUR_CLASSES.index(obj.colour)
        shape[wins] = SHAPE_CLASSES.index(obj.shape)
    return colour.reshape(-1), shape.reshape(-1)


class DenseHead(nn.Module):
    """Per-patch classifier on the vision tower's last hidden state (training only)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.colour = nn.Linear(hidden, len(COLOUR_CLASSES))
        self.shape = nn.Linear(hidden, len(SHAPE_CLASSES))

    def loss(self, patches: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor):
        ce = nn.functional.cross_entropy
        return ce(self.colour(patches).flatten(0, 1), colour.flatten()) + ce(
            self.shape(patches).flatten(0, 1), shape.flatten()
        )


class Batches:
    """Fresh scenes and questions every step, from one seeded stream."""

    def __init__(self, processor, seed: int, batch_size: int):
        self.processor = processor
        self.rng = random.Random(seed + TRAIN_SEED_OFFSET)
        self.batch_size = batch_size

    def scenes(self, max_objects: int | None = None, min_objects: int = 2) -> list[Scene]:
        """Fresh scenes; the default draws 2-4 objects as the evaluation does."""
        if max_objects is None:
            return [make_scene(self.rng.getrandbits(32)) for _ in range(self.batch_size)]
        return [
            make_scene(self.rng.getrandbits(32), self.rng.randint(min_objects, max_objects))
            for _ in range(self.batch_size)
        ]

    def dense_targets(self, scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = [patch_labels(s) for s in scenes]
        return (
            torch.from_numpy(np.stack([c for c, _ in labels])),
            torch.from_numpy(np.stack([s for _, s in labels])),
        )

    def pixels(self, scenes: list[Scene]) -> torch.Tensor:
        return self.processor.image_processor([s.image for s in scenes], return_tensors="pt")[
            "pixel_values"
        ]

    def questions(self, scenes: list[Scene], per_image: int) -> dict[str, torch.Tensor]:
        """Conversations of ``per_image`` question turns; labels only on answers and EOS."""
        texts, referents = [], []
        for scene in scenes:
            messages = []
            for turn in range(per_image):
                # Counting needs at least two objects ("one" is not in the world's vocabulary).
                kinds = QUESTION_KINDS if len(scene.objects) > 1 else NON_COUNT_KINDS
                question = ask(scene, self.rng.choice(kinds), self.rng)
                content = [{"type": "text", "text": question.text}]
                if turn == 0:
                    content.append({"type": "image"})
                    referents.append(referent_patches(scene, question))
                messages.append({"role": "user", "content": content})
                answer = [{"type": "text", "text": question.answer}]
                messages.append({"role": "assistant", "content": answer})
            texts.append(self.processor.apply_chat_template(messages))
        batch = self.processor(
            images=[s.image for s in scenes],
            text=texts,
            return_tensors="pt",
            padding=True,
            padding_side="right",
        )
        batch["labels"] = answer_labels(batch["input_ids"], self.processor.tokenizer)
        batch["referents"] = torch.from_numpy(np.stack(referents))
        return batch


def answer_labels(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """Keep the tokens after each 'ASSISTANT :' up to and including EOS; mask the rest."""
    assistant, colon = tokenizer.convert_tokens_to_ids(["ASSISTANT", ":"])
    labels = torch.full_like(input_ids, -100)
    for row, ids in enumerate(input_ids.tolist()):
        answering = False
        for position, token in enumerate(ids):
            if answering:
                labels[row, position] = token
                answering = token != tokenizer.eos_token_id
            elif position > 0 and token == colon and ids[position - 1] == assistant:
                answering = True
    return labels


def chat_prompt(processor, question: str) -> str:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _capture_output(module: nn.Module) -> dict[str, torch.Tensor]:
    """Keep a layer's latest output hidden states (for auxiliary losses)."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    module.register_forward_hook(hook)
    return captured


def _save(model, processor, recipe: Recipe, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
    return out_dir


def train(
    recipe: Recipe,
    out_dir: Path,
    log: Callable[[str], None] = print,
    eval_every: int = 1000,
    snapshots: Collection[int] = (),
) -> Path:
    """Train from scratch and save a Hugging Face checkpoint (model + processor) to out_dir.

    ``snapshots``: answer-stage step counts after which a copy is also saved to
    ``out_dir/step-N`` with the recipe that reproduces it (``stop_after=N``), so one run can
    offer several stop points to choose a weaker checkpoint from.
    """
    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer)
    head = DenseHead(model.config.vision_config.hidden_size)
    captured = _capture_output(model.model.vision_tower.encoder.layers[-1])
    batches = Batches(processor, recipe.seed, recipe.batch_size)

    vision_params = [*model.model.vision_tower.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(
        vision_params, lr=recipe.vision_lr, weight_decay=recipe.weight_decay
    )
    model.train()
    for step in range(recipe.vision_steps):
        scenes = batches.scenes()
        colour, shape = batches.dense_targets(scenes)
        for group in optimiser.param_groups:
            group["lr"] = recipe.vision_lr * _schedule(step, recipe.vision_steps, 50)
        model.model.vision_tower(batches.pixels(scenes))
        loss = head.loss(captured["hidden"][:, 1:], colour, shape)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == recipe.vision_steps - 1:
            log(f"vision {step:5d}  dense loss {loss.item():.4f}")

    # Stage 2: the vision tower stays as stage 1 left it; projector and LM learn to answer.
    model.model.vision_tower.requires_grad_(False)
    referent_head = nn.Linear(model.config.text_config.hidden_size, 1)
    lm_hidden = _capture_output(model.model.language_model.layers[recipe.referent_layer])
    image_token = model.config.image_token_id
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable += list(referent_head.parameters())
    optimiser = torch.optim.AdamW(trainable, lr=recipe.joint_lr, weight_decay=recipe.weight_decay)
    for step in range(recipe.stop_after or recipe.joint_steps):
        progress = step / recipe.joint_steps
        if progress < recipe.single_object_until:
            scenes = batches.scenes(max_objects=1, min_objects=1)
        elif progress < recipe.mixed_until:
            scenes = batches.scenes(max_objects=4, min_objects=1)
        else:
            scenes = batches.scenes()
        batch = batches.questions(scenes, recipe.questions_per_image)
        referents = batch.pop("referents")
        for group in optimiser.param_groups:
            group["lr"] = recipe.joint_lr * _schedule(step, recipe.joint_steps, recipe.warmup_steps)
        qa_loss = model(**batch).loss
        image_hidden = lm_hidden["hidden"][batch["input_ids"] == image_token]
        referent_logits = referent_head(image_hidden).view_as(referents)
        referent_loss = nn.functional.binary_cross_entropy_with_logits(referent_logits, referents)
        loss = qa_loss + recipe.referent_weight * referent_loss
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(trainable, 1.0)
        optimiser.step()
        if step % 100 == 0 or step == recipe.joint_steps - 1:
            losses = f"qa loss {qa_loss.item():.4f}  referent {referent_loss.item():.4f}"
            log(f"answer {step:5d}  {losses}")
        if eval_every and (step + 1) % eval_every == 0:
            from engine.demo.evaluate import teacher_forced_accuracy

            model.eval()
            log(f"answer {step:5d}  held-out {teacher_forced_accuracy(model, processor, 40)}")
            model.train()
        if step + 1 in snapshots:
            stopped = replace(recipe, stop_after=step + 1)
            saved = _save(model, processor, stopped, out_dir / f"step-{step + 1}")
            log(f"answer {step:5d}  snapshot {saved}")

    model.eval()
    return _save(model, processor, recipe, out_dir)
