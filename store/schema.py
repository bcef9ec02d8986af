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

# 2: relevancy holds the seed tool's "all" and ours as ``llm_through_vision`` (1 had only ours,
# named "all"); format-1 files stay readable.
FORMAT_VERSION = 2


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
    """Relevancy modes (Chefer et al. 2021), named as the seed tool (IntelLabs LVLM-Interpret)
    defines them; ``llm_through_vision`` is this project's own (close to, not equal to, the
    seed's unshown ``all_v2``). ``definition`` is the text users see beside each map."""

    LLM = "llm"
    VISION = "vision"
    ALL = "all"
    LLM_THROUGH_VISION = "llm_through_vision"

    @property
    def label(self) -> str:
        return _MODE_LABELS[self]

    @property
    def definition(self) -> str:
        return _MODE_DEFINITIONS[self]


_MODE_LABELS = {
    RelevancyMode.LLM: "LLM",
    RelevancyMode.VISION: "vision tower",
    RelevancyMode.ALL: "all (seed)",
    RelevancyMode.LLM_THROUGH_VISION: "LLM through vision",
}
_MODE_DEFINITIONS = {
    RelevancyMode.LLM: (
        "The answer token's row of the language model's relevancy matrix (minus the identity), "
        "as shares of its total: how much each input token mattered, read at the image tokens."
    ),
    RelevancyMode.VISION: (
        "The vision tower's own relevancy, read at its CLS row and weighted by the answer "
        "token's gradients: which patches the tower's summary relied on."
    ),
    RelevancyMode.ALL: (
        "The seed tool's 'all': the language model's image-by-image relevancy block pushed "
        "through the vision tower, read at the CLS row (R_vit[0, 1:] · R_LM[img, img]). It does "
        "not use the answer token's own row, and stays close to the vision map when that block "
        "is near the identity."
    ),
    RelevancyMode.LLM_THROUGH_VISION: (
        "The answer token's own LM relevancy on the image tokens carried through the vision "
        "tower's patch rows to the input patches (r_img · R_vit), keeping the image's share of "
        "the LM relevancy. This project's own mode; the seed tool has no shown equivalent."
    ),
}


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
    """Relevancy (Chefer et al.) per answer token, in every :class:`RelevancyMode`.

    ``llm`` keeps the whole relevancy row over the sequence so text relevancy and image
    maps come from one array; image maps are ``llm[:, image_positions]`` reshaped to the grid.
    ``all`` is ``None`` in traces of format 1, recorded before the seed's definition was added;
    their "all" map is what is now called ``llm_through_vision``.
    """

    llm: np.ndarray  # [N, T] float32, row P-1+k of R for answer token k
    vision: np.ndarray  # [N, G] float32, vision-tower relevancy (CLS row) for answer token k
    all: np.ndarray | None  # [N, G] float32, the seed's "all"
    llm_through_vision: np.ndarray  # [N, G] float32, ours: r_img · R_vit

    def map(self, mode: RelevancyMode) -> np.ndarray | None:
        """The stored array of ``mode`` ([N, T] for llm, [N, G] otherwise), None if absent."""
        return getattr(self, RelevancyMode(mode).value)

    @property
    def modes(self) -> list[RelevancyMode]:
        """The modes this trace holds, in the enum's order."""
        return [mode for mode in RelevancyMode if self.map(mode) is not None]

    def on_patches(self, mode: RelevancyMode, tokens: TokenTable, num_patches: int) -> np.ndarray:
        """[N, G] map of ``mode`` per image patch (row-major); ``llm`` is summed over the image
        tokens that read each patch. Raises ``KeyError`` when the trace lacks ``mode``."""
        values = self.map(mode)
        if values is None:
            raise KeyError(mode)
        if mode is not RelevancyMode.LLM:
            return values
        positions = tokens.image_positions
        patches = np.asarray(tokens.image_patch)[positions]
        on_patch = patches >= 0
        grid = np.zeros((values.shape[0], num_patches), dtype=values.dtype)
        np.add.at(grid.T, patches[on_patch], values[:, positions[on_patch]].T)
        return grid

    @property
    def legacy_note(self) -> str | None:
        """Why a mode is missing, for traces recorded before the seed's "all" was added."""
        if self.all is not None:
            return None
        return (
            "This trace was recorded before lvlm-interpret stored the seed tool's 'all' map "
            "(trace format 1): the map it called 'all' is the 'llm_through_vision' definition. "
            "Record it again to get the seed's 'all'."
        )


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
