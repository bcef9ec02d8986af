"""Quality bars for every map and for the hallucination flag, measured on held-out questions.

Why a bench and not a test: the numbers are findings (a map may well not beat random), and
computing them re-runs the model thousands of times. Three resumable stages, one store per
bundled checkpoint under ``--store``:

1. **record** ``--count`` held-out shapes-world questions (``demo record``'s own recording
   path, seed :data:`QUALITY_SEED`: not demo record's 7, not evaluation's 20261129, not the
   training stream ``seed + 1_000_000``) on the main and on the weak checkpoint; a question
   recorded before is skipped by its trace id.
2. **analyse** the traces with the registered methods, called as ``lvlm-interpret analyse``
   calls them (``Method.run(trace, params, model=, store=)`` then :func:`methods.save_result`),
   in groups run question by question so that an interrupted run leaves every method of a
   group on the same questions. A (trace, method, params key) already stored is skipped,
   unless it scored fewer maps than the trace now has (a map method added since): then it is
   re-run. Deletion / insertion run once per group of maps (``maps`` parameter), so adding a
   map method adds a result beside the old ones instead of recomputing them. Main
   checkpoint: every map method (occlusion, CLEANN on the first ``--cleann-count`` questions
   only, for cost), localisation, deletion and insertion. Weak checkpoint: grounding.
3. **report**: ``quality.md`` and ``quality.json`` in ``--out``: per map, mean and 95 % CI
   (normal approximation, 1.96 standard errors) over content answer tokens (answer tokens of
   content words, :func:`methods.grounding.is_content`: the end-of-sequence token makes no
   claim about the image) of the pointing game, box mass, top-20 % IoU, deletion and
   insertion AUC, and the paired difference to the random map on the same tokens; the
   analytic chance level of the localisation scores; the token and question counts of every
   cell. Then the hallucination ROC table (:func:`roc_rows`).

Run: ``python bench/bench_quality.py [--count 200] [--steps 8] [--stage record,analyse,report]``
(``make bench-quality``). ``--shard i/n`` analyses every n-th question only, so that two
processes can share the work of one store.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from engine.demo.checkpoints import DEMO_CHECKPOINTS
from engine.demo.world import demo_items
from methods.grounding import answer_words, is_content, roc_auc, word_key
from methods.localisation import MASK_SCORES, SCORES
from methods.maps import RANDOM, stored_maps
from store import TraceStore, open_store
from store._index import TraceQuery

QUALITY_SEED = 1212  # held-out questions of this bench (see the module docstring)
ROOT = Path(__file__).resolve().parents[1]
BASE_MAPS = "relevancy,attention,random"  # maps every trace has; map methods add their own
MAP_METHODS = ("occlusion", "cleann")  # methods storing maps (kind "maps"), in run order
Z95 = 1.96
LOCALISATION_SCORES = SCORES + MASK_SCORES  # mask scores where the target's mask is known


@dataclass(frozen=True)
class Job:
    """One method with its parameters, run on one checkpoint's traces."""

    method: str
    params: Any
    limit: int | None = None  # only the first ``limit`` questions (cost)


@dataclass
class Settings:
    count: int = 200
    seed: int = QUALITY_SEED
    steps: int = 8
    batch: int = 64
    cleann_count: int = 40
    shard: tuple[int, int] = (0, 1)
    only: frozenset[str] = frozenset()  # analyse only these methods (empty: all)
    checkpoints: tuple[str, ...] = ("main", "weak")
    log: Callable[[str], None] = print
    skipped: list[str] = field(default_factory=list)


# -- stage 1: record ---------------------------------------------------------------------------
def record(store_root: Path, settings: Settings) -> None:
    """The held-out questions on every checkpoint, each into its own store (no CLEANN here:
    the cleann map method computes the explanations it needs, on the questions it runs on)."""
    from engine.cli.demo import _record_questions
    from engine.loading import load_model

    for name in settings.checkpoints:
        loaded = load_model(str(DEMO_CHECKPOINTS[name].folder))
        with open_store(store_root / name, writable=True) as opened:
            _record_questions(opened, loaded, settings.count, settings.seed, None)


