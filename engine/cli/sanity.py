"""``lvlm-interpret sanity-check``: do the maps change when the model's top layers are
re-initialised (Adebayo et al. 2018)? One command over a few answers, not a per-trace result.

The answers are stored traces (``--store`` and ids: their answer tokens, prompt and stored
pixels, on the model that recorded them) or a new question (``--image``/``--prompt``: the
model's own answer). Every input is checked before the model loads; nothing is written to the
store and no file of the checkpoint is changed (weights are re-initialised in memory and
restored). The method, the threshold and why are in engine/sanity.py.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from engine.cli.messages import fail, note
from engine.cli.options import DbUrl, Device, MaxNewTokens, Revision, Seed
from engine.inputs import MAX_NEW_TOKENS

if TYPE_CHECKING:
    from engine.sanity import SanityReport

MAX_SEED = 2**63 - 1


def sanity_check(
    model: Annotated[
        str, typer.Option(help="Hub id or local checkpoint folder (the one that recorded them).")
    ],
    trace_ids: Annotated[
        list[str] | None, typer.Argument(help="Ids of stored traces (with --store).")
    ] = None,
    store: Annotated[
        Path | None, typer.Option("--store", help="Store holding the traces (read only).")
    ] = None,
    db: DbUrl = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(help="Image file, instead of stored traces (repeat for several images)."),
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Question about --image.")] = None,
    max_new_tokens: MaxNewTokens = 32,
    layers: Annotated[
        int | None,
        typer.Option(
            min=0, help="Top LM layers the cascade re-initialises, one more per step (default all)."
        ),
    ] = None,
    vision_layers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Top vision layers (of those feeding the LM) in a second cascade; 0 skips it "
            "(default all).",
        ),
    ] = None,
    seed: Seed = 0,
    threshold: Annotated[
        float,
        typer.Option(help="A map FAILS when its mean Spearman at full depth is at least this."),
    ] = 0.5,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the table (and per-token values).")
    ] = None,
    revision: Revision = None,
    device: Device = "cpu",
) -> None:
    """Cascading randomisation: re-initialise the top layers one by one and report how much
    each map still correlates (Spearman, top-20 % overlap) with the trained model's."""
    from engine.errors import EngineError
    from engine.inputs import check_text

    stored = bool(trace_ids) or store is not None
    asked = bool(image) or prompt is not None
    if stored and asked:
        fail("give either trace ids with --store, or --image and --prompt, not both")
    if not stored and not asked:
        fail("nothing to check: give trace ids with --store, or --image and --prompt")
    if stored and (not trace_ids or store is None):
        fail("trace ids and --store go together: give both")
    if asked and (not image or prompt is None):
        fail("--image and --prompt go together: give both")
    if not 0 <= seed <= MAX_SEED:
        fail(f"--seed {seed} is out of range (0 to 2**63-1)")
    if not (0.0 < threshold <= 1.0):
        fail(f"--threshold {threshold} is out of range: a correlation above 0, at most 1")
    if max_new_tokens > MAX_NEW_TOKENS:
        note(f"note: --max-new-tokens {max_new_tokens} capped at {MAX_NEW_TOKENS}")
        max_new_tokens = MAX_NEW_TOKENS
    try:
        check_text(model, "The --model")
        if json_out is not None:
            _check_output(json_out, store)
    except EngineError as error:
        fail(error)
    plan = Plan(layers, vision_layers, seed, threshold)
    if stored:
        report = _from_store(model, trace_ids or [], store, db, device, plan)
    else:
        report = _from_prompt(
            model, image or [], prompt or "", max_new_tokens, revision, device, plan
        )
    _print(report)
    if json_out is not None:
        try:
            _write_json(json_out, report)
        except OSError as error:
            fail(f"--json {json_out}: {error.strerror or error}")
        note(f"wrote {json_out}")


@dataclass(frozen=True)
class Plan:
    """The cascades asked for: LM and vision depths (None: every layer; 0: none), the seed
    of the re-initialisation and the verdict's threshold."""

    layers: int | None
    vision_layers: int | None
    seed: int
    threshold: float


