"""The trace schema: the one contract between the engine (writer) and the dashboard (reader).

A trace is one recording: one or more images + one prompt -> one generated answer, with every
tensor needed to explain it. The engine builds a :class:`Trace` in memory; the store persists
it (HDF5 for tensors, SQL for the index) and hands it back lazily.

Positions and dimension names used throughout
---------------------------------------------
``T``  sequence length: prompt tokens ``P`` followed by answer tokens ``N`` (``T = P + N``).
``L``/``H``  language-model layers / heads.  ``Lv``/``Hv``  vision-tower layers / heads.
``G``  image patches: every patch of every tile of every image, tile by tile, each tile's
patches row-major (see :class:`ImageGeometry`).
``V``  length of one vision-tower sequence (a tile, or a whole image for Qwen-VL and Mllama),
including tokens that read no patch (CLS, registers, padding).

Answer token ``k`` (0-based) was *produced* by the query at position ``P - 1 + k``
(:func:`answer_row`); that row of an attention or relevancy matrix is what "the attention of
answer token k" means everywhere.

The image geometry is model-agnostic: images -> tiles (crops with their box in the original
image) -> patches, and a sparse, weighted map from LM tokens to patches. It covers one patch
per token (LLaVA-1.5), many patches per token (2x2 merges, pixel shuffle, pooling), shrunk
grids (weights), tokens that read no pixels (row breaks) and families whose image never enters
the LM sequence (Mllama: the map is over cross-attention keys instead).
"""

from __future__ import annotations

import datetime as _dt
import enum
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .views import AttentionView

# 2: relevancy holds the seed tool's "all" and ours as ``llm_through_vision`` (1 had only ours,
# named "all"). 3: model-agnostic image geometry (images, tiles, weighted token -> patch map),
# vision attention per vision sequence, cross-attention, recording policies. Formats 1 and 2
# stay readable (read as one image, one tile).
FORMAT_VERSION = 3


def answer_row(prompt_length: int, k: int) -> int:
    """The query row that produced answer token ``k``: ``P - 1 + k`` (see the module doc)."""
    return prompt_length - 1 + k


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
        "The vision tower's own relevancy, weighted by the answer token's gradients, read at "
        "its summary row: the CLS row where the tower has a CLS token (CLIP), else the mean of "
        "the rows of the vision tokens the language model reads (SigLIP, Qwen-VL and other "
        "towers without CLS): which patches the tower's output relied on."
    ),
    RelevancyMode.ALL: (
        "The seed tool's 'all': the language model's image-by-image relevancy block pushed "
        "through the vision tower, read at its summary row (R_vit[s, patches] · R_LM[img, img],"
        " s the CLS row, or the mean row of a tower without CLS). It does not use the answer "
        "token's own row, and stays close to the vision map when that block is near the "
        "identity."
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


@dataclass(frozen=True)
class Note:
    """An analyst's note on a trace, optionally on one token or one image region.

    ``token_position`` indexes the trace's token table; ``region`` is ``(image, (x0, y0, x1,
    y1))`` in the original image's pixels (the same frame as ``ImageGeometry`` tiles).
    """

    note_id: int
    trace_id: str
    text: str
    created_at: str  # ISO-8601, UTC
    token_position: int | None = None
    region: tuple[int, tuple[float, float, float, float]] | None = None
    author: str | None = None


_INFO_FIELDS = frozenset(f.name for f in fields(TraceInfo))
_GENERATION_FIELDS = frozenset(f.name for f in fields(GenerationSettings))


@dataclass
class TokenTable:
    """Every position of the sequence, prompt and answer alike (length ``T``)."""

    ids: np.ndarray  # [T] int64
    text: list[str]  # [T] decoded text of each token
    roles: np.ndarray  # [T] int8, TokenRole codes
    word_ids: np.ndarray  # [T] int32, word index unique across the sequence; -1 for image tokens
    # [T] int32: the patch giving each image token most of its weight (a convenience for
    # one-patch-per-token views; ImageGeometry.token_patches is the whole map), or -1
    image_patch: np.ndarray
    prompt_length: int  # P
    # [T] int32: which image an image token belongs to (tokens that read no pixels, such as
    # row breaks, included), -1 for text. Formats 1-2 hold one image: derived from the roles.
    image_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image_index is None:
            on_image = np.asarray(self.roles) == TokenRole.IMAGE
            self.image_index = np.where(on_image, 0, -1).astype(np.int32)

    @property
    def answer_length(self) -> int:
        return len(self.text) - self.prompt_length

    @property
    def image_positions(self) -> np.ndarray:
        return np.flatnonzero(self.roles == TokenRole.IMAGE)

    def answer_row(self, k: int) -> int:
        """The query row that produced answer token ``k``."""
        return answer_row(self.prompt_length, k)


@dataclass
class PatchMap:
    """A sparse, weighted map from rows (sequence positions, or cross-attention key rows) to
    patches: row ``rows[i]`` reads patch ``patches[i]`` with weight ``weights[i]``; each row's
    weights sum to 1. A row may read many patches (2x2 merges, pixel shuffle, pooling, shrunk
    grids); rows absent from the map read no pixels (row breaks, a CLS feature)."""

    rows: np.ndarray  # [M] int32
    patches: np.ndarray  # [M] int32
    weights: np.ndarray  # [M] float32

    @classmethod
    def one_to_one(cls, rows: np.ndarray, patches: np.ndarray) -> PatchMap:
        """Row ``rows[i]`` reads only patch ``patches[i]`` (``-1``: reads none)."""
        rows, patches = np.asarray(rows, np.int32), np.asarray(patches, np.int32)
        keep = patches >= 0
        return cls(rows[keep], patches[keep], np.ones(int(keep.sum()), np.float32))

    def matrix(self, rows: np.ndarray, num_patches: int) -> np.ndarray:
        """[len(rows), G] float32: the map restricted to ``rows``, as a dense matrix."""
        rows = np.asarray(rows, np.int64)
        lookup = np.full(max(int(self.rows.max(initial=-1)), int(rows.max(initial=-1))) + 1, -1)
        lookup[rows] = np.arange(len(rows))
        out = np.zeros((len(rows), num_patches), np.float32)
        at = lookup[self.rows]
        kept = at >= 0
        np.add.at(out, (at[kept], self.patches[kept]), self.weights[kept])
        return out

    def main_patch(self, length: int) -> np.ndarray:
        """[length] int32: each row's heaviest patch (the first on ties), -1 where none."""
        best = np.full(length, -1, np.int32)
        order = np.lexsort((-np.arange(len(self.rows)), self.weights))  # heaviest, first, last
        best[self.rows[order]] = self.patches[order]
        return best


@dataclass
class SourceImage:
    """One image of the prompt, as the user gave it."""

    name: str
    sha256: str
    size: tuple[int, int]  # (width, height) of the user's file; boxes are in these pixels
    pixels: np.ndarray  # [h, w, 3] uint8, the image (downscaled for display when very large)


@dataclass
class Tile:
    """One crop the vision tower saw (the whole image for single-view families)."""

    image: int  # index into ImageGeometry.images
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) it covers, in original pixels
    rows: int  # its patch grid
    cols: int
    kind: str = "full"  # "full" (the whole image), "crop", "global" (a thumbnail beside crops)