def question_traces(store: TraceStore, count: int, seed: int) -> list[str]:
    """Trace ids of the first ``count`` questions of ``seed``, in question order (traces of
    other questions in the store are left out). A question is known by its prompt and its
    scene's seed, both stored with the trace."""
    page = store.query(TraceQuery(limit=10**9))
    by_question = {
        (i.prompt, (i.extra.get("ground_truth") or {}).get("world_seed")): i.trace_id
        for i in page.items
    }
    ids = []
    for scene, question in demo_items(count, seed):
        trace_id = by_question.get((question.text, scene.seed))
        if trace_id is not None:
            ids.append(trace_id)
    return ids


# -- stage 2: analyse --------------------------------------------------------------------------
def jobs_for(checkpoint: str, settings: Settings, known: Sequence[str]) -> list[list[Job]]:
    """The groups of jobs for one checkpoint (module docstring), of the registered methods."""
    from engine.methods.perturbation import PerturbationParams
    from methods import get

    def job(name: str, limit: int | None = None, **changes: Any) -> Job:
        return Job(name, replace(get(name).Params(), **changes), limit)

    if checkpoint == "weak":
        return [[job("grounding")]] if "grounding" in known else []
    groups = []
    for group in [BASE_MAPS, *(m for m in MAP_METHODS if m in known)]:
        limit = settings.cleann_count if group == "cleann" else None
        if group != BASE_MAPS:  # the map first, localisation again (it scores every map)
            groups += [[job(group, limit)], [job("localisation")]]
        else:
            groups.append([job("localisation")])
        perturb = PerturbationParams(steps=settings.steps, maps=group, batch=settings.batch)
        groups.append([Job(mode, perturb, limit) for mode in ("deletion", "insertion")])
    return groups


def scored_maps(payload: dict) -> set[str]:
    """The map names a stored localisation or perturbation result scored."""
    per_token = payload.get("per_token") or {}
    if "auc" in per_token:
        return set(per_token["auc"])
    return {name for name, scores in per_token.items() if isinstance(scores, dict)}


def wanted_maps(job: Job, stored: Iterable[str]) -> set[str]:
    """Stored maps a result of ``job`` must have scored to be up to date."""
    if job.method == "localisation":
        return set(stored)
    wanted = [w.strip() for w in getattr(job.params, "maps", "").split(",")]
    return {m for m in stored if m in wanted}


def up_to_date(store: TraceStore, trace_id: str, cls: type, job: Job) -> bool:
    """Whether (trace, method, params key) is stored and scored every map it should."""
    from methods import params_key

    key = f"{cls.name}@{cls.version}/{params_key(job.params)}"
    payload = store.get_result(trace_id, cls.kind, key)
    if payload is None:
        return False
    if cls.kind == "faithfulness":
        return wanted_maps(job, stored_maps(store, trace_id)) <= scored_maps(payload)
    return True


def analyse(store: TraceStore, ids: list[str], groups: list[list[Job]], loaded, settings) -> int:
    """Run every group over the traces (this shard's), question by question; returns how many
    results were computed."""
    from methods import get, save_result

    computed = 0
    index, shards = settings.shard
    for group in groups:
        started, done = time.perf_counter(), 0
        for position, trace_id in enumerate(ids):
            if position % shards != index:
                continue
            trace = store.open(trace_id)
            for job in group:
                cls = get(job.method)
                if job.limit is not None and position >= job.limit:
                    continue
                if settings.only and job.method not in settings.only:
                    continue
                if up_to_date(store, trace_id, cls, job) or cls().skip_reason(trace):
                    continue
                result = cls().run(trace, job.params, model=loaded, store=store)
                if result.kind == "faithfulness" and not scored_maps(result.payload()):
                    settings.skipped.append(f"{job.method} {job.params}: no map to score")
                    continue
                save_result(store, trace_id, result)
                computed, done = computed + 1, done + 1
        took = time.perf_counter() - started
        names = ", ".join(sorted({j.method for j in group}))
        settings.log(f"{time.strftime('%H:%M:%S')} {names}: {done} results in {took:.0f} s")
    return computed


