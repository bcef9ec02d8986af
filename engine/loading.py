"""Load a VLM for recording through the same ``Auto*`` path a hub model takes.

Recording needs attention probabilities, which fused kernels (sdpa, flash) never materialise,
so models are always loaded with ``attn_implementation="eager"``; the trace says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from engine.adapters import VlmAdapter, adapter_for
from engine.errors import ModelLoadError, UnsupportedModelError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    adapter: VlmAdapter
    model_id: str
    revision: str  # hub commit, or a content hash of a local checkpoint's weights

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _local_revision(path: Path) -> str:
    """A short content hash of the weight files, so two checkpoints in one folder differ."""
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def load_model(
    model_id: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load model + processor, switched to eager attention, parameters frozen.

    ``device_map`` (e.g. ``"auto"``) spreads a large model over GPUs and wins over ``device``.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        processor = AutoProcessor.from_pretrained(model_id, **common)
        model = AutoModelForImageTextToText.from_pretrained(
            model_id,
            dtype=DTYPES[dtype],
            attn_implementation="eager",
            device_map=device_map,
            **common,
        )
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(
            f"Could not load {model_id!r} as a vision-language model: {error}\n"
            "Give a local checkpoint folder or a Hugging Face hub id of an image-text-to-text "
            "model (e.g. llava-hf/llava-1.5-7b-hf); hub ids need network access or a local cache."
        ) from error
    if not hasattr(processor, "image_processor"):
        raise UnsupportedModelError(
            f"{model_id!r} has no image processor: it is not a vision-language model."
        )
    if device_map is None:
        model.to(device)
    model.eval().requires_grad_(False)
    adapter = adapter_for(model, processor)
    local = Path(model_id)
    resolved = revision or (_local_revision(local) if local.is_dir() else "main")
    return LoadedModel(model, processor, adapter, model_id, resolved)
