"""Stored method results read back for display: curves, scores per map, maps per token.

Results are data read back from the index, written by any version of any tool, so every
reader here checks the shape it needs and raises :class:`Unreadable` (one line saying what
is missing) instead of failing deep inside a chart. Numbers come from the payloads only
(:meth:`methods.base.MethodResult.payload`); nothing is recomputed, so the page shows what
``lvlm-interpret analyse`` stored.

Payloads read (kind: method):
- ``faithfulness``: ``localisation`` (``per_token[map][score]`` lists, headline
  ``<score>.<map>`` and ``<score>.chance``), ``deletion`` / ``insertion`` (``per_token``:
  ``fractions``, ``curves[map]`` [N][S+1], ``auc[map]`` [N]);
- ``maps``: ``per_token["map"]`` [N][G] (occlusion, CLEANN), named by the method;
- ``grounding``: per-token series and per-word flags (:mod:`methods.grounding`);
- ``evidence``: ``per_token``: ``map`` [N][G], ``agreement`` [N], ``weights`` {map: w}
  (:mod:`methods.evidence`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from dashboard.components.charts import LEGEND

LOCALISATION, DELETION, INSERTION = "localisation", "deletion", "insertion"
RANDOM, CHANCE = "random", "chance"
# result kinds
FAITHFULNESS, MAPS, GROUNDING, EVIDENCE = "faithfulness", "maps", "grounding", "evidence"
# (score as named in results, column title); the arrows say which way is better
SCORES = (
    ("pointing", "pointing ↑"),
    ("box_mass", "box mass ↑"),
    ("iou_top", "IoU top region ↑"),
    ("mask_mass", "mask mass ↑"),
    ("iou_mask", "IoU mask ↑"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
)
_LOCALISATION_SCORES = ("pointing", "box_mass", "iou_top", "mask_mass", "iou_mask")


class Unreadable(ValueError):
    """A stored payload is not in the form a view reads; the message is one line."""


def method_of(payload: Any) -> str | None:
    """The method name a payload states, or ``None`` when it states none."""
    name = payload.get("method") if isinstance(payload, dict) else None
    return name if isinstance(name, str) and name else None


def latest(results: Mapping[str, Any]) -> dict[str, dict]:
    """One payload per method: of several runs (other parameters or versions) the last by
    key, as :func:`methods.maps.stored_maps` chooses (keys sort ``method@version/params``,
    so a newer version wins). Payloads that name no method are left out."""
    chosen: dict[str, dict] = {}
    for _, payload in sorted(results.items()):
        name = method_of(payload)
        if name is not None:
            chosen[name] = payload
    return chosen


def number(value: Any) -> float | None:
    """A finite float, or ``None`` (JSON null, text, NaN, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _section(payload: Any, name: str) -> dict:
    part = payload.get(name) if isinstance(payload, dict) else None
    if not isinstance(part, dict):
        raise Unreadable(f"no {name!r} mapping in the payload")
    return part


def floats(values: Any, what: str, length: int | None = None) -> np.ndarray:
    """A 1-D list of numbers (null as NaN) of ``length`` when given."""
    if not isinstance(values, list) or not all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values
    ):
        raise Unreadable(f"{what} is not a list of numbers")
    array = np.asarray([np.nan if v is None else float(v) for v in values], np.float64)
    if length is not None and len(array) != length:
        raise Unreadable(f"{what} has {len(array)} values, not {length}")
    return array


def token_value(values: Any, token: int) -> float | None:
    """Entry ``token`` of a per-token list, when it is a finite number."""
    if isinstance(values, list) and 0 <= token < len(values):
        return number(values[token])
    return None


@dataclass(frozen=True)
class Curve:
    """One map's deletion or insertion curve for one answer token."""

    mode: str  # "deletion" or "insertion"
    map: str
    fractions: np.ndarray  # [S + 1] share of patches perturbed
    probability: np.ndarray  # [S + 1] the token's probability at each step
    auc: float | None


def curves(payload: Any, token: int) -> list[Curve]:
    """The curves a deletion or insertion payload holds for answer token ``token``."""
    mode = method_of(payload) or "?"
    per_token = _section(payload, "per_token")
    x = floats(per_token.get("fractions"), "fractions")
    stored = per_token.get("curves")
    if not isinstance(stored, dict) or not stored:
        raise Unreadable("no curves in the payload")
    aucs = _mapping(per_token, "auc")
    found = []
    for name, rows in stored.items():
        if not isinstance(rows, list) or not 0 <= token < len(rows):
            raise Unreadable(f"no curve of {name} for answer token {token}")
        y = floats(rows[token], f"the curve of {name}", len(x))
        found.append(Curve(mode, str(name), x, y, token_value(aucs.get(name), token)))
    return found


