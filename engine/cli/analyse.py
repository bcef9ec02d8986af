"""``lvlm-interpret analyse``: run faithfulness methods on stored traces, store their results.

Everything is checked before a model loads: the method names, the numbers, the trace ids,
the store, each trace's presence, and, only when a chosen method re-runs the model, that
``--model`` is the model that recorded every trace (a local folder's weights hash against the
trace's revision, read without loading the weights). A trace a method cannot score (no
ground-truth box, say) is skipped with a note. Results go through the one channel
(:func:`methods.save_result`): a re-run replaces the same key, so the command is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from engine.cli.messages import fail, note
from engine.cli.options import DbUrl, Device

# Named here rather than read from the registry: the registry of model methods imports torch,
# and `--help` must stay instant. tests/engine/test_cli.py checks both lists against it.
METHOD_NAMES = (
    "cleann",
    "occlusion",
    "localisation",
    "deletion",
    "insertion",
    "grounding",
    "evidence",
)
MODEL_METHODS = ("occlusion", "deletion", "insertion", "grounding")

MetricsOption = Annotated[
    str,
    typer.Option(
        "--metrics",
        help="Comma-separated methods, run maps first: "
        + ", ".join(METHOD_NAMES)
        + " ("
        + ", ".join(MODEL_METHODS)
        + " re-run the model: give --model).",
    ),
]


def analyse(
    trace_ids: Annotated[list[str], typer.Argument(help="Ids of stored traces.")],
    store: Annotated[Path, typer.Option("--store", help="Store directory (must exist).")],
    metrics: MetricsOption = "localisation",
    model: Annotated[
        str | None,
        typer.Option(help="The checkpoint that recorded the traces (methods that re-run it)."),
    ] = None,
    steps: Annotated[
        int, typer.Option(min=1, max=256, help="Perturbation steps over the patches.")
    ] = 16,
    batch: Annotated[
        int, typer.Option(min=1, max=4096, help="Perturbed images per forward pass.")
    ] = 64,
    db: DbUrl = None,
    device: Device = "cpu",
) -> None:
    """Run analysis methods on stored traces and store their results: maps (CLEANN,
    occlusion), scores of every map (localisation, deletion, insertion), visual grounding and
    hallucination flags, and the consolidated evidence map."""
    from methods import needs_model
    from store import StoreError, open_store
    from store._paths import check_trace_id

    try:
        classes = checked_metrics(metrics)
        ids = list(dict.fromkeys(check_trace_id(t) for t in trace_ids))
    except StoreError as error:
        fail(error)
    if not store.is_dir():
        fail(f"store directory not found: {store}")
    modelled = needs_model(list(classes))
    if modelled and model is None:
        fail(f"{', '.join(modelled)} re-run the model: give --model (the recording checkpoint)")
    try:
        with open_store(store, db_url=db, writable=True) as opened:
            missing = [t for t in ids if t not in opened]
            if missing:
                fail(f"no trace {missing[0]} in {store}")
            infos = [opened.get(t) for t in ids]
            loaded = _load_if_needed(model, infos, device) if modelled else None
            run_metrics(opened, ids, classes, loaded, {"steps": steps, "batch": batch})
    except StoreError as error:
        fail(error)


def _load_if_needed(model: str | None, infos: list, device: str):
    """The recording model, after checking it is the one every trace names (weights hash of
    a local folder, before loading) and that the traces agree on the dtype they used."""
    from engine.checkpoint import check_model_source, weights_revision
    from engine.errors import EngineError
    from methods.base import model_mismatch

    try:
        source = check_model_source(str(model))
        revision = weights_revision(source.weights) if source.folder is not None else None
        name = source.name if source.folder is not None else str(model)
        for info in infos:
            wrong = model_mismatch(info, name, revision)
            if wrong:
                fail(wrong)
        dtypes = {(i.extra.get("loading") or {}).get("dtype", "float32") for i in infos}
        if len(dtypes) > 1:
            fail(f"the traces were recorded in different dtypes ({', '.join(sorted(dtypes))})")
        from engine.loading import check_device, load_model

        check_device(device)
        loaded = load_model(str(model), source=source, dtype=dtypes.pop(), device=device)
    except EngineError as error:
        fail(error)
    for info in infos:  # a hub id's commit is known only once resolved
        wrong = model_mismatch(info, loaded.model_id, loaded.revision)
        if wrong:
            fail(wrong)
    return loaded


def checked_metrics(metrics: str) -> dict:
    """``--metrics`` as method classes, or one line and exit 2 (before any model loads)."""
    from engine.methods.runner import chosen_methods

    try:
        return chosen_methods(metrics)
    except (KeyError, ValueError) as error:
        fail(str(error).strip("'\""))


def run_metrics(
    opened,
    ids: list[str],
    classes: dict,
    loaded,
    overrides: dict,
    echo: Callable[[str], None] = typer.echo,
    label: str = "analyse",
) -> None:
    """Every applicable (trace, method) pair in stage order, one progress step each, stored as
    it ends; ``echo`` gets one ``<trace id> <kind>: <key>`` line per stored result (``record``
    sends them to stderr: its stdout is the trace id alone)."""
    from engine.cli.progress import recording_progress
    from engine.methods.runner import plan, run_jobs

    jobs, skipped = plan(opened, ids, classes)
    for line in skipped:
        note(line)
    with recording_progress(label) as progress:
        try:
            for trace_id, result, key in run_jobs(opened, jobs, loaded, overrides, progress):
                echo(f"{trace_id} {result.kind}: {escape(key)}")
        except ValueError as error:
            fail(error)
