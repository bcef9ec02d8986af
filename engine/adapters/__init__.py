"""Model-family adapters, found by ``config.model_type``; importing registers them."""

from engine.adapters import aya_vision as _aya_vision  # noqa: F401  (registers Aya Vision)
from engine.adapters import gemma3 as _gemma3  # noqa: F401  (registers Gemma3Adapter)
from engine.adapters import idefics3 as _idefics3  # noqa: F401  (registers Idefics3, SmolVLM)
from engine.adapters import internvl as _internvl  # noqa: F401  (registers InternVL)
from engine.adapters import llava as _llava  # noqa: F401  (registers LlavaAdapter)
from engine.adapters import llava_next as _llava_next  # noqa: F401  (registers LLaVA-NeXT)
from engine.adapters import llava_onevision as _onevision  # noqa: F401  (registers OneVision)
from engine.adapters import mllama as _mllama  # noqa: F401  (registers MllamaAdapter)
from engine.adapters import paligemma as _paligemma  # noqa: F401  (registers PaliGemma)
from engine.adapters import qwen_vl as _qwen_vl  # noqa: F401  (registers the Qwen-VL adapters)
from engine.adapters.base import (
    ADD_A_FAMILY,
    Placement,
    VisionPiece,
    VlmAdapter,
    adapter_class,
    adapter_for,
    list_adapters,
    register_adapter,
    served_model_types,
)

__all__ = [
    "ADD_A_FAMILY",
    "Placement",
    "VisionPiece",
    "VlmAdapter",
    "adapter_class",
    "adapter_for",
    "list_adapters",
    "register_adapter",
    "served_model_types",
]