def analyse_all(store_root: Path, settings: Settings) -> None:
    import engine.methods  # noqa: F401  (registers the methods that re-run the model)
    from engine.loading import load_model
    from methods import names

    for name in settings.checkpoints:
        loaded = load_model(str(DEMO_CHECKPOINTS[name].folder))
        with open_store(store_root / name, writable=True) as opened:
            ids = question_traces(opened, settings.count, settings.seed)
            groups = jobs_for(name, settings, names())
            analyse(opened, ids, groups, loaded, settings)


# -- stage 3: report ---------------------------------------------------------------------------
def content_tokens(texts: Sequence[str], word_ids: Sequence[int]) -> list[int]:
    """Answer-token indices belonging to content words."""
    return [k for w in answer_words(texts, word_ids) if is_content(w.text) for k in w.tokens]


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean, 95 % half-width (normal approximation) and count of the finite values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if not len(x):
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    half = Z95 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95": float(half), "n": len(x)}


@dataclass
class Cells:
    """Per map and score, the per-token values and the questions they came from."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    questions: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    paired: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # map - random

    def add(self, name: str, score: str, trace_id: str, values: list, random: list) -> None:
        self.values.setdefault(name, {}).setdefault(score, []).extend(values)
        self.questions.setdefault(name, {}).setdefault(score, set()).add(trace_id)
        diffs = [
            v - r
            for v, r in zip(values, random, strict=True)
            if v is not None and r is not None and math.isfinite(v) and math.isfinite(r)
        ]
        self.paired.setdefault(name, {}).setdefault(score, []).extend(diffs)


def token_texts(store: TraceStore, trace_id: str) -> tuple[list[str], list[int]]:
    with store.open(trace_id) as trace:
        p = trace.prompt_length
        return list(trace.tokens.text[p:]), [int(w) for w in trace.tokens.word_ids[p:]]


def map_table(store: TraceStore, ids: list[str], steps: int) -> dict[str, Any]:
    """The map table's numbers (module docstring) from the stored results of ``ids``."""
    cells = Cells()
    chance: dict[str, list[float]] = {s: [] for s in LOCALISATION_SCORES}
    for trace_id in ids:
        texts, word_ids = token_texts(store, trace_id)
        keep = content_tokens(texts, word_ids)
        if not keep:
            continue
        aucs: dict[str, dict[str, list]] = {"deletion": {}, "insertion": {}}
        for payload in store.list_results(trace_id, "faithfulness").values():
            method, params = payload.get("method"), payload.get("params") or {}
            per_token = payload.get("per_token") or {}
            if method == "localisation":
                random = per_token.get(RANDOM, {})
                for name, scores in per_token.items():
                    for s in LOCALISATION_SCORES:
                        if s in scores and s in random:
                            pick = [scores[s][k] for k in keep]
                            cells.add(name, s, trace_id, pick, [random[s][k] for k in keep])
                for s in LOCALISATION_SCORES:
                    level = (payload.get("headline") or {}).get(f"{s}.chance")
                    if level is not None:
                        chance[s].extend([level] * len(keep))
            elif method in aucs and params.get("steps") == steps:
                aucs[method].update(per_token.get("auc", {}))  # groups of maps, one random
        for method, by_map in aucs.items():
            random = by_map.get(RANDOM)
            for name, values in by_map.items():
                base = [random[k] for k in keep] if random else [None] * len(keep)
                cells.add(name, method, trace_id, [values[k] for k in keep], base)
    rows = {}
    for name in sorted(cells.values, key=_map_order):
        rows[name] = {
            score: {
                **mean_ci(values),
                "questions": len(cells.questions[name][score]),
                "vs_random": mean_ci(cells.paired[name][score]),
            }
            for score, values in cells.values[name].items()
        }
    return {"maps": rows, "chance": {s: mean_ci(v) for s, v in chance.items()}}


