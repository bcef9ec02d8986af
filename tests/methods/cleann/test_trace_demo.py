"""CLEANN on the demo model: the colour word's explanation lands on the queried object.

For "What color is the {shape}?" the colour word (answer token 0) can only be right if the
model looked at that shape, so its causal explanation should contain the object's patches
more often than patches drawn at random. Statistic: over every question,
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

from engine.demo.world import COLOURS, ask, make_scene
from engine.inputs import load_image
from engine.recorder import RecordOptions, record
from methods.cleann.trace import explain_layer
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


def _layer_statistics(colour_traces, layer: int) -> dict[str, float]:
    size = on_object = on_others = hits = 0
    expected = expected_hits = 0.0
    answered = 0
    for scene, question, trace in colour_traces:
        tokens = trace.tokens
        if tokens.text[tokens.prompt_length].strip() not in COLOURS:
            continue  # no colour word to explain
        answered += 1
        results = explain_layer(trace, layer, 0, workers=1)
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
    return {
        "answered": answered,
        "patches": size,
        "rate": on_object / max(size, 1),
        "chance": expected / max(size, 1),
        "others": on_others / max(size, 1),
        "hits": hits,
        "expected_hits": expected_hits,
    }


def test_colour_word_explanation_contains_the_queried_object(colour_traces, demo_model):
    """Asserted at the first layer; every layer is reported.

    With the reference's learner (causality-lab's ordered ICD: possible-ancestor condition
    on, no cap on the conditioning size) and the seed tool's node selection, the colour
    word's explanation lands on the queried object at layer 0 (measured: 0.43 of 118
    patches vs chance 0.20, other objects 0.26). At layer 1, where the demo model is
    trained to mark the object in the image tokens (``Recipe.referent_layer``), the union
    over heads grows to ~230 patches near chance (0.24 vs 0.22); the learner without
    the ancestor condition (``CausalParams(ancestor_pruning=False)``) was the one that tied
    layer 1 to the object.
    """
    layers = demo_model.model.config.text_config.num_hidden_layers
    stats = {layer: _layer_statistics(colour_traces, layer) for layer in range(layers)}
    correct = sum(bool(t.info.answer.strip() == q.answer) for _, q, t in colour_traces)
    print(f"\ncolour word, union over heads; {correct}/{len(colour_traces)} answers correct")
    for layer, row in stats.items():
        print(
            f"layer {layer}: {row['patches']} explanation patches, on the queried object "
            f"{row['rate']:.3f} vs chance {row['chance']:.3f} "
            f"(x{row['rate'] / max(row['chance'], 1e-9):.2f}); on another object "
            f"{row['others']:.3f}; questions with an object patch {row['hits']}/"
            f"{row['answered']} vs chance {row['expected_hits']:.1f}"
        )
    binding = stats[0]
    assert binding["answered"] >= QUESTIONS // 2
    assert binding["patches"] >= MIN_PATCHES
    assert binding["rate"] > 1.5 * binding["chance"]
    assert binding["rate"] > binding["others"]
