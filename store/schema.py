"""The trace schema: the one contract between the engine (writer) and the dashboard (reader).

A trace is one recording: one image + one prompt -> one generated answer, with every tensor
needed to explain it. The engine builds a :class:`Trace` in memory; the store persists it
(HDF5 for tensors, SQL for the index) and hands it back lazily.

Positions and dimension names used throughout
---------------------------------------------
``T``  sequence length: prompt tokens ``P`` followed by answer tokens ``N`` (``T = P + N``).
``L``/``H``  language-model layers / heads.  ``Lv``/``Hv``  vision-tower layers / heads.
``V``  vision-tower sequence length (patches, plus a CLS token when the tower has one).
``G``  image patches that became LM image tokens (``grid_rows * grid_cols``).

Answer token ``k`` (0-based) was *produced* by the query at position ``P - 1 + k``; that row of
an attention or relevancy matrix is what "the attention of answer token k" means everywhere.
"""

from __future__ import annotations

import datetime as _dt
import enum
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

FORMAT_VERSION = 1


def new_trace_id() -> str:
    """A fresh trace id: 32 lowercase hex digits (the only form the store accepts)."""
    return uuid.uuid4().hex


def utc_now() -> str:
    """Current time as the ISO-8601 UTC string ``TraceInfo.created_at`` expects."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


class TokenRole(enum.IntEnum):
    """What a position in the sequence is; stored as int8 codes."""

    TEXT = 0  # system prompt, chat template and user prompt text
    IMAGE = 1  # a placeholder token that was replaced by an image feature
    ANSWER = 2  # a generated token


class RelevancyMode(str, enum.Enum):
    """The three relevancy modes of the seed tool (Chefer et al. 2021)."""

    LLM = "llm"  # relevancy propagated through the language model only
    VISION = "vision"  # relevancy of the vision tower's own attention (CLS row)
    ALL = "all"  # LM relevancy on image tokens carried through the vision tower to patches


@dataclass
class GenerationSettings:
    """How the answer was generated; enough to reproduce it."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k_logged: int = 5
    seed: int = 0


@dataclass
class TraceInfo:
    """Searchable metadata and provenance. Every field lands in the SQL index."""

    trace_id: str
    model_id: str  # hub id or local path, as given by the user
    model_revision: str  # commit hash, checkpoint name or content hash of the weights
    prompt: str  # the user's prompt text, without the chat template
    answer: str  # decoded answer text
    image_name: str
    image_sha256: str
    created_at: str  # ISO-8601, UTC
    adapter: str = "llava"
    attn_implementation: str = "eager"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    reference_answer: str | None = None
    correct: bool | None = None
    tags: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # headline numbers, filterable
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-safe: ground truth, versions...

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the form stored in trace files and the index)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraceInfo:
        """Inverse of :meth:`to_dict`; unknown keys (from newer writers) are ignored."""
        values = {k: v for k, v in data.items() if k in _INFO_FIELDS}
        gen = values.get("generation") or {}
        values["generation"] = GenerationSettings(
            **{k: v for k, v in gen.items() if k in _GENERATION_FIELDS}
        )
        return cls(**values)


_INFO_FIELDS = frozenset(f.name for f in fields(TraceInfo))
_GENERATION_FIELDS = frozenset(f.name for f in fields(GenerationSettings))


@dataclass
class TokenTable:
    """Every position of the sequence, prompt and answer alike (length ``T``)."""

    ids: np.ndarray  # [T] int64
    text: list[str]  # [T] decoded text of each token
    roles: np.ndarray  # [T] int8, TokenRole codes
    word_ids: np.ndarray  # [T] int32, word index unique across the sequence; -1 for image tokens
    image_patch: np.ndarray  # [T] int32, index into the patch grid (row-major) or -1
    prompt_length: int  # P

    @property
    def answer_length(self) -> int:
        return len(self.text) - self.prompt_length

    @property
    def image_positions(self) -> np.ndarray:
        return np.flatnonzero(self.roles == TokenRole.IMAGE)


@dataclass
class ImageGeometry:
    """Where LM image tokens sit on the image. Nothing assumes a square or 24x24 grid."""

    grid_rows: int
    grid_cols: int
    processed: np.ndarray  # [h, w, 3] uint8, the image as the vision tower saw it
    original_size: tuple[int, int]  # (width, height) of the user's file
    patch_boxes: np.ndarray  # [G, 4] float32 (x0, y0, x1, y1) in original-image pixels
    vision_has_cls: bool = True  # vision sequence = [CLS] + patches when True


@dataclass
class TopK:
    """Per answer step, the most likely next tokens (length ``N``)."""

    ids: np.ndarray  # [N, k] int64
    probs: np.ndarray  # [N, k] float32
    text: list[list[str]]  # [N][k]
    chosen_prob: np.ndarray  # [N] float32, probability of the token actually generated


@dataclass
class Relevancy:
    """Relevancy (Chefer et al.) per answer token, in the three modes.

    ``llm`` keeps the whole relevancy row over the sequence so text relevancy and image
    maps come from one array; image maps are ``llm[:, image_positions]`` reshaped to the grid.
    """

    llm: np.ndarray  # [N, T] float32, row P-1+k of R for answer token k
    vision: np.ndarray  # [N, G] float32, vision-tower relevancy (CLS row) for answer token k
    all: np.ndarray  # [N, G] float32


@dataclass
class Summaries:
    """Small derived arrays the dashboard needs without touching the full tensors."""

    attention_shares: np.ndarray  # [L, H, N, 3] float32: share on image / text / earlier answer
    head_image_attention: np.ndarray  # [L, H] float32: mean image share over answer tokens


@dataclass
class Trace:
    """One complete recording, as written by the engine and read back by the store."""

    info: TraceInfo
    tokens: TokenTable
    image: ImageGeometry
    top_k: TopK
    lm_attention: np.ndarray  # [L, H, T, T] float16, lower-triangular, rows sum to 1
    vision_attention: np.ndarray | None  # [Lv, Hv, V, V] float16
    relevancy: Relevancy | None
    summaries: Summaries
