"""A seeded world of coloured shapes with ground truth for every object.

The demo model is trained and evaluated here, and the ground truth (class, colour, box, mask
per object) lets later code measure whether an attention or relevancy map points at the object
a question is about. Objects sit in distinct quadrants with distinct colours and shapes, so
every question has exactly one correct answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
BACKGROUND = (236, 236, 230)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (225, 200, 30),
    "purple": (140, 60, 190),
}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
QUESTION_KINDS = ("colour", "shape", "position", "count", "existence")


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    position: str  # quadrant name, one of POSITIONS
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive, from the mask
    mask: np.ndarray = field(repr=False, compare=False)  # [H, W] bool


@dataclass(frozen=True)
class Question:
    kind: str  # one of QUESTION_KINDS
    text: str
    answer: str
    target: int | None  # index of the object the question is about, None if absent/all
    hallucination_bait: bool = False  # asks about an object that is not in the image


@dataclass(frozen=True)
class Scene:
    seed: int
    image: Image.Image = field(repr=False, compare=False)
    objects: tuple[WorldObject, ...]

    def ground_truth(self) -> dict:
        """JSON-safe ground truth, stored with a trace so maps can be scored later."""
        return {
            "world_seed": self.seed,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "position": o.position, "box": list(o.box)}
                for o in self.objects
            ],
        }


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill):
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
    elif shape == "cross":
        w, h = x1 - x0, y1 - y0
        bar_w, bar_h = max(w // 3, 2), max(h // 3, 2)
        cx, cy = x0 + (w - bar_w) // 2, y0 + (h - bar_h) // 2
        draw.rectangle((cx, y0, cx + bar_w - 1, y1 - 1), fill=fill)
        draw.rectangle((x0, cy, x1 - 1, cy + bar_h - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def make_scene(seed: int, num_objects: int | None = None) -> Scene:
    """Render one scene; the same seed always gives the same pixels and ground truth."""
    rng = random.Random(seed)
    count = num_objects if num_objects is not None else rng.choice(sorted(COUNT_WORDS))
    shapes = rng.sample(SHAPES, count)
    colours = rng.sample(sorted(COLOURS), count)
    quadrants = rng.sample(range(len(POSITIONS)), count)

    canvas = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-6, 7, size=canvas.shape)
    image = Image.fromarray(np.clip(canvas + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    half = IMAGE_SIZE // 2
    objects = []
    for shape, colour, quadrant in zip(shapes, colours, quadrants, strict=True):
        size = rng.randint(18, 24)
        qx, qy = (quadrant % 2) * half, (quadrant // 2) * half
        x0 = qx + rng.randint(2, half - size - 2)
        y0 = qy + rng.randint(2, half - size - 2)
        box = (x0, y0, x0 + size, y0 + size)
        mask_image = Image.new("1", (IMAGE_SIZE, IMAGE_SIZE), 0)
        _draw_shape(ImageDraw.Draw(mask_image), shape, box, fill=1)
        _draw_shape(draw, shape, box, fill=COLOURS[colour])
        mask = np.array(mask_image, dtype=bool)
        ys, xs = np.nonzero(mask)
        tight_box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(WorldObject(shape, colour, POSITIONS[quadrant], tight_box, mask))
    return Scene(seed=seed, image=image, objects=tuple(objects))


def ask(scene: Scene, kind: str, rng: random.Random) -> Question:
    """One question of the given kind about the scene, with its single correct answer."""
    objects = scene.objects
    index = rng.randrange(len(objects))
    obj = objects[index]
    if kind == "colour":
        return Question(kind, f"What color is the {obj.shape}?", obj.colour, index)
    if kind == "shape":
        return Question(kind, f"What shape is the {obj.colour} object?", obj.shape, index)
    if kind == "position":
        return Question(kind, f"Where is the {obj.colour} {obj.shape}?", obj.position, index)
    if kind == "count":
        return Question(kind, "How many shapes are there?", COUNT_WORDS[len(objects)], None)
    if kind == "existence":
        if rng.random() < 0.5:
            return Question(kind, f"Is there a {obj.colour} {obj.shape}?", "yes", index)
        present = {(o.colour, o.shape) for o in objects}
        absent = [(c, s) for c in sorted(COLOURS) for s in SHAPES if (c, s) not in present]
        # Bait that shares a colour or a shape with a real object is the hard case.
        near = [(c, s) for c, s in absent if any(c == o.colour or s == o.shape for o in objects)]
        colour, shape = rng.choice(near if near and rng.random() < 0.8 else absent)
        return Question(kind, f"Is there a {colour} {shape}?", "no", None, True)
    raise ValueError(f"unknown question kind {kind!r}; choose from {QUESTION_KINDS}")


def questions(seed: int, per_kind: int) -> list[tuple[Scene, Question]]:
    """A deterministic question set: ``per_kind`` questions of every kind, one scene each."""
    rng = random.Random(seed)
    items = []
    for kind in QUESTION_KINDS:
        for _ in range(per_kind):
            scene = make_scene(rng.getrandbits(32))
            items.append((scene, ask(scene, kind, rng)))
    return items


def demo_items(count: int, seed: int) -> Iterator[tuple[Scene, Question]]:
    """The held-out items ``demo record`` records: kinds in turn, one new scene each."""
    rng = random.Random(seed)
    for index in range(count):
        scene = make_scene(rng.getrandbits(32))
        yield scene, ask(scene, QUESTION_KINDS[index % len(QUESTION_KINDS)], rng)


def write_manifest(out: Path, count: int, seed: int) -> Path:
    """The items of :func:`demo_items` as ``out/manifest.jsonl`` beside their images, for
    ``record-dataset``: reference answers, the question kind as a tag and, when the question
    is about one object, its box. An existing manifest is never overwritten."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    with manifest.open("x", encoding="utf-8") as lines:
        for scene, question in demo_items(count, seed):
            name = f"scene-{scene.seed}.png"
            scene.image.save(out / name)
            row = {
                "image": name,
                "prompt": question.text,
                "reference": question.answer,
                "tags": ["demo", question.kind],
            }
            if question.target is not None:
                row["boxes"] = [list(scene.objects[question.target].box)]
            lines.write(json.dumps(row) + "\n")
    return manifest


def vocabulary() -> list[str]:
    """Every word a question or answer can contain, for the demo tokenizer."""
    words = {"what", "color", "is", "the", "shape", "object", "where", "how", "many", "shapes"}
    words |= {"are", "there", "a", "yes", "no", "?", "What", "Where", "How", "Is"}
    words |= set(COLOURS) | set(SHAPES) | set(COUNT_WORDS.values())
    words |= {w for p in POSITIONS for w in p.split()}
    return sorted(words)