@dataclass
class ImageGeometry:
    """Where the model's image features come from: images -> tiles -> patches, and which
    patches each LM image token (or cross-attention key) reads.

    Patches are numbered tile by tile (``patch_tile`` is non-decreasing), each tile's patches
    row-major on its ``rows x cols`` grid. ``vision_sequences`` lists, for each sequence the
    vision tower attended over (a tile, or a whole image), the patch of each of its tokens
    (``-1`` for CLS, registers or padding); vision attention and vision relevancy use it.
    """

    images: list[SourceImage]
    tiles: list[Tile]
    patch_tile: np.ndarray  # [G] int32
    patch_boxes: np.ndarray  # [G, 4] float32 (x0, y0, x1, y1) in its image's original pixels
    token_patches: PatchMap  # LM sequence positions -> patches
    vision_sequences: list[np.ndarray]  # per vision sequence: [V] int32 patch of each token
    vision_summary: str = "cls"  # "cls" | "mean": the row vision relevancy reads
    key_patches: PatchMap | None = None  # cross-attention key rows -> patches (Mllama)
    processed: np.ndarray | None = None  # formats 1-2 only: [h, w, 3] the processed image

    @property
    def num_patches(self) -> int:
        return len(self.patch_tile)

    def tile_patches(self, tile: int) -> slice:
        """The patches of ``tile``, a contiguous run of patch indices."""
        start = sum(t.rows * t.cols for t in self.tiles[:tile])
        return slice(start, start + self.tiles[tile].rows * self.tiles[tile].cols)

    @property
    def single_grid(self) -> tuple[int, int] | None:
        """(rows, cols) when the geometry is one tile, else None."""
        if len(self.tiles) != 1:
            return None
        return self.tiles[0].rows, self.tiles[0].cols

    @property
    def grid_rows(self) -> int:
        """Rows of the only tile, for views drawn on one grid; raises on several tiles."""
        return self._one_grid()[0]

    @property
    def grid_cols(self) -> int:
        return self._one_grid()[1]

    def _one_grid(self) -> tuple[int, int]:
        grid = self.single_grid
        if grid is None:
            raise ValueError(f"this trace has {len(self.tiles)} tiles, not one patch grid")
        return grid

    @property
    def original_size(self) -> tuple[int, int]:
        """(width, height) of the first image."""
        return self.images[0].size

    @property
    def vision_has_cls(self) -> bool:
        return self.vision_summary == "cls"


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
    maps come from one array (:meth:`on_patches` spreads it onto the patches); the other
    modes are stored per patch ([N, G]).
    ``all`` is ``None`` in traces of format 1, recorded before the seed's definition was added;
    their "all" map is what is now called ``llm_through_vision``.
    """

    llm: np.ndarray  # [N, T] float32, row P-1+k of R for answer token k
    vision: np.ndarray  # [N, G] float32, vision-tower relevancy (summary row), answer token k
    all: np.ndarray | None  # [N, G] float32, the seed's "all" (None where it does not apply)
    llm_through_vision: np.ndarray  # [N, G] float32, ours: r_img · R_vit
    # [N, K] float32: the llm row's part on the cross-attention keys (Mllama, where the image
    # is not in the sequence); llm and llm_keys together sum to 1
    llm_keys: np.ndarray | None = None
    legacy: bool = False  # read from a format-1 file (its "all" is llm_through_vision)

    def map(self, mode: RelevancyMode) -> np.ndarray | None:
        """The stored array of ``mode`` ([N, T] for llm, [N, G] otherwise), None if absent."""
        return getattr(self, RelevancyMode(mode).value)

    @property
    def modes(self) -> list[RelevancyMode]:
        """The modes this trace holds, in the enum's order."""
        return [mode for mode in RelevancyMode if self.map(mode) is not None]

    def on_patches(self, mode: RelevancyMode, geometry: ImageGeometry) -> np.ndarray:
        """[N, G] map of ``mode`` per image patch. ``llm`` is spread from each image token onto
        the patches it reads, by the map's weights (a token's share is kept whole). Raises
        ``KeyError`` when the trace lacks ``mode``; ``mode`` may be given by name ("llm")."""
        mode = RelevancyMode(mode)
        values = self.map(mode)
        if values is None:
            raise KeyError(mode)
        if mode is not RelevancyMode.LLM:
            return values
        rows = np.unique(geometry.token_patches.rows)
        grid = values[:, rows] @ geometry.token_patches.matrix(rows, geometry.num_patches)
        if self.llm_keys is not None and geometry.key_patches is not None:
            keys = np.arange(self.llm_keys.shape[1])
            grid = grid + self.llm_keys @ geometry.key_patches.matrix(keys, geometry.num_patches)
        return grid

    @property
    def legacy_note(self) -> str | None:
        """Why a mode is missing, for traces recorded before the seed's "all" was added."""
        if not self.legacy:
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


