"""Sanity check of the explanation maps by cascading model-parameter randomisation (Adebayo et
al. 2018, "Sanity Checks for Saliency Maps").

Why: a map that looks the same whether or not the model was trained explains the image, not
the model. The check re-initialises a tower's layers from the top down (the top layer, then
the top two, ...) and, after each step, records the maps again on the same images and prompt
with the same answer tokens teacher-forced (a new answer would make the maps incomparable).
Each map of the randomised model is compared with the trained model's by Spearman rank
correlation over the patches and by the overlap of their top-20 % patches, per answer token,
then averaged over tokens.

- Maps are the recorder's own: its teacher-forced pass and relevancy (engine/recorder.py), read
  per patch as :mod:`methods.maps` names them (``relevancy.<mode>``; ``attention.head_mean``:
  the last LM layer's answer rows, mean over heads, spread onto the patches); plus
  ``random`` (:func:`methods.maps.random_map`): a map that ignores the model, a positive
  control the check must fail.
- Depth 0 is a control, shared by both cascades: the whole pipeline runs again with nothing
  re-initialised and must give a correlation of exactly 1.0 (it would expose
  non-deterministic kernels, which would otherwise read as change).
- Re-initialisation uses the model's own ``_init_weights`` (that of the innermost
  ``PreTrainedModel`` holding the layer, so a CLIP layer gets CLIP's scheme), with the
  ``_is_hf_initialized`` flags that ``from_pretrained`` sets cleared first (transformers 5's
  init functions skip flagged tensors). A parameter it does not write gets a stated fallback
  (:func:`reinitialise`). Each layer's draw is seeded by (seed, tower, layer), so the
  cascade is cumulative and repeatable. Weights are changed in memory only and restored
  afterwards; no file is touched.
- A randomised map that is flat (one value everywhere: it ranks nothing) scores a
  correlation of 0 and chance overlap, and is counted (``flat_tokens``); see :func:`spearman`.
- Verdict (:data:`THRESHOLD`): a map FAILS a cascade when its mean Spearman correlation with
  the trained model's map is still >= 0.5 once every layer of the cascade is re-initialised.
  0.5 is the conventional boundary of a "large" correlation (Cohen); Adebayo et al. judged
  by eye and set no number. Two unrelated maps over G patches have a correlation of about
  0 +- 1/sqrt(G-1) (0.13 for the demo's 64 patches), so 0.5 is far outside chance there; with
  fewer than ~16 patches it is not, and the verdict means little.
- The vision cascade starts at the top layer that feeds the LM (LLaVA reads the penultimate
  layer by default: its last layer never reaches the LM and re-initialising it is a no-op).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from transformers import PreTrainedModel

from engine.adapters.base import resolve
from engine.inputs import ImageInput, load_image
from engine.loading import LoadedModel
from engine.recorder import Progress, generate, relevancy_maps, teacher_forced
from engine.recording import stored_history
from methods.maps import RANDOM, attention_on_patches, image_rows, random_map
from store._stored import StoredTrace
from store.schema import GenerationSettings, answer_row

THRESHOLD = 0.5  # mean Spearman at full depth at or above which a map FAILS (module docstring)
TOP_FRACTION = 0.2  # the top-20 % patch overlap
LANGUAGE, VISION = "language", "vision"
CONTROL = "control"  # the step with nothing re-initialised, shared by both cascades
HEAD_MEAN = "attention.head_mean"


@dataclass(frozen=True)
class Case:
    """One explained answer: images, prompt (and earlier turns) and the token ids of prompt +
    answer that every step teacher-forces."""

    label: str  # a trace id, or the image's name
    images: tuple[ImageInput, ...]
    prompt: str
    sequence: torch.Tensor  # [T] prompt + answer ids
    history: tuple[tuple[str, str], ...] = ()


def case_from_trace(loaded: LoadedModel, trace: StoredTrace) -> Case:
    """The stored trace's question and answer, on its stored pixels. Raises ``ValueError``
    when the prompt does not tokenise to the stored prompt tokens with this model's processor
    (another model, or the trace was recorded differently)."""
    images = tuple(load_image(image_from(i.pixels), i.name) for i in trace.image.images)
    history = stored_history(trace.info.extra)
    ids = torch.as_tensor(np.asarray(trace.tokens.ids), dtype=torch.long, device=loaded.device)
    case = Case(trace.trace_id, images, trace.info.prompt, ids, history)
    prompt_ids = _inputs(loaded, case)["input_ids"][0]
    if not torch.equal(prompt_ids, ids[: trace.prompt_length]):
        raise ValueError(
            f"trace {trace.trace_id}: the prompt does not tokenise to the stored tokens with "
            "this model's processor"
        )
    return case


def image_from(pixels: np.ndarray):
    """A PIL image of stored ``[h, w, 3]`` uint8 pixels."""
    from PIL import Image

    return Image.fromarray(np.asarray(pixels, np.uint8))


def case_from_prompt(
    loaded: LoadedModel,
    images: Sequence[ImageInput],
    prompt: str,
    settings: GenerationSettings,
) -> Case:
    """The trained model's own answer to ``prompt`` (plain ``generate``, as ``record`` does)."""
    label = " + ".join(image.name for image in images)
    case = Case(label, tuple(images), prompt, torch.empty(0, dtype=torch.long))
    inputs = _inputs(loaded, case)
    sequence = generate(loaded, inputs, settings).sequence
    if len(sequence) == inputs["input_ids"].shape[1]:
        raise ValueError("the model generated no tokens; raise --max-new-tokens")
    return Case(label, case.images, prompt, sequence)