def curves_chart(found: list[Curve], token_label: str) -> alt.Chart:
    """Deletion and insertion curves side by side, one line per map."""
    frame = pd.DataFrame(
        [
            {"mode": c.mode, "map": c.map, "fraction": float(x), "probability": float(y)}
            for c in found
            for x, y in zip(c.fractions, c.probability, strict=True)
        ]
    )
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("fraction:Q", title="patches perturbed (%)", axis=alt.Axis(format="%")),
            y=alt.Y(
                "probability:Q",
                title=f"probability of {token_label} (%)",
                axis=alt.Axis(format="%"),
            ),
            color=alt.Color("map:N", title="map", legend=LEGEND),
            tooltip=[
                "mode:N",
                "map:N",
                alt.Tooltip("fraction:Q", format=".0%"),
                alt.Tooltip("probability:Q", format=".3f"),
            ],
        )
        .properties(width=300, height=260)
        .facet(column=alt.Column("mode:N", title=None, sort=[DELETION, INSERTION]))
    )


def _mapping(value: Any, name: str) -> dict:
    """``value[name]`` when both are mappings, else empty (a table cell left blank)."""
    part = value.get(name) if isinstance(value, dict) else None
    return part if isinstance(part, dict) else {}


def _localisation_value(payload: dict, name: str, score: str, token: int | None) -> float | None:
    if token is None:
        return number(_mapping(payload, "headline").get(f"{score}.{name}"))
    return token_value(_mapping(_mapping(payload, "per_token"), name).get(score), token)


def _auc_value(payload: dict, name: str, token: int | None) -> float | None:
    if token is None:
        return number(_mapping(payload, "headline").get(f"{method_of(payload)}_auc.{name}"))
    return token_value(_mapping(_mapping(payload, "per_token"), "auc").get(name), token)


def _maps_of(payload: dict) -> list[str]:
    per_token = _mapping(payload, "per_token")
    if method_of(payload) == LOCALISATION:
        return [str(k) for k in per_token]
    return [str(k) for k in _mapping(per_token, "auc")]


def method_table(faithfulness: Mapping[str, dict], token: int | None = None) -> pd.DataFrame:
    """One row per map, a column per score (:data:`SCORES`); ``token``: that answer token's
    values, ``None``: the whole answer's (the headline means). ``random`` and the analytic
    ``chance`` level come last, the rows every map is read against. Empty when no
    faithfulness result is stored; a score not computed is blank (NaN), a score computed for
    no map (mask scores without a known mask) is left out."""
    payloads = {m: p for m, p in faithfulness.items() if m in (LOCALISATION, DELETION, INSERTION)}
    names = list(dict.fromkeys(n for p in payloads.values() for n in _maps_of(p)))
    names = [n for n in names if n != RANDOM] + [n for n in names if n == RANDOM]
    rows = []
    for name in names:
        row: dict[str, Any] = {"map": name}
        for score, title in SCORES:
            value = None
            if score in _LOCALISATION_SCORES and LOCALISATION in payloads:
                value = _localisation_value(payloads[LOCALISATION], name, score, token)
            elif score == f"{DELETION}_auc" and DELETION in payloads:
                value = _auc_value(payloads[DELETION], name, token)
            elif score == f"{INSERTION}_auc" and INSERTION in payloads:
                value = _auc_value(payloads[INSERTION], name, token)
            row[title] = np.nan if value is None else value
        rows.append(row)
    if LOCALISATION in payloads and rows:
        headline = _mapping(payloads[LOCALISATION], "headline")
        chance: dict[str, Any] = {"map": f"{CHANCE} (analytic)"}
        for score, title in SCORES:
            value = number(headline.get(f"{score}.{CHANCE}"))
            chance[title] = np.nan if value is None else value
        rows.append(chance)
    frame = pd.DataFrame(rows, columns=["map", *(title for _, title in SCORES)])
    return frame.dropna(axis=1, how="all") if rows else frame


