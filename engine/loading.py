"""Load a VLM for recording through the same ``Auto*`` path a hub model takes.

Recording needs attention probabilities, which fused kernels (sdpa, flash) never materialise,
so models are always loaded with ``attn_implementation="eager"``; the trace says so.

Processors that declare a video processor (LLaVA-OneVision, Qwen-VL, InternVL, SmolVLM) cannot
be built by ``AutoProcessor`` where torchvision is absent (every video processor needs it, and
torchvision's wheels do not always install next to a CPU torch). Images need no video
processor, so there the processor is assembled with :class:`StandInVideoProcessor` instead;
where torchvision is installed, ``AutoProcessor`` is used unchanged.

Before any weights load, the checkpoint's ``config.json`` (downloaded alone for a hub id) names
its model type, and a type no adapter serves is refused then. A hub id is pinned to the commit
its revision names at that moment, so every file of the load comes from one commit and the
trace names that commit, never a branch.

Quantised weights (bitsandbytes, 4 or 8 bits) apply to the language model only: the vision
tower, the projector and the LM head keep the chosen dtype. The attention recorded is then the
quantised model's own, close to but not the same as the full-precision model's.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.constants import is_offline_mode
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BitsAndBytesConfig,
    PretrainedConfig,
    ProcessorMixin,
)
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
from transformers.utils import is_torchvision_available
from transformers.video_processing_utils import VideoProcessorMixin

from engine.adapters import VlmAdapter, adapter_class
from engine.checkpoint import ModelSource, check_model_source, pinned, weights_revision
from engine.errors import InputError, ModelLoadError, UnsupportedModelError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZE_BITS = {"4bit": 4, "8bit": 8}
# accelerate's placement strategies; any other device map is one device ("cuda:1").
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
QUANTIZED_ATTENTION = (
    "The language model's linear weights are quantised: its attention and relevancy are the "
    "quantised model's own, close to but not equal to the full-precision model's. The vision "
    "tower, the projector and the LM head keep full precision."
)


@dataclass(frozen=True)
class Quantization:
    """bitsandbytes quantisation of the language model; everything else stays unquantised."""

    bits: int  # 4 (NF4) or 8 (LLM.int8)
    dtype: str  # compute dtype of 4-bit layers, and the dtype of every unquantised module
    unquantised: tuple[str, ...]  # module names kept in ``dtype`` (see unquantised_modules)

    def config(self) -> BitsAndBytesConfig:
        skips = list(self.unquantised)
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skips)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=DTYPES[self.dtype],
            llm_int8_skip_modules=skips,
        )

    def describe(self) -> dict[str, Any]:
        """What a trace says about it (``TraceInfo.extra["loading"]["quantization"]``)."""
        return {
            "method": "bitsandbytes",
            "bits": self.bits,
            "scheme": "nf4" if self.bits == 4 else "llm.int8",
            "unquantised": list(self.unquantised),
            "approximate": QUANTIZED_ATTENTION,
        }


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    adapter: VlmAdapter
    model_id: str  # hub id, or a local checkpoint's readable name
    revision: str  # hub commit, or a content hash of a local checkpoint's weights
    model_type: str = ""
    dtype: str = "float32"
    device_map: str | None = None  # as asked for ("auto" ...); None: one device
    quantization: Quantization | None = None
    trust_remote_code: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def provenance(self) -> dict[str, Any]:
        """How the weights were loaded, for ``TraceInfo.extra["loading"]``: one checkpoint
        loaded in another dtype or quantised is another measurement of its attention."""
        devices = sorted({str(p.device) for p in self.model.parameters()})
        return {
            "model_type": self.model_type,
            "dtype": self.dtype,
            "devices": devices,
            "device_map": self.device_map,
            "quantization": self.quantization.describe() if self.quantization else None,
            "trust_remote_code": self.trust_remote_code,
        }


def check_device(device: str, option: str = "--device") -> torch.device:
    """``device`` parsed, if this machine has it: a missing GPU fails before any loading."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= (parsed.index or 0):
            raise InputError(
                f"{option} {device}: this machine has {count} CUDA device(s) usable by torch "
                f"{torch.__version__}; use --device cpu, or a CUDA build of torch."
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"{option} {device}: MPS is not available here; use --device cpu.")
    elif parsed.type != "cpu":
        raise InputError(f"Device type {parsed.type!r} is not supported; use cpu, cuda or mps.")
    return parsed


def check_load_options(
    *, device: str = "cpu", device_map: str | None = None, quantize: str | None = None
) -> None:
    """Where and how the weights would load, usable on this machine: a missing GPU or package
    fails here, before a multi-gigabyte download or load."""
    if quantize is not None and quantize not in QUANTIZE_BITS:
        raise InputError(f"Unknown quantisation {quantize!r}; choose {' or '.join(QUANTIZE_BITS)}.")
    if device_map is None:
        check_device(device)
    elif device_map not in DEVICE_MAP_STRATEGIES:
        check_device(device_map, "--device-map")  # one device, e.g. "cuda:1"
    needs = ("bitsandbytes", "accelerate") if quantize else ("accelerate",) if device_map else ()
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        what = f"--quantize {quantize}" if quantize else f"--device-map {device_map}"
        raise InputError(
            f"{what} needs {' and '.join(missing)}, not installed here: "
            f"pip install {' '.join(missing)}"
        )