def _map_order(name: str) -> tuple[int, str]:
    return (2 if name == RANDOM else 1 if name in MAP_METHODS else 0, name)


# -- hallucination ROC -------------------------------------------------------------------------
@dataclass(frozen=True)
class Word:
    """One content word of a weak-checkpoint answer, its label and its suspicion scores."""

    trace_id: str
    text: str
    wrong: bool
    bait: bool
    kind: str  # the question's kind (colour, shape, position, count, existence)
    scores: dict[str, float]


def labelled_words(store: TraceStore, ids: list[str]) -> list[Word]:
    """Every content word of every answer. Label: **wrong** when the trace's answer is not
    correct and the word is not one of the reference answer's words; right otherwise. Scores
    (higher: more suspect), where a grounding result is stored: ``1 - grounding`` (the word's
    grounding: max over its tokens), ``1 - image share`` (llm relevancy's image share, max
    over the tokens) and the flag itself (1: flagged); always the baseline ``1 - p``, ``p``
    the word's probability when recorded (product over its tokens)."""
    words = []
    for trace_id in ids:
        info = store.get(trace_id)
        texts, word_ids = token_texts(store, trace_id)
        with store.open(trace_id) as trace:
            probs = np.asarray(trace.top_k.chosen_prob, np.float64)
        grounding = _grounding_per_token(store, trace_id)
        known = {word_key(w) for w in (info.reference_answer or "").split()}
        for word in answer_words(texts, word_ids):
            if not is_content(word.text):
                continue
            tokens = list(word.tokens)
            scores = {"1 - token probability": 1.0 - float(np.prod(probs[tokens]))}
            for name, values in grounding.items():
                label = name if name.startswith("flagged") else f"1 - {name}"
                scores[label] = 1.0 - float(np.max(values[tokens]))
            wrong = info.correct is False and word_key(word.text) not in known
            bait = bool(info.extra.get("hallucination_bait"))
            kind = str(info.extra.get("question_kind"))
            words.append(Word(trace_id, word.text, wrong, bait, kind, scores))
    return words


def _grounding_per_token(store: TraceStore, trace_id: str) -> dict[str, np.ndarray]:
    """The per-token series of the latest stored grounding result: grounding, image share,
    and 1 where a token's grounding reaches the flag threshold."""
    results = store.list_results(trace_id, "grounding")
    if not results:
        return {}
    payload = results[sorted(results)[-1]]
    per_token = payload.get("per_token") or {}
    series = {}
    for name in ("grounding", "image_share"):  # grounding v1 is the drop alone
        values = per_token.get(name)
        if isinstance(values, list):
            series[name] = np.asarray([np.nan if v is None else v for v in values], np.float64)
    threshold = (payload.get("params") or {}).get("threshold")
    if "grounding" in series and isinstance(threshold, int | float):
        # the flag itself (1: flagged), scored like the others: a word is flagged when its
        # grounding (max over its tokens) is below the threshold, i.e. 1 - max < 1 - threshold
        series[f"flagged (grounding < {threshold:g})"] = (series["grounding"] >= threshold) * 1.0
    return series


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray, rounds: int = 1000) -> list[float]:
    """Percentile 95 % interval of the ROC AUC over words resampled with replacement."""
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(rounds):
        pick = rng.integers(0, len(labels), len(labels))
        value = roc_auc(labels[pick], scores[pick])
        if math.isfinite(value):
            aucs.append(value)
    return [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))] if aucs else []