def _inputs(loaded: LoadedModel, case: Case) -> dict[str, Any]:
    inputs = loaded.adapter.build_inputs(list(case.images), case.prompt, case.history)
    return {k: v.to(loaded.device) if hasattr(v, "to") else v for k, v in inputs.items()}


def explanation_maps(
    loaded: LoadedModel, case: Case, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """Every map of ``case`` by name, ``[N answer tokens, G patches]`` float64: the recorder's
    teacher-forced pass and relevancy on the model as it is now."""
    report = progress or (lambda stage, done, total: None)
    adapter = loaded.adapter
    inputs = _inputs(loaded, case)
    geometry = adapter.geometry(inputs, list(case.images)).geometry
    prompt_length = int(inputs["input_ids"].shape[1])
    answer_ids = case.sequence[prompt_length:]
    forward = teacher_forced(loaded, inputs, case.sequence, with_graph=True)
    pieces = adapter.vision_pieces(forward.vision_calls, geometry)
    relevancy = relevancy_maps(loaded, forward, pieces, geometry, answer_ids, prompt_length, report)
    maps = {
        f"relevancy.{mode.value}": np.asarray(relevancy.on_patches(mode, geometry), np.float64)
        for mode in relevancy.modes
    }
    n = len(answer_ids)
    if len(image_rows(geometry)):  # cross-attention families: the image is not in the sequence
        rows = [answer_row(prompt_length, k) for k in range(n)]
        last = forward.lm[-1][0, :, rows].detach().double().mean(dim=0).cpu().numpy()  # [N, T]
        maps[HEAD_MEAN] = attention_on_patches(geometry, last)
    maps[RANDOM] = random_map(n, geometry.num_patches, 0)
    return maps


# -- the layers and their re-initialisation ---------------------------------------------------


def tower_layers(loaded: LoadedModel, tower: str) -> list[nn.Module]:
    """A tower's layers, first layer first: the LM's decoder layers, or the vision layers
    that feed the LM. Raises ``ValueError`` where the vision layers cannot be located."""
    adapter = loaded.adapter
    if tower == LANGUAGE:
        return list(resolve(loaded.model, adapter.language_layers_path))
    count = adapter.num_vision_layers()
    language = adapter.language_layers_path
    found = [
        module
        for name, module in loaded.model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == count
        and not name.startswith(language)
        and any(part in name for part in ("vision", "visual"))
    ]
    if len(found) != 1:
        raise ValueError(
            f"the {adapter.name} vision tower's {count} layers are not one module list "
            f"({len(found)} candidates): no vision cascade"
        )
    return list(found[0])[: adapter.vision_layers_feeding_lm()]


def _owner(model: nn.Module, layer: nn.Module) -> PreTrainedModel | None:
    """The innermost ``PreTrainedModel`` holding ``layer``: whose ``_init_weights`` fits it."""
    owners = [
        m
        for m in model.modules()
        if isinstance(m, PreTrainedModel) and any(sub is layer for sub in m.modules())
    ]
    return min(owners, key=lambda m: sum(1 for _ in m.modules()), default=None)


def _unflag(tensor_or_module: Any) -> None:
    if hasattr(tensor_or_module, "_is_hf_initialized"):
        del tensor_or_module._is_hf_initialized


def _layer_seed(seed: int, tower: str, index: int) -> int:
    return int(
        np.random.SeedSequence([seed, (LANGUAGE, VISION).index(tower), index]).generate_state(1)[0]
    )


@dataclass(frozen=True)
class Reinitialised:
    """How one layer was re-initialised."""

    tower: str
    index: int
    init: str  # "_init_weights of <class>" (or "normal": no PreTrainedModel holds the layer)
    fallback: int  # parameters the model's init did not write (given the fallback)


def reinitialise(model: nn.Module, layer: nn.Module, seed: int) -> tuple[str, int]:
    """Re-initialise ``layer`` in place (see module docstring); returns (init used, number
    of parameters the model's init did not write, given the fallback).

    Parameters are set to NaN first, so one the model's init leaves alone is seen for sure
    (comparing with the old values would not: an init can redraw what is there already).
    The fallback: ``normal(0, initializer_range)`` for matrices, 0 for biases, 1 for other
    vectors (norm scales)."""
    owner = _owner(model, layer)
    devices = [p.device for p in layer.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for param in layer.parameters():
            param.fill_(math.nan)
        for module in layer.modules():
            _unflag(module)
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                _unflag(tensor)
        if owner is not None:
            for module in reversed(list(layer.modules())):  # children first, as transformers
                owner._init_weights(module)
        config = getattr(owner, "config", None)
        std = float(getattr(config, "initializer_range", None) or 0.02)
        fallback = 0
        for name, param in layer.named_parameters():
            if not torch.isnan(param).any():
                continue
            fallback += 1
            if param.dim() >= 2:
                nn.init.normal_(param, 0.0, std)
            else:
                param.fill_(0.0 if name.rsplit(".", 1)[-1] == "bias" else 1.0)
    init = f"_init_weights of {type(owner).__name__}" if owner is not None else "normal"
    return init, fallback


@contextmanager
def reinitialised(
    loaded: LoadedModel, tower: str, indices: Sequence[int], seed: int
) -> Iterator[list[Reinitialised]]:
    """Inside, the tower's layers ``indices`` are re-initialised; outside, every parameter and
    buffer of them is back to its trained value (the model object is shared)."""
    layers = tower_layers(loaded, tower)
    saved = {
        index: [t.detach().clone() for t in (*layers[index].parameters(), *layers[index].buffers())]
        for index in indices
    }
    done = []
    try:
        for index in indices:
            init, fallback = reinitialise(
                loaded.model, layers[index], _layer_seed(seed, tower, index)
            )
            done.append(Reinitialised(tower, index, init, fallback))
        yield done
    finally:
        with torch.no_grad():
            for index, tensors in saved.items():
                live = (*layers[index].parameters(), *layers[index].buffers())
                for target, value in zip(live, tensors, strict=True):
                    target.copy_(value)


# -- comparing maps ---------------------------------------------------------------------------


def flat(values: np.ndarray) -> bool:
    """A map with one value everywhere: it ranks no patch above another."""
    return bool(np.all(values == values[0]))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of the trained model's map ``a`` and the randomised model's
    ``b`` (ties get average ranks). NaN when ``a`` is flat (nothing to keep); 0 when only
    ``b`` is: the randomised model's map lost every ranking (Mllama's cross-attention gates
    start at 0, so re-initialising a cross-attention layer cuts the image off and every image
    map goes to 0), which shares no ranking with ``a``. Such tokens are counted apart."""
    if flat(a):
        return math.nan
    if flat(b):
        return 0.0
    ra, rb = rankdata(a), rankdata(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    # one square root of the product: sqrt(s * s) is s exactly, so equal maps give 1.0 exactly
    norm = math.sqrt(float(da @ da) * float(db @ db))
    return float(np.clip(float(da @ db) / norm, -1.0, 1.0))


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Share of ``a``'s top ``fraction`` patches that are also in ``b``'s (ties: lower patch
    index first); chance is ``fraction``, which is also what a flat ``b`` gets (it has no top
    patches; NaN for a flat ``a``, as :func:`spearman`)."""
    if flat(a):
        return math.nan
    if flat(b):
        return fraction
    k = max(1, math.ceil(fraction * len(a)))
    top = [set(np.argsort(-np.asarray(m), kind="stable")[:k].tolist()) for m in (a, b)]
    return len(top[0] & top[1]) / k


@dataclass
class MapScores:
    """One map at one cascade step: per case, per answer token."""

    spearman: list[list[float]] = field(default_factory=list)
    overlap: list[list[float]] = field(default_factory=list)
    flat_tokens: int = 0  # tokens whose randomised map is flat (and the trained one is not)

    def add(self, original: np.ndarray, randomised: np.ndarray) -> None:
        pairs = list(zip(original, randomised, strict=True))
        self.spearman.append([spearman(a, b) for a, b in pairs])
        self.overlap.append([top_overlap(a, b) for a, b in pairs])
        self.flat_tokens += sum(flat(b) and not flat(a) for a, b in pairs)

    @staticmethod
    def _mean(values: list[list[float]]) -> float:
        flat = [v for row in values for v in row if not math.isnan(v)]
        return float(np.mean(flat)) if flat else math.nan

    @property
    def mean_spearman(self) -> float:
        """Over every answer token of every case (tokens whose ranking is undefined left out)."""
        return self._mean(self.spearman)

    @property
    def mean_overlap(self) -> float:
        return self._mean(self.overlap)


@dataclass
class Step:
    """One cascade step: ``depth`` top layers of ``tower`` re-initialised."""

    tower: str
    depth: int
    layers: list[int]
    init: list[str]
    maps: dict[str, MapScores] = field(default_factory=dict)


@dataclass
class SanityReport:
    steps: list[Step]
    cases: list[str]
    seed: int
    threshold: float = THRESHOLD
    unavailable: dict[str, str] = field(default_factory=dict)  # tower -> why no cascade

    def map_names(self) -> list[str]:
        return list(dict.fromkeys(name for step in self.steps for name in step.maps))

    def verdicts(self) -> dict[str, dict[str, str]]:
        """``{map: {tower: "PASS" | "FAIL" | "n/a"}}`` at each cascade's deepest step."""
        out: dict[str, dict[str, str]] = {}
        for tower in (LANGUAGE, VISION):
            steps = [s for s in self.steps if s.tower == tower]
            if not steps:
                continue
            deepest = max(steps, key=lambda s: s.depth)
            for name, scores in deepest.maps.items():
                rho = scores.mean_spearman
                verdict = "n/a" if math.isnan(rho) else "FAIL" if rho >= self.threshold else "PASS"
                out.setdefault(name, {})[tower] = verdict
        return out

    def to_json(self) -> dict[str, Any]:
        def number(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 6)

        return {
            "method": "cascading model-parameter randomisation (Adebayo et al. 2018)",
            "cases": self.cases,
            "seed": self.seed,
            "threshold": self.threshold,
            "top_fraction": TOP_FRACTION,
            "unavailable": self.unavailable,
            "verdicts": self.verdicts(),
            "steps": [
                {
                    "tower": step.tower,
                    "depth": step.depth,
                    "layers": step.layers,
                    "init": step.init,
                    "maps": {
                        name: {
                            "spearman": number(scores.mean_spearman),
                            "top_overlap": number(scores.mean_overlap),
                            "flat_tokens": scores.flat_tokens,
                            "per_token_spearman": [[number(v) for v in r] for r in scores.spearman],
                            "per_token_overlap": [[number(v) for v in r] for r in scores.overlap],
                        }
                        for name, scores in step.maps.items()
                    },
                }
                for step in self.steps
            ],
        }


def cascade_depths(loaded: LoadedModel, tower: str, wanted: int | None) -> int:
    """How many layers a cascade re-initialises: ``wanted`` (None: every layer). Raises
    ``ValueError`` when the tower has fewer layers (or none to locate)."""
    available = len(tower_layers(loaded, tower))
    if wanted is None:
        return available
    if wanted > available:
        raise ValueError(
            f"--{'vision-' if tower == VISION else ''}layers {wanted}: the model's {tower} "
            f"cascade has {available} layers"
        )
    return wanted


def sanity_check(
    loaded: LoadedModel,
    cases: Sequence[Case],
    depths: dict[str, int],
    seed: int = 0,
    progress: Progress | None = None,
    threshold: float = THRESHOLD,
) -> SanityReport:
    """The control (nothing re-initialised), then each tower's cascade (``depths``: tower ->
    how many layers, top first) on every case. The model is left as it was."""
    report = progress or (lambda stage, done, total: None)
    originals = [explanation_maps(loaded, case) for case in cases]
    plan: list[tuple[str, list[int]]] = [(CONTROL, [])]
    for tower, depth in depths.items():
        top_first = list(reversed(range(len(tower_layers(loaded, tower)))))
        plan += [(tower, top_first[:k]) for k in range(1, depth + 1)]
    steps = []
    for done_steps, (tower, indices) in enumerate(plan):
        report("cascade steps", done_steps, len(plan))
        with reinitialised(loaded, LANGUAGE if tower == CONTROL else tower, indices, seed) as done:
            step = Step(tower, len(indices), indices, [f"{d.index}: {_describe(d)}" for d in done])
            for case, original in zip(cases, originals, strict=True):
                randomised = explanation_maps(loaded, case, report)
                for name, values in original.items():
                    if name in randomised:
                        step.maps.setdefault(name, MapScores()).add(values, randomised[name])
        steps.append(step)
    report("cascade steps", len(plan), len(plan))
    return SanityReport(steps, [case.label for case in cases], seed, threshold)


def _describe(done: Reinitialised) -> str:
    return done.init + (f" (+fallback for {done.fallback} tensors)" if done.fallback else "")