def map_array(payload: Any, tokens: int, patches: int) -> np.ndarray:
    """A ``maps`` payload's ``per_token["map"]`` as a finite ``[tokens, patches]`` array."""
    values = _section(payload, "per_token").get("map")
    try:
        array = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        raise Unreadable("its map is not a table of numbers") from None
    if array.shape != (tokens, patches):
        raise Unreadable(
            f"its map has shape {array.shape}, not ({tokens}, {patches}) (answer tokens, patches)"
        )
    if not np.isfinite(array).all():
        raise Unreadable("its map holds values that are not finite")
    return array


@dataclass(frozen=True)
class Grounding:
    """A grounding payload read back: one row per answer token, one per answer word, and
    the answer tokens of the flagged words."""

    tokens: pd.DataFrame  # probability, with the image masked, drop, image share, grounding
    words: pd.DataFrame  # word, content word, word grounding, flagged
    flagged: tuple[int, ...]  # answer-token indices k of flagged words
    threshold: float | None


_TOKEN_SERIES = (
    ("probability", "probability"),
    ("masked_probability", "probability, image masked"),
    ("drop", "drop"),
    ("image_share", "image share"),
    ("grounding", "grounding"),
)


def grounding(payload: Any, labels: list[str]) -> Grounding:
    """The grounding method's payload (:mod:`methods.grounding`) for an answer whose tokens
    read ``labels``: per-token series of that length, words with their token lists."""
    per_token = _section(payload, "per_token")
    n = len(labels)
    tokens = pd.DataFrame({"answer token": [f"{k}: {t}" for k, t in enumerate(labels)]})
    for name, title in _TOKEN_SERIES:
        if name in per_token:
            tokens[title] = floats(per_token[name], name, n)
    words, spans = per_token.get("words"), per_token.get("word_tokens")
    flagged, content = per_token.get("flagged"), per_token.get("content")
    if not (isinstance(words, list) and isinstance(spans, list) and len(spans) == len(words)):
        raise Unreadable("no answer words with their tokens in the payload")
    count = len(words)
    if not all(isinstance(f, list) and len(f) == count for f in (flagged, content)):
        raise Unreadable("the flags or content marks do not match the words")
    if not all(
        isinstance(s, list) and all(isinstance(k, int) and 0 <= k < n for k in s) for s in spans
    ):
        raise Unreadable("a word's tokens are not answer-token indices")
    table = pd.DataFrame(
        {
            "word": [str(w) for w in words],
            "content word": [bool(c) for c in content],
            "word grounding": floats(per_token.get("word_grounding"), "word_grounding", count),
            "flagged": [bool(f) for f in flagged],
        }
    )
    marked = sorted({k for s, f in zip(spans, flagged, strict=True) if f for k in s})
    params = payload.get("params") if isinstance(payload.get("params"), dict) else {}
    return Grounding(tokens, table, tuple(marked), number(params.get("threshold")))


def flagged_tokens(results: Mapping[str, Any], labels: list[str]) -> tuple[int, ...] | None:
    """The flagged answer tokens of the newest grounding result (``None``: none readable)."""
    for payload in reversed(latest(results).values()):
        try:
            return grounding(payload, labels).flagged
        except Unreadable:
            continue
    return None


@dataclass(frozen=True)
class Evidence:
    """An evidence payload read back: the consolidated map, agreement per token, and the
    weight each map got."""

    map: np.ndarray  # [N, G]
    agreement: np.ndarray  # [N]; NaN where fewer than two maps were weighted
    weights: pd.DataFrame  # map, weight (largest first)
    weighting: str  # "weighted", or "unweighted: why"


def evidence(payload: Any, tokens: int, patches: int) -> Evidence:
    """The evidence method's payload (:mod:`methods.evidence`) for ``tokens`` answer tokens
    over ``patches`` patches."""
    values = map_array(payload, tokens, patches)
    per_token = _section(payload, "per_token")
    agree = floats(per_token.get("agreement"), "agreement", tokens)
    weights = {str(k): number(v) for k, v in _mapping(per_token, "weights").items()}
    if not weights or any(v is None for v in weights.values()):
        raise Unreadable("its weights are not a mapping of map names to numbers")
    table = pd.DataFrame({"map": list(weights), "weight": list(weights.values())})
    how = _mapping(payload, "provenance").get("weighting")
    return Evidence(
        values,
        agree,
        table.sort_values("weight", ascending=False, kind="stable"),
        how if isinstance(how, str) else "not stated",
    )
