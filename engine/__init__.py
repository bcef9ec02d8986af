"""The offline recorder: load a VLM, answer a question about an image, record the full trace.

    from engine import load_model, load_image, record
    loaded = load_model("llava-hf/llava-1.5-7b-hf", dtype="float16", device="cuda")
    trace = record(loaded, load_image("photo.jpg"), "What color is the car?")

Names resolve lazily, so importing a torch-free part (``engine.demo.world``, the demo's plain
data, which the dashboard reads) never pulls in torch through this package's ``__init__``.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "load_model": "engine.loading",
    "LoadedModel": "engine.loading",
    "load_image": "engine.inputs",
    "record": "engine.recorder",
    "RecordOptions": "engine.recorder",
    "EngineError": "engine.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
