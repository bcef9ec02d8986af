"""Shared fixtures: the shipped demo checkpoint and a tiny random-initialised LLaVA."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch threads collapse on 2 busy cores

from pathlib import Path

import pytest

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "engine" / "demo" / "checkpoint"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests run beside each other on 2 cores: one intra-op thread each (as CI measures)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    return DEMO_CHECKPOINT


@pytest.fixture(scope="session")
def demo_model(demo_checkpoint):
    from engine.loading import load_model

    return load_model(str(demo_checkpoint))


@pytest.fixture(scope="session")
def random_llava_dir(tmp_path_factory) -> Path:
    """A real LlavaForConditionalGeneration with random weights, saved like a hub checkpoint."""
    import torch

    from engine.demo.architecture import build_model, build_processor, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    path = tmp_path_factory.mktemp("random-llava")
    build_model(tokenizer).save_pretrained(path)
    build_processor(tokenizer).save_pretrained(path)
    return path
