"""Fast relevancy equals the slow paper-formula reference, on the demo model."""

import random

import numpy as np
import pytest
import torch

from engine.demo.world import ask, make_scene
from engine.inputs import load_image
from engine.recorder import record
from engine.relevancy import propagate_row
from store import RelevancyMode
from tests.engine.relevancy_reference import reference_relevancy


@pytest.mark.parametrize(("seed", "kind"), [(11, "colour"), (12, "position"), (13, "existence")])
def test_relevancy_matches_reference(demo_model, seed, kind):
    scene = make_scene(seed)
    question = ask(scene, kind, random.Random(seed))
    trace = record(demo_model, load_image(scene.image, "scene.png"), question.text)
    inputs = demo_model.adapter.build_inputs([load_image(scene.image, "s.png")], question.text)
    pixels = inputs["pixel_values"]
    expected = reference_relevancy(
        demo_model.model,
        trace.tokens.ids,
        pixels,
        trace.tokens.prompt_length,
        demo_model.adapter.image_token_id,
    )
    for mode, reference in zip(RelevancyMode, expected, strict=True):
        ours = trace.relevancy.map(mode)
        assert ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, atol=1e-5, err_msg=mode)
    # Maps are shares of the explained token's relevance; the image's part is in (0, 1).
    np.testing.assert_allclose(trace.relevancy.llm.sum(-1), 1.0, atol=1e-5)
    image_share = trace.relevancy.llm[:, trace.tokens.image_positions].sum(-1)
    assert np.all((image_share > 0) & (image_share < 1))
    np.testing.assert_allclose(trace.relevancy.llm_through_vision.sum(-1), image_share, rtol=1e-4)
    # The seed's "all" does not read the answer token's row: it differs from ours.
    assert not np.allclose(trace.relevancy.all, trace.relevancy.llm_through_vision, atol=1e-3)


def test_row_propagation_equals_full_matrix_product():
    generator = torch.Generator().manual_seed(0)
    size = 12
    cams = [torch.rand(size, size, generator=generator).tril() / size for _ in range(5)]
    full = torch.eye(size, dtype=torch.float64)
    for cam in cams:  # eq. 6, layer by layer
        full = full + cam.double() @ full
    for row in (0, 5, size - 1):
        start = torch.zeros(size)
        start[row] = 1
        expected = full[row] - start.double()
        np.testing.assert_allclose(propagate_row(start, cams).double(), expected, atol=1e-6)