class RecordingPolicy(str, enum.Enum):
    """Which LM attention query rows a trace keeps (all columns of each). A 7B-shaped
    LLaVA-NeXT trace (T ~ 2,900, ~2,880 image tokens) holds ~17 GB of fp16 attention in full;
    the answer's rows are what most views read. Values per layer and head: ``full`` T*T;
    ``text_rows`` (T - I)*T, every row but the image tokens' (prompt words and answer);
    ``answer_rows`` N*T. Lossy value encodings (``store.Precision``) combine with any."""

    FULL = "full"
    TEXT_ROWS = "text_rows"
    ANSWER_ROWS = "answer_rows"


@dataclass
class CrossAttention:
    """Cross-attention of the LM to the vision states (Mllama), where the image never enters
    the self-attention sequence: its keys are ``ImageGeometry.key_patches`` rows."""

    layers: list[int]  # the LM layers that hold a cross-attention block
    weights: np.ndarray  # [Lx, H, T, K] float16, rows sum to 1 (all zero where masked)


@dataclass
class Trace:
    """One complete recording, as written by the engine and read back by the store.

    ``lm_attention`` holds the rows ``lm_rows`` of every layer's [T, T] attention (all rows
    when ``lm_rows`` is None): rows sum to 1; masks are causal except where a family attends
    both ways (Gemma 3 image blocks, PaliGemma's prefix), so nothing assumes a triangle.
    """

    info: TraceInfo
    tokens: TokenTable
    image: ImageGeometry
    top_k: TopK
    lm_attention: np.ndarray  # [L, H, R, T] float16 (R = T unless lm_rows is set)
    vision_attention: list[np.ndarray] | None  # per vision sequence: [Lv, Hv, V, V] float16
    relevancy: Relevancy | None
    summaries: Summaries
    lm_rows: np.ndarray | None = None  # [R] int32 sorted query rows kept (RecordingPolicy)
    cross_attention: CrossAttention | None = None

    @property
    def policy(self) -> RecordingPolicy | None:
        """The policy whose rows ``lm_rows`` are (None: rows of no named policy)."""
        from .policy import policy_of  # store.policy builds on this module

        return policy_of(self.lm_rows, self.tokens)

    @property
    def lm_view(self) -> AttentionView:
        """``lm_attention`` indexed by absolute query rows, as a stored trace's view is:
        ``trace.lm_view[layer, head, rows, cols]`` (float32; see :mod:`store.views`)."""
        policy = self.policy
        name = policy.value if policy is not None else "custom"
        return AttentionView.of_array(self.lm_attention, self.lm_rows, name)
