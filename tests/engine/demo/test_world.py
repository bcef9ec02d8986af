"""The shapes world is deterministic and its ground truth matches its pixels."""

import random

import numpy as np
import pytest

from engine.demo.world import (
    BACKGROUND,
    COLOURS,
    COUNT_WORDS,
    IMAGE_SIZE,
    POSITIONS,
    QUESTION_KINDS,
    ask,
    make_scene,
    questions,
    vocabulary,
)


def test_same_seed_same_scene_and_questions():
    first, second = make_scene(123), make_scene(123)
    assert np.array_equal(np.array(first.image), np.array(second.image))
    assert first.ground_truth() == second.ground_truth()
    a = [(q.text, q.answer) for _, q in questions(5, 4)]
    b = [(q.text, q.answer) for _, q in questions(5, 4)]
    assert a == b
    assert a != [(q.text, q.answer) for _, q in questions(6, 4)]


@pytest.mark.parametrize("seed", range(20))
def test_boxes_and_masks_match_pixels(seed):
    scene = make_scene(seed)
    pixels = np.array(scene.image).astype(int)
    assert 2 <= len(scene.objects) <= 4
    assert len({o.colour for o in scene.objects}) == len(scene.objects)
    assert len({o.shape for o in scene.objects}) == len(scene.objects)
    half = IMAGE_SIZE // 2
    for obj in scene.objects:
        ys, xs = np.nonzero(obj.mask)
        assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        # every masked pixel has the object's colour exactly; the box lies in its quadrant
        assert np.all(pixels[obj.mask] == COLOURS[obj.colour])
        quadrant = POSITIONS.index(obj.position)
        x0, y0 = (quadrant % 2) * half, (quadrant // 2) * half
        assert x0 <= obj.box[0] and obj.box[2] <= x0 + half
        assert y0 <= obj.box[1] and obj.box[3] <= y0 + half
    background = ~np.any([o.mask for o in scene.objects], axis=0)
    assert np.abs(pixels[background] - BACKGROUND).max() <= 6  # only the seeded noise


@pytest.mark.parametrize("kind", QUESTION_KINDS)
def test_answers_follow_from_ground_truth(kind):
    rng = random.Random(kind)
    for seed in range(30):
        scene = make_scene(seed)
        question = ask(scene, kind, rng)
        assert set(question.text.replace("?", " ?").split()) <= set(vocabulary())
        objects = scene.objects
        if kind == "count":
            assert question.answer == COUNT_WORDS[len(objects)]
        elif kind == "existence":
            present = any(o.colour in question.text and o.shape in question.text for o in objects)
            assert question.answer == ("yes" if present else "no")
            assert question.hallucination_bait == (not present)
        else:
            target = objects[question.target]
            expected = {"colour": target.colour, "shape": target.shape, "position": target.position}
            assert question.answer == expected[kind]


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown question kind"):
        ask(make_scene(0), "smell", random.Random(0))