def roc_rows(words: list[Word]) -> dict[str, Any]:
    """ROC AUC of every score for wrong vs right content words: all words; the words of
    existence questions ("is there a ...?": the real objects' and the bait's, so that a "yes"
    to bait is told from a true "yes"); the words of hallucination-bait questions only (no AUC
    when the model answers every bait the same way: one class)."""
    out: dict[str, Any] = {}
    subsets = {
        "all questions": words,
        "existence questions": [w for w in words if w.kind == "existence"],
        "hallucination-bait questions": [w for w in words if w.bait],
    }
    for subset, chosen in subsets.items():
        names = sorted({n for w in chosen for n in w.scores})
        rows = {}
        for name in names:
            have = [w for w in chosen if math.isfinite(w.scores.get(name, float("nan")))]
            labels = np.asarray([w.wrong for w in have], bool)
            scores = np.asarray([w.scores[name] for w in have], np.float64)
            rows[name] = {
                "auc": roc_auc(labels, scores),
                "ci95": bootstrap_ci(labels, scores) if len(have) else [],
                "words": len(have),
                "wrong": int(labels.sum()),
                "questions": len({w.trace_id for w in have}),
            }
        out[subset] = rows
    return out


def flag_summary(words: list[Word]) -> dict[str, int]:
    """The flag at its threshold: how many wrong and how many right content words it flags
    (true and false positives), and how the model met the bait (questions answered wrong)."""

    def flagged(word: Word) -> bool:
        return any(n.startswith("flagged") and v == 1 for n, v in word.scores.items())

    bait = [w for w in words if w.bait]
    wrong = [w for w in words if w.wrong]
    right = [w for w in words if not w.wrong]
    existence = [w for w in right if w.kind == "existence"]
    return {
        "wrong_words": len(wrong),
        "wrong_flagged": sum(map(flagged, wrong)),
        "right_words": len(right),
        "right_flagged": sum(map(flagged, right)),
        "right_existence_words": len(existence),
        "right_existence_flagged": sum(map(flagged, existence)),
        "bait_questions": len({w.trace_id for w in bait}),
        "bait_answered_wrong": len({w.trace_id for w in bait if w.wrong}),
        "bait_words": len(bait),
        "bait_flagged": sum(map(flagged, bait)),
    }


# -- formatting --------------------------------------------------------------------------------
SCORE_COLUMNS = (
    ("pointing", "pointing game ↑"),
    ("box_mass", "box mass ↑"),
    ("iou_top", "IoU top 20 % ↑"),
    ("mask_mass", "mask mass ↑"),
    ("iou_mask", "IoU mask ↑"),
    ("deletion", "deletion AUC ↓"),
    ("insertion", "insertion AUC ↑"),
)


def _cell(cell: dict | None, signed: bool = False) -> str:
    """``mean ± half-width (n)``; a signed difference without the count (same tokens)."""
    if not cell or not cell.get("n"):
        return "—"
    ci = cell["ci95"]
    half = f" ± {ci:.3f}" if math.isfinite(ci) else ""
    if signed:
        return f"{cell['mean']:+.3f}{half}"
    return f"{cell['mean']:.3f}{half} ({cell['n']})"


