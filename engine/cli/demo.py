"""``lvlm-interpret demo ...``: the bundled shapes-world model: train, evaluate, record."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.cli.messages import fail, note
from engine.cli.options import DbUrl, StoreDir
from engine.cli.record import CausalLayers
from engine.demo.checkpoints import BOTH, DEMO_CHECKPOINTS, checkpoint_folders

CHECKPOINT = DEMO_CHECKPOINTS["main"].folder
DEMO_MODEL_ID = DEMO_CHECKPOINTS["main"].model_id
CHECKPOINT_HELP = (
    f"A bundled checkpoint ({', '.join(DEMO_CHECKPOINTS)}) or a checkpoint folder "
    "(./main for a folder of that name)."
)
app = typer.Typer(help="The bundled demo LVLM and its shapes world.", no_args_is_help=True)
console = Console()


@app.command()
def train(
    recipe: Annotated[
        str, typer.Option(help=f"The recipe: {', '.join(DEMO_CHECKPOINTS)} (its checkpoint).")
    ] = "main",
    out: Annotated[
        Path | None, typer.Option(help="Where to save the checkpoint (default: the bundled one).")
    ] = None,
    seed: int = 0,
) -> None:
    """Reproduce a bundled demo checkpoint from a seed (main: about half an hour on 2 CPU
    cores; weak, the main recipe stopped at answer step 950: under half of that)."""
    if recipe not in DEMO_CHECKPOINTS:
        fail(f"--recipe {recipe!r} is not one of {', '.join(DEMO_CHECKPOINTS)}")
    from dataclasses import replace

    from engine.checkpoint import name_checkpoint
    from engine.demo.train import RECIPES
    from engine.demo.train import train as train_model

    bundled = DEMO_CHECKPOINTS[recipe]
    out = out or bundled.folder
    train_model(replace(RECIPES[recipe], seed=seed), out, log=console.print)
    name_checkpoint(out, bundled.model_id)
    console.print(f"saved to {out}")


@app.command()
def evaluate(
    checkpoint: Annotated[str, typer.Option(help=CHECKPOINT_HELP)] = "main",
    per_kind: Annotated[int, typer.Option(min=1, help="Held-out questions per kind.")] = 100,
) -> None:
    """Exact-match accuracy of greedy answers on held-out questions, per question kind
    (the same questions for every checkpoint)."""
    from engine.demo.evaluate import generation_accuracy
    from engine.errors import EngineError
    from engine.loading import load_model

    if checkpoint == BOTH:
        fail("--checkpoint both applies to demo record; evaluate one checkpoint at a time")
    (folder,) = checkpoint_folders([checkpoint])
    try:
        loaded = load_model(str(folder))
    except EngineError as error:
        fail(error)
    console.print(f"{escape(loaded.model_id)} ({loaded.revision[:12]})")
    table = Table("question kind", "correct", "total", "accuracy")
    for row in generation_accuracy(loaded.model, loaded.processor, per_kind).values():
        table.add_row(row.kind, str(row.correct), str(row.total), f"{row.accuracy:.1%}")
    console.print(table)


@app.command()
def manifest(
    out: Annotated[Path, typer.Option(help="Folder for the images and manifest.jsonl.")],
    count: Annotated[int, typer.Option(min=1, help="Number of rows (one per question).")] = 10,
    seed: int = 7,
) -> None:
    """Write shapes-world images and a manifest for `record-dataset` (the items `demo record`
    records with the same seed)."""
    from engine.demo.world import write_manifest

    try:
        typer.echo(write_manifest(out, count, seed))
    except FileExistsError:
        fail(f"{out / 'manifest.jsonl'} exists; choose another --out")
    except OSError as error:
        fail(f"cannot write to {out}: {error.strerror}")


@app.command("record")
def record_demo(
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    count: Annotated[int, typer.Option(min=1, help="Number of traces (one per question).")] = 10,
    seed: int = 7,
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(
            help=f"{CHECKPOINT_HELP} Repeat it, or say {BOTH}, to record the same questions "
            "on several checkpoints (default: main)."
        ),
    ] = None,
    causal: Annotated[
        bool, typer.Option(help="Store CLEANN explanations: every answer token, all heads.")
    ] = True,
    causal_layers: CausalLayers = None,
    metrics: Annotated[
        str | None,
        typer.Option(help="Comma-separated methods to run on each trace, as `record` does."),
    ] = None,
) -> None:
    """Record demo traces of held-out scenes, with ground truth and reference answers; the
    same questions on each checkpoint, so the dashboard can compare them pair by pair."""
    from engine.checkpoint import check_layers, check_model_source
    from engine.cli.analyse import checked_metrics, run_metrics
    from engine.errors import EngineError
    from store import StoreError, open_store

    classes = checked_metrics(metrics) if metrics is not None else {}
    try:
        sources = [
            check_model_source(str(folder)) for folder in checkpoint_folders(checkpoint or ["main"])
        ]
        with open_store(store, db_url=db, writable=True) as opened:
            from engine.loading import load_model  # torch: after the store is known to open

            for source in sources:
                loaded = load_model(str(source.folder), source=source)
                if causal and causal_layers:
                    count_layers = len(loaded.adapter.language_attention_modules())
                    check_layers(causal_layers, count_layers, "--causal-layers")
                if len(sources) > 1:
                    console.print(f"[bold]{escape(loaded.model_id)}[/bold]")
                layers = tuple(causal_layers or ()) if causal else None
                ids = _record_questions(opened, loaded, count, seed, layers)
                if classes:
                    run_metrics(opened, ids, classes, loaded, {}, echo=note)
    except (EngineError, StoreError) as error:
        fail(error)


def _record_questions(
    opened, loaded, count: int, seed: int, causal: tuple[int, ...] | None
) -> list[str]:
    """Record ``count`` held-out questions (``demo_items(count, seed)``) with one model;
    ``causal``: the layers to explain (empty: every layer), None: no explanations. Returns
    the trace ids, in question order."""
    from engine.cli.progress import recording_progress
    from engine.demo.world import demo_items
    from engine.inputs import load_image
    from engine.recording import RecordRequest, record_into_store

    ids = []
    for index, (scene, question) in enumerate(demo_items(count, seed)):
        request = RecordRequest(
            (load_image(scene.image, f"scene-{scene.seed}.png"),),
            question.text,
            reference=question.answer,
            tags=("demo", question.kind),
            extra={
                "ground_truth": scene.ground_truth(),
                "question_kind": question.kind,
                "hallucination_bait": question.hallucination_bait,
            },
            causal=causal,
        )
        with recording_progress(f"{index + 1}/{count}") as progress:
            recorded = record_into_store(opened, loaded, request, progress)
        ids.append(recorded.trace_id)
        if recorded.info is None:
            console.print(f"= {escape(question.text)} (already stored)")
            continue
        mark = "[green]✓[/green]" if recorded.info.correct else "[red]✗[/red]"
        answer = escape(repr(recorded.info.answer))
        console.print(f"{mark} {escape(question.text)} -> {answer}")
    return ids
