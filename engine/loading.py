"""Load a VLM for recording through the same ``Auto*`` path a hub model takes.

Recording needs attention probabilities, which fused kernels (sdpa, flash) never materialise,
so models are always loaded with ``attn_implementation="eager"``; the trace says so.

Processors that declare a video processor (LLaVA-OneVision, Qwen-VL, InternVL, SmolVLM) cannot
be built by ``AutoProcessor`` where torchvision is absent (every video processor needs it, and
torchvision's wheels do not always install next to a CPU torch). Images need no video
processor, so there the processor is assembled with :class:`StandInVideoProcessor` instead;
where torchvision is installed, ``AutoProcessor`` is used unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, ProcessorMixin
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
from transformers.utils import is_torchvision_available
from transformers.utils.hub import resolve_revision
from transformers.video_processing_utils import VideoProcessorMixin

from engine.adapters import VlmAdapter, adapter_for
from engine.checkpoint import ModelSource, check_model_source, weights_revision
from engine.errors import InputError, ModelLoadError, UnsupportedModelError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    adapter: VlmAdapter
    model_id: str  # hub id, or a local checkpoint's readable name
    revision: str  # hub commit, or a content hash of a local checkpoint's weights

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def check_device(device: str) -> torch.device:
    """``device`` parsed, if this machine has it: a missing GPU fails before any loading."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= (parsed.index or 0):
            raise InputError(
                f"--device {device}: this machine has {count} CUDA device(s) usable by torch "
                f"{torch.__version__}; use --device cpu, or a CUDA build of torch."
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {device}: MPS is not available here; use --device cpu.")
    elif parsed.type != "cpu":
        raise InputError(f"Device type {parsed.type!r} is not supported; use cpu, cuda or mps.")
    return parsed


class StandInVideoProcessor(VideoProcessorMixin):
    """Takes a video processor's place where torchvision is absent: images work, videos fail.

    It keeps the saved video settings as attributes (processors read some of them even for
    images, e.g. SmolVLM's ``num_frames`` and ``fps`` in its chat template) and saves them
    without a class name, so a folder saved with it loads the family's real video processor,
    with the same settings, wherever torchvision is installed.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> StandInVideoProcessor:
        try:
            settings, _ = cls.get_video_processor_dict(pretrained_model_name_or_path, **kwargs)
        except OSError:  # a checkpoint saved before its family had a video processor
            return cls()
        return cls(**{k: v for k, v in settings.items() if k != "video_processor_type"})

    def to_dict(self) -> dict:
        settings = super().to_dict()
        settings.pop("video_processor_type", None)
        return settings

    def preprocess(self, videos, **kwargs):
        raise InputError("Videos need torchvision, which is not installed; images work without.")


class _QuietStandIn(logging.Filter):
    """Drops transformers' deprecation warning about ``video_processor_class``, which
    :func:`video_free` sets on purpose (it is the loader's only hook for a sub-processor)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return StandInVideoProcessor.__name__ not in record.getMessage()


logging.getLogger("transformers.processing_utils").addFilter(_QuietStandIn())


def video_free(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """``processor_class`` built with :class:`StandInVideoProcessor` for its video processor.

    Only the class lookups that need torchvision are redirected; the subclass keeps the
    class name, so what it saves names the real processor class.
    """

    def module(name: str) -> type:
        if name == VideoProcessorMixin.__name__:
            return VideoProcessorMixin
        if name == StandInVideoProcessor.__name__:
            return StandInVideoProcessor
        return processor_class.get_possibly_dynamic_module(name)

    namespace = {
        "video_processor_class": StandInVideoProcessor.__name__,
        "get_possibly_dynamic_module": staticmethod(module),
    }
    return type(processor_class.__name__, (processor_class,), namespace)


def needs_video_free(processor_class: type[ProcessorMixin]) -> bool:
    """Whether ``AutoProcessor`` cannot build this class here (video processor, no torchvision)."""
    return not is_torchvision_available() and "video_processor" in processor_class.get_attributes()


def load_processor(
    target: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> ProcessorMixin:
    """The processor of a hub id or folder, through ``AutoProcessor`` where it can build it."""
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(target, **common)
    processor_class = PROCESSOR_MAPPING.get(type(config), None)
    if processor_class is not None and needs_video_free(processor_class):
        return video_free(processor_class).from_pretrained(target, **common)
    return AutoProcessor.from_pretrained(target, **common)


def load_weights(
    target: str,
    *,
    dtype: str = "float32",
    device_map: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> torch.nn.Module:
    """The model of a hub id or folder with eager attention (no checks, no device move)."""
    return AutoModelForImageTextToText.from_pretrained(
        target,
        dtype=DTYPES[dtype],
        attn_implementation="eager",
        device_map=device_map,
        use_safetensors=None if allow_pickle else True,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )


def load_model(
    model_id: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    source: ModelSource | None = None,
) -> LoadedModel:
    """Load model + processor, switched to eager attention, parameters frozen.

    ``device_map`` (e.g. ``"auto"``) spreads a large model over GPUs and wins over ``device``.
    Only safetensors weights are read unless ``allow_pickle``. ``source`` is the result of
    :func:`~engine.checkpoint.check_model_source` when the caller has checked it already.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    source = source or check_model_source(model_id, revision=revision, allow_pickle=allow_pickle)
    if device_map is None:
        check_device(device)
    if source.folder is None:  # one commit for every file of the load, and for the trace
        revision = resolve_revision(model_id, revision)
    target = model_id if source.folder is None else str(source.folder)  # "~" expanded
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        processor = load_processor(target, **common)
        model = load_weights(
            target, dtype=dtype, device_map=device_map, allow_pickle=allow_pickle, **common
        )
    except Exception as error:  # a damaged folder makes transformers raise almost any type
        raise ModelLoadError(
            f"Could not load {model_id!r} as a vision-language model: "
            f"{type(error).__name__}: {error}\n"
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
    if source.folder is not None:
        return LoadedModel(model, processor, adapter, source.name, weights_revision(source.weights))
    commit = getattr(revision, "resolved", None) or revision or "main"
    return LoadedModel(model, processor, adapter, model_id, commit)
