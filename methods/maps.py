"""The per-patch maps that faithfulness methods compare, read from a stored trace.

Every method scores the same candidates, named the same way in results and metrics:
``relevancy.<mode>`` for each stored relevancy mode; ``attention.head_mean`` (the answer
token's attention row in one LM layer, mean over heads, spread from image tokens onto
patches); ``attention.best_head`` (the single head with the largest mean image share over
the answer, from the stored summaries); ``random`` (uniform noise from a fixed seed: the
baseline a method must beat); and every map another method stored as a result of kind
``maps`` (:data:`MAPS_KIND`: occlusion, CLEANN), named by that method. All are ``[N, G]``: one
map over the G patches per answer token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from store._stored import StoredTrace
from store.schema import ImageGeometry, answer_row

if TYPE_CHECKING:
    from store import TraceStore

RANDOM = "random"
MAPS_KIND = "maps"  # result kind of methods whose output is a map: ``per_token["map"]`` [N, G]


@dataclass(frozen=True)
class MapChoice:
    """Which attention layer the raw-attention maps read and the random map's seed."""

    layer: int = -1  # LM layer of attention.head_mean; negative counts from the end
    seed: int = 0


def image_rows(geometry: ImageGeometry) -> np.ndarray:
    """The sequence positions of image tokens (empty for cross-attention families)."""
    return np.unique(geometry.token_patches.rows)


def attention_on_patches(geometry: ImageGeometry, rows_attention: np.ndarray) -> np.ndarray:
    """``[N, T]`` attention rows spread onto the patches: ``[N, G]`` (token weights kept).
    Takes the geometry, not a stored trace: sanity-check spreads a live recording's rows."""
    rows = image_rows(geometry)
    return rows_attention[:, rows] @ geometry.token_patches.matrix(rows, geometry.num_patches)


def candidate_maps(
    trace: StoredTrace, choice: MapChoice, stored: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Every map this trace can give, by name (see the module docstring); a relevancy mode
    or attention that was not recorded is simply absent. ``stored``: maps from
    :func:`stored_maps` (those of another shape than ``[N, G]``, or named like a map the
    trace itself gives, are left out)."""
    maps: dict[str, np.ndarray] = {}
    geometry = trace.image
    relevancy = trace.relevancy
    if relevancy is not None:
        for mode in relevancy.modes:
            maps[f"relevancy.{mode.value}"] = np.asarray(
                relevancy.on_patches(mode, geometry), np.float64
            )
    n = trace.answer_length
    rows = [answer_row(trace.prompt_length, k) for k in range(n)]
    if len(image_rows(geometry)) and trace.has_rows(rows):
        layers = trace.lm_attention.shape[0]
        layer = choice.layer % layers
        attention = np.asarray(trace.attention_rows(rows, [layer])[0], np.float64)  # [H, N, T]
        maps["attention.head_mean"] = attention_on_patches(geometry, attention.mean(axis=0))
        top_layer, top_head = best_head(trace)
        best = np.asarray(trace.attention_rows(rows, [top_layer])[0, top_head])
        maps["attention.best_head"] = attention_on_patches(geometry, best.astype(np.float64))
    for name, values in (stored or {}).items():
        # a stored result never stands in for a map read from the trace itself
        if name not in maps and name != RANDOM and values.shape == (n, geometry.num_patches):
            maps[name] = values
    maps[RANDOM] = random_map(n, geometry.num_patches, choice.seed)
    return maps


def stored_maps(store: TraceStore, trace_id: str) -> dict[str, np.ndarray]:
    """The maps methods stored for ``trace_id`` (kind :data:`MAPS_KIND`), by method name.

    Of several results of one method, the highest version wins (compared as numbers, so
    "10" is newer than "9"); among results of one version, the last by parameters key (an
    arbitrary but stable choice: run one parameter set per method to avoid it). A payload
    that is not a finite 2-D array is skipped: results are data read back, never trusted.
    """
    found: dict[str, np.ndarray] = {}
    ordered = sorted(store.list_results(trace_id, MAPS_KIND).items(), key=_version_order)
    for _, payload in ordered:
        name = payload.get("method")
        per_token = payload.get("per_token")
        values = per_token.get("map") if isinstance(per_token, dict) else None
        try:
            array = np.asarray(values, np.float64)
        except (TypeError, ValueError):
            continue
        if isinstance(name, str) and array.ndim == 2 and np.isfinite(array).all():
            found[name] = array
    return found


def random_map(tokens: int, patches: int, seed: int) -> np.ndarray:
    """Uniform noise ``[tokens, patches]`` from ``seed``: the same baseline on every run."""
    return np.random.default_rng(seed).random((tokens, patches))


def best_head(trace: StoredTrace) -> tuple[int, int]:
    """(layer, head) of ``attention.best_head``, for provenance."""
    shares = trace.summaries.head_image_attention
    layer, head = np.unravel_index(int(np.argmax(shares)), shares.shape)
    return int(layer), int(head)


def _version_order(item: tuple[str, dict]) -> tuple:
    """Sort key of a ``(key, payload)`` result: its version as numbers, then its key."""
    key, payload = item
    version = str(payload.get("version", "")) if isinstance(payload, dict) else ""
    parts = tuple(int(p) if p.isdecimal() else -1 for p in version.split("."))  # not isdigit: "²"
    return parts, key