def _check_output(path: Path, store: Path | None) -> None:
    """``--json`` must name a file in an existing folder, outside the store (the store is
    read only here, and a check must not add files to it)."""
    from engine.errors import InputError
    from engine.inputs import check_text

    check_text(str(path), "The --json path")
    if path.is_dir():
        raise InputError(f"--json {path} is a directory: name a file")
    if not path.parent.is_dir():
        raise InputError(f"--json {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"--json {path}: folder {path.parent} is not writable")
    if store is not None and path.resolve().is_relative_to(store.resolve()):
        raise InputError(f"--json {path} is inside the store {store}: write it elsewhere")


def _from_store(
    model: str, trace_ids: list[str], store: Path, db: str | None, device: str, plan: Plan
) -> SanityReport:
    """Stored traces: ids checked, the store opened read only, the model checked against
    every trace (weights hash before loading), then the cascades."""
    from engine.cli.analyse import _load_if_needed
    from engine.errors import EngineError
    from engine.sanity import case_from_trace
    from store import StoreError, open_store
    from store._paths import check_trace_id

    try:
        ids = list(dict.fromkeys(check_trace_id(t) for t in trace_ids))
    except StoreError as error:
        fail(error)
    if not store.is_dir():
        fail(f"store directory not found: {store}")
    try:
        with open_store(store, db_url=db) as opened:
            missing = [t for t in ids if t not in opened]
            if missing:
                fail(f"no trace {missing[0]} in {store}")
            infos = [opened.get(t) for t in ids]
            _check_depth(model, plan)
            loaded = _load_if_needed(model, infos, device)  # checks every trace's model first
            traces = [opened.open(t) for t in ids]
            try:
                cases = [case_from_trace(loaded, trace) for trace in traces]
            except (EngineError, ValueError) as error:
                fail(error)
            finally:
                for trace in traces:
                    trace.close()
    except StoreError as error:
        fail(error)
    return _run(loaded, cases, plan)


def _from_prompt(
    model: str,
    images: list[Path],
    prompt: str,
    max_new_tokens: int,
    revision: str | None,
    device: str,
    plan: Plan,
) -> SanityReport:
    """A new question: image files, prompt and model checked, then the model's own answer."""
    from engine.cli.record import checked_source
    from engine.errors import EngineError
    from engine.inputs import check_generation, check_prompt, load_image
    from engine.sanity import case_from_prompt
    from store.schema import GenerationSettings

    try:
        generation = check_generation(GenerationSettings(max_new_tokens=max_new_tokens))
        question = check_prompt(prompt)
        pictures = [load_image(path) for path in images]
        source, family = checked_source(
            model,
            revision=revision,
            allow_pickle=False,
            device=device,
            device_map=None,
            quantize=None,
        )
        if len(pictures) > 1 and not family.multi_image:
            fail(f"{family.name} models take one image per prompt; {len(pictures)} were given.")
        _check_depth(model, plan)
        from engine.loading import load_model

        note(f"loading {model} ...")
        loaded = load_model(model, revision=revision, device=device, source=source)
        case = case_from_prompt(loaded, pictures, question, generation)
    except (EngineError, ValueError) as error:
        fail(error)
    return _run(loaded, [case], plan)


def _check_depth(model: str, plan: Plan) -> None:
    """The depths against the layer counts config.json states (a local folder's; a hub
    model's are checked once it is loaded): the LM's, and the vision tower's as an upper
    bound (the layers feeding the LM are known only from the loaded model)."""
    from engine.checkpoint import check_model_source
    from engine.errors import EngineError

    try:
        source = check_model_source(model)
    except EngineError:
        return  # the loader reports it
    count = source.language_layers
    if plan.layers is not None and count is not None and plan.layers > count:
        fail(f"--layers {plan.layers}: the model's language cascade has {count} layers")
    if plan.vision_layers is None or source.folder is None:
        return
    config = json.loads((source.folder / "config.json").read_text(encoding="utf-8"))
    vision = config.get("vision_config")
    count = vision.get("num_hidden_layers") if isinstance(vision, dict) else None
    if isinstance(count, int) and plan.vision_layers > count:
        fail(f"--vision-layers {plan.vision_layers}: the vision tower has {count} layers")


def _run(loaded, cases: list, plan: Plan) -> SanityReport:
    from engine.cli.progress import recording_progress
    from engine.errors import EngineError
    from engine.sanity import LANGUAGE, VISION, cascade_depths, sanity_check

    depths, unavailable = {}, {}
    for tower, wanted in ((LANGUAGE, plan.layers), (VISION, plan.vision_layers)):
        if wanted == 0:
            continue
        try:
            depths[tower] = cascade_depths(loaded, tower, wanted)
        except ValueError as error:
            if wanted is not None or tower == LANGUAGE:
                fail(error)
            unavailable[tower] = str(error)
            note(f"note: {error}")
    try:
        with recording_progress("sanity-check") as progress:
            report = sanity_check(loaded, cases, depths, plan.seed, progress, plan.threshold)
    except EngineError as error:
        fail(error)
    report.unavailable = unavailable
    return report


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _print(report: SanityReport) -> None:
    """One table per cascade: a row per depth (layers re-initialised, top first), a column
    per map holding its mean Spearman correlation with the trained model's map; then the
    top-20 % overlap and the verdict at full depth. Every cell is plain text."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from engine.sanity import CONTROL

    console = Console(highlight=False)
    names, verdicts = report.map_names(), report.verdicts()
    control = [step for step in report.steps if step.tower == CONTROL]
    towers = dict.fromkeys(step.tower for step in report.steps if step.tower != CONTROL)
    for tower in towers or [CONTROL]:
        steps = control + [step for step in report.steps if step.tower == tower]
        title = f"{tower} cascade: Spearman with the trained model's map"
        caption = "top k: the k last layers re-initialised; relevancy.<mode>, attention.head_mean"
        table = Table(title=Text(title), caption=Text(caption))
        table.add_column(Text("top k"), no_wrap=True)
        for name in names:
            table.add_column(Text(name.rsplit(".", 1)[-1]), justify="right")
        for step in steps:
            cells = [_cell(step.maps[n].mean_spearman) if n in step.maps else "-" for n in names]
            table.add_row(*(Text(c) for c in (str(step.depth), *cells)))
        deepest = steps[-1]
        overlap = [_cell(deepest.maps[n].mean_overlap) if n in deepest.maps else "-" for n in names]
        table.add_row(*(Text(c) for c in (f"top-20 % at {deepest.depth}", *overlap)))
        verdict = [verdicts.get(n, {}).get(tower, "-") for n in names]
        table.add_row(*(Text(c) for c in (f"< {report.threshold:g}?", *verdict)))
        console.print(table)
    console.print(
        Text(
            "PASS: the map changed with the weights. FAIL: it still ranks the patches as the "
            "trained model's map did (random ignores the model: a control that must FAIL). "
            "Row 0 is the control, everything re-run unchanged: 1.00 expected. "
            f"Layers, per-token values: --json. Cases: {len(report.cases)}."
        )
    )


def _write_json(path: Path, report: SanityReport) -> None:
    """Written to a temporary file beside ``path`` and renamed: never a half-written file."""
    text = json.dumps(report.to_json(), indent=2, ensure_ascii=False)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
