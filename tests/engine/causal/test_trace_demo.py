"""CLEANN on the demo model: the colour word's explanation lands on the queried object.

For "What color is the {shape}?" the colour word (answer token 0) can only be right if the
model looked at that shape, so its causal explanation at the last layer should contain the
object's patches more often than patches drawn at random. Statistic: over every question,
the explanation's image patches (union over the layer's heads: a layer-level claim that
does not hinge on which head ranks first) that overlap the object's ground-truth box, as
a share of all explanation patches. Chance: the share a random patch set of the same
sizes would have (the box's share of the grid, weighted by explanation size). Also
printed: the same share for the scene's *other* objects, which tells "looks at the asked
object" apart from "looks at objects", and the share of questions whose explanation holds
at least one object patch next to its chance value (hypergeometric).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from engine.causal.trace import explain_layer
from engine.demo.world import COLOURS, ask, make_scene
from engine.inputs import load_image
from engine.recorder import RecordOptions, record
from store.schema import GenerationSettings, TokenRole

QUESTIONS = 20
MIN_PATCHES = 10  # fewer explanation patches in total would make the share meaningless


def _overlapping(boxes: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)


@pytest.fixture(scope="module")
def colour_traces(demo_model):
    rng = random.Random(5)
    options = RecordOptions(GenerationSettings(max_new_tokens=4), relevancy=False)
    out = []
    for _ in range(QUESTIONS):
        scene = make_scene(rng.getrandbits(32))
        question = ask(scene, "colour", rng)
        image = load_image(scene.image, f"scene-{scene.seed}.png")
        out.append((scene, question, record(demo_model, image, question.text, options)))
    return out


def test_colour_word_explanation_contains_the_queried_object(colour_traces):
    size = on_object = on_others = hits = 0
    expected = expected_hits = 0.0
    answered = 0
    for scene, question, trace in colour_traces:
        tokens = trace.tokens
        if tokens.text[tokens.prompt_length].strip() not in COLOURS:
            continue  # no colour word to explain
        answered += 1
        results = explain_layer(trace, -1, 0, workers=1)
        members = {p for r in results for p in r.explanation}
        patches = tokens.image_patch[
            sorted(p for p in members if tokens.roles[p] == TokenRole.IMAGE)
        ]
        boxes = trace.image.patch_boxes
        target = _overlapping(boxes, scene.objects[question.target].box)
        others = [o for i, o in enumerate(scene.objects) if i != question.target]
        size += len(patches)
        on_object += int(target[patches].sum())
        expected += len(patches) * float(target.mean())
        hits += bool(target[patches].any())
        grid, off = len(target), int((~target).sum())
        expected_hits += 1 - math.comb(off, len(patches)) / math.comb(grid, len(patches))
        on_others += sum(int(_overlapping(boxes, o.box)[patches].sum()) for o in others) / max(
            len(others), 1
        )
    rate, chance = on_object / max(size, 1), expected / max(size, 1)
    correct = sum(bool(t.info.answer.strip() == q.answer) for _, q, t in colour_traces)
    print(
        f"\ncolour word, last layer, union over heads: {answered} colour answers "
        f"({correct}/{len(colour_traces)} correct), {size} explanation patches; "
        f"on the queried object {rate:.3f} vs chance {chance:.3f} "
        f"(x{rate / max(chance, 1e-9):.2f}); on another object {on_others / max(size, 1):.3f}; "
        f"questions with an object patch {hits}/{answered} vs chance {expected_hits:.1f}"
    )
    assert answered >= QUESTIONS // 2
    assert size >= MIN_PATCHES
    assert rate > chance