def resolve_source(source: ModelSource, revision: str | None = None) -> ModelSource:
    """``source`` pinned to the commit that ``revision`` (default branch: None) names now, with
    its ``config.json`` read; a folder, or a source pinned already, is returned as it is.

    Only ``config.json`` is downloaded. Offline (``HF_HUB_OFFLINE=1``, or no network) the
    commit comes from the local cache's ``refs/``; a hub id that resolves nowhere is refused
    instead of being recorded under a branch name that moves.
    """
    if source.folder is not None or source.commit is not None:
        return source
    model = source.text
    try:
        resolved = (
            HfApi()
            .resolve_revision(model, revision=revision, local_files_only=is_offline_mode())
            .resolved
        )
        config_file = hf_hub_download(model, "config.json", revision=resolved)
    except RevisionNotFoundError:
        raise InputError(f"--revision {revision!r} does not exist in {model}.") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{model} is not a model on the Hugging Face hub, or it is private or gated: check "
            "the id, or log in (hf auth login) with access to it."
        ) from None
    except (RevisionResolutionError, LocalEntryNotFoundError):
        at = f" at revision {revision!r}" if revision else ""
        raise ModelLoadError(
            f"{model}{at} is neither reachable on the hub nor in the local cache: connect to "
            "the network once, or give a local checkpoint folder."
        ) from None
    except EntryNotFoundError:
        raise ModelLoadError(f"{model} has no config.json: not a transformers model.") from None
    except (HfHubHTTPError, OSError) as error:
        raise ModelLoadError(f"Could not read {model}'s config from the hub: {error}") from None
    return pinned(source, Path(config_file), resolved)


def check_family(source: ModelSource) -> type[VlmAdapter]:
    """The adapter class that serves ``source`` (resolved), refused before any weights load."""
    if source.model_type is None:
        raise UnsupportedModelError(
            f"{source.text}'s config.json names no model_type, so no adapter can be chosen."
        )
    return adapter_class(source.model_type)


def unquantised_modules(config: PretrainedConfig, trust_remote_code: bool = False) -> list[str]:
    """Names of every module outside the language model (vision tower, projector, LM head),
    from a weightless skeleton of the architecture: what quantisation must leave alone so
    vision attention and relevancy keep full precision."""
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(
            config, trust_remote_code=trust_remote_code
        )
    decoder = skeleton.get_decoder()
    path = next(name for name, module in skeleton.named_modules() if module is decoder)
    skips, module, prefix = [], skeleton, ""
    for part in path.split("."):
        skips += [prefix + name for name, _ in module.named_children() if name != part]
        module, prefix = getattr(module, part), f"{prefix}{part}."
    return sorted(skips)


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
    device_map: str | dict[str, str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    quantization: Quantization | None = None,
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
        quantization_config=quantization.config() if quantization else None,
    )


def load_model(
    model_id: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | None = None,
    quantize: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    source: ModelSource | None = None,
) -> LoadedModel:
    """Load model + processor, switched to eager attention, parameters frozen.

    ``device_map`` (e.g. ``"auto"``) spreads a large model over GPUs and wins over ``device``.
    ``quantize`` ("4bit", "8bit") loads the language model through bitsandbytes. Only
    safetensors weights are read unless ``allow_pickle``; the checkpoint's own Python code
    runs only with ``trust_remote_code``. ``source`` is the result of
    :func:`~engine.checkpoint.check_model_source` (or :func:`resolve_source`) when the
    caller has checked it already. The model type is checked before any weights load.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    source = source or check_model_source(model_id, revision=revision, allow_pickle=allow_pickle)
    check_load_options(device=device, device_map=device_map, quantize=quantize)
    source = resolve_source(source, revision)
    adapter_cls = check_family(source)
    target = model_id if source.folder is None else str(source.folder)  # "~" expanded
    common = {"revision": source.commit, "trust_remote_code": trust_remote_code}
    quantization = None
    placement = device_map
    try:
        processor = load_processor(target, **common)
        if quantize is not None:
            config = AutoConfig.from_pretrained(target, **common)
            skips = unquantised_modules(config, trust_remote_code)
            quantization = Quantization(QUANTIZE_BITS[quantize], dtype, tuple(skips))
            placement = device_map or {"": device}  # quantised weights cannot be moved later
        model = load_weights(
            target,
            dtype=dtype,
            device_map=placement,
            allow_pickle=allow_pickle,
            quantization=quantization,
            **common,
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
    if placement is None:
        model.to(device)
    model.eval().requires_grad_(False)
    local = source.folder is not None
    return LoadedModel(
        model,
        processor,
        adapter_cls(model, processor),
        source.name if local else model_id,
        weights_revision(source.weights) if local else source.commit,
        model_type=source.model_type,
        dtype=dtype,
        device_map=device_map,
        quantization=quantization,
        trust_remote_code=trust_remote_code,
    )
