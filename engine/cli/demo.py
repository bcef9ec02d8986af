"""``lvlm-interpret demo ...``: the bundled shapes-world model: train, evaluate, record."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.cli.messages import fail
from engine.cli.options import DbUrl, StoreDir
from engine.cli.record import CausalLayers

CHECKPOINT = Path(__file__).resolve().parents[1] / "demo" / "checkpoint"
DEMO_MODEL_ID = "lvlm-interpret/shapes-demo"  # the name the bundled checkpoint's config carries
app = typer.Typer(help="The bundled demo LVLM and its shapes world.", no_args_is_help=True)
console = Console()


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Where to save the checkpoint.")] = CHECKPOINT,
    seed: int = 0,
) -> None:
    """Reproduce the demo checkpoint from a seed (about an hour on 2 CPU cores)."""
    from engine.checkpoint import name_checkpoint
    from engine.demo.train import Recipe
    from engine.demo.train import train as train_model

    train_model(Recipe(seed=seed), out, log=console.print)
    name_checkpoint(out, DEMO_MODEL_ID)
    console.print(f"saved to {out}")


@app.command()
def evaluate(
    checkpoint: Path = CHECKPOINT,
    per_kind: Annotated[int, typer.Option(help="Held-out questions per kind.")] = 100,
) -> None:
    """Exact-match accuracy of greedy answers on held-out questions, per question kind."""
    from engine.demo.evaluate import generation_accuracy
    from engine.errors import EngineError
    from engine.loading import load_model

    try:
        loaded = load_model(str(checkpoint))
    except EngineError as error:
        fail(error)
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
    checkpoint: Path = CHECKPOINT,
    causal: Annotated[
        bool, typer.Option(help="Store CLEANN explanations: every answer token, all heads.")
    ] = True,
    causal_layers: CausalLayers = None,
) -> None:
    """Record demo traces of held-out scenes, with ground truth and reference answers."""
    from engine.checkpoint import check_layers
    from engine.cli.progress import recording_progress
    from engine.demo.world import demo_items
    from engine.errors import EngineError
    from engine.inputs import load_image
    from store import StoreError, open_store

    try:
        with open_store(store, db_url=db, writable=True) as opened:
            from engine.loading import load_model  # torch: after the store is known to open
            from engine.recording import RecordRequest, record_into_store

            loaded = load_model(str(checkpoint))
            if causal and causal_layers:
                count_layers = len(loaded.adapter.language_attention_modules())
                check_layers(causal_layers, count_layers, "--causal-layers")
            for index, (scene, question) in enumerate(demo_items(count, seed)):
                request = RecordRequest(
                    (load_image(scene.image, f"scene-{scene.seed}.png"),),
                    question.text,
                    reference=question.answer,
                    tags=("demo", question.kind),
                    extra={"ground_truth": scene.ground_truth(), "question_kind": question.kind},
                    causal=tuple(causal_layers or ()) if causal else None,
                )
                with recording_progress(f"{index + 1}/{count}") as progress:
                    recorded = record_into_store(opened, loaded, request, progress)
                if recorded.info is None:
                    console.print(f"= {escape(question.text)} (already stored)")
                    continue
                mark = "[green]✓[/green]" if recorded.info.correct else "[red]✗[/red]"
                answer = escape(repr(recorded.info.answer))
                console.print(f"{mark} {escape(question.text)} -> {answer}")
    except (EngineError, StoreError) as error:
        fail(error)