def markdown(report: dict[str, Any]) -> str:
    """Both tables as Markdown (every number also in the JSON)."""
    header = "| map | " + " | ".join(label for _, label in SCORE_COLUMNS) + " | questions |"
    lines = [
        "## Maps: localisation, deletion, insertion (main checkpoint)",
        "",
        "Mean ± 95 % CI (tokens); Δ: paired difference to the random map on the same tokens.",
        "",
        header,
        "|" + "---|" * (len(SCORE_COLUMNS) + 2),
    ]
    table = report["maps"]
    for name, scores in table["maps"].items():
        cells = []
        for score, _ in SCORE_COLUMNS:
            cell = scores.get(score)
            text = _cell(cell)
            if cell and name != RANDOM and cell["vs_random"]["n"]:
                text += " Δ " + _cell(cell["vs_random"], signed=True)
            cells.append(text)
        questions = max((c["questions"] for c in scores.values()), default=0)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {questions} |")
    chance = [
        _cell(table["chance"].get(s)) if s in LOCALISATION_SCORES else "= random"
        for s, _ in SCORE_COLUMNS
    ]
    lines.append("| chance | " + " | ".join(chance) + " | |")
    lines += ["", "## Hallucination flag: ROC AUC, wrong vs right content words (weak)", ""]
    lines += [
        "| words | score | ROC AUC [95 % CI] | words | wrong | questions |",
        "|---|---|---|---|---|---|",
    ]
    for subset, rows in report["roc"].items():
        for name, row in rows.items():
            ci = row["ci95"]
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            auc = row["auc"]
            value = f"{auc:.3f}{interval}" if math.isfinite(auc) else "—"
            lines.append(
                f"| {subset} | {name} | {value} | {row['words']} | {row['wrong']} | "
                f"{row['questions']} |"
            )
    flag = report["flag"]
    lines += [
        "",
        f"The flag at its threshold: {flag['wrong_flagged']} of {flag['wrong_words']} wrong and "
        f"{flag['right_flagged']} of {flag['right_words']} right content words flagged "
        f"({flag['right_existence_flagged']} of {flag['right_existence_words']} right words of "
        f"existence questions). Hallucination bait: {flag['bait_answered_wrong']} of "
        f"{flag['bait_questions']} questions answered wrong; {flag['bait_flagged']} of their "
        f"{flag['bait_words']} content words flagged.",
    ]
    return "\n".join(lines) + "\n"


def report(store_root: Path, out: Path, settings: Settings) -> dict[str, Any]:
    """Both tables from the stored results, written to ``out`` as quality.md / quality.json."""
    result: dict[str, Any] = {"settings": _settings_json(settings)}
    with open_store(store_root / "main") as main:
        ids = question_traces(main, settings.count, settings.seed)
        result["maps"] = map_table(main, ids, settings.steps)
        result["maps"]["traces"] = len(ids)
    words: list[Word] = []
    if (store_root / "weak").is_dir():
        with open_store(store_root / "weak") as weak:
            ids = question_traces(weak, settings.count, settings.seed)
            words = labelled_words(weak, ids)
    result["roc"] = roc_rows(words)
    result["flag"] = flag_summary(words)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(_finite(result), indent=1, allow_nan=False))
    (out / "quality.md").write_text(markdown(result))
    return result


def _finite(value: Any) -> Any:
    """``value`` with NaN (a cell without data) as null: strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _settings_json(settings: Settings) -> dict[str, Any]:
    return {
        "count": settings.count,
        "seed": settings.seed,
        "steps": settings.steps,
        "batch": settings.batch,
        "cleann_count": settings.cleann_count,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=QUALITY_SEED)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cleann-count", type=int, default=40)
    parser.add_argument("--store", type=Path, default=ROOT / "artifacts" / "quality-store")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "quality")
    parser.add_argument("--stage", default="record,analyse,report")
    parser.add_argument("--checkpoints", default="main,weak")
    parser.add_argument("--shard", default="0/1", help="i/n: analyse every n-th question")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="analyse only these methods (a,b,...)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    index, shards = (int(x) for x in args.shard.split("/"))
    settings = Settings(
        count=args.count,
        seed=args.seed,
        steps=args.steps,
        batch=args.batch,
        cleann_count=args.cleann_count,
        shard=(index, shards),
        only=frozenset(m for m in args.only.split(",") if m),
        checkpoints=tuple(c for c in args.checkpoints.split(",") if c),
        log=lambda line: print(line, flush=True),
    )
    stages = set(args.stage.split(","))
    if "record" in stages:
        record(args.store, settings)
    if "analyse" in stages:
        analyse_all(args.store, settings)
        for line in dict.fromkeys(settings.skipped):
            print(f"skipped: {line}")
    if "report" in stages:
        report(args.store, args.out, settings)
        print((args.out / "quality.md").read_text())


if __name__ == "__main__":
    main()
