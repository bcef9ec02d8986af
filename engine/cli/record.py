"""``lvlm-interpret record``: one image + one prompt -> one stored trace."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from engine.cli.options import DbUrl, StoreDir

if TYPE_CHECKING:
    from store import TraceStore

console = Console(stderr=True)
CausalLayers = Annotated[
    list[int] | None,
    typer.Option(
        help="Layer for --causal (repeatable; negative counts from the end). Default: last."
    ),
]


def store_causal(store: TraceStore, trace_id: str, layers: list[int] | None, label: str) -> None:
    """CLEANN for every answer token and head of ``layers``, stored with the trace.

    A bad layer is reported and ends the command, but the trace itself stays stored.
    """
    from engine.causal.trace import record_causal
    from engine.cli.progress import recording_progress

    with recording_progress(label) as progress:
        try:
            record_causal(
                store, trace_id, layers, on_progress=lambda d, t: progress("causal", d, t)
            )
        except IndexError as error:
            console.print(
                f"[red]error:[/red] --causal-layers: {error} (trace {trace_id} is stored)"
            )
            raise typer.Exit(2) from None


def record(
    model: Annotated[str, typer.Option(help="Hub id or local checkpoint folder.")],
    image: Annotated[Path, typer.Option(help="Image file (PNG, JPEG, WebP, ...).")],
    prompt: Annotated[str, typer.Option(help="Question about the image.")],
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    reference: Annotated[
        str | None, typer.Option(help="Expected answer; the trace records correctness.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tag the trace (repeatable).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    sample: Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: int = 0,
    relevancy: Annotated[bool, typer.Option(help="Compute relevancy maps.")] = True,
    vision_attention: Annotated[bool, typer.Option(help="Store vision-tower attention.")] = True,
    lossy: Annotated[
        str | None, typer.Option(help="Store attention lossily: 'log8' or 'sparse'.")
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="Hub revision (branch, tag, commit).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    device_map: Annotated[str | None, typer.Option(help="e.g. 'auto' for multi-GPU.")] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Run the model repo's own Python code (off: safer).")
    ] = False,
    causal: Annotated[
        bool, typer.Option(help="Store CLEANN explanations: every answer token, all heads.")
    ] = False,
    causal_layers: CausalLayers = None,
) -> None:
    """Generate an answer and record its full interpretability trace into the store."""
    from engine.cli.progress import recording_progress
    from engine.errors import EngineError
    from engine.inputs import load_image
    from engine.loading import load_model
    from engine.recorder import RecordOptions
    from engine.recorder import record as record_trace
    from store import StoreError, open_store
    from store.schema import GenerationSettings

    settings = GenerationSettings(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    try:
        picture = load_image(image)
        with console.status(f"Loading {model} ..."):
            loaded = load_model(
                model,
                revision=revision,
                dtype=dtype,
                device=device,
                device_map=device_map,
                trust_remote_code=trust_remote_code,
            )
        with recording_progress(image.name) as progress:
            trace = record_trace(
                loaded,
                picture,
                prompt,
                RecordOptions(settings, relevancy=relevancy, vision_attention=vision_attention),
                reference_answer=reference,
                tags=tag or (),
                progress=progress,
            )
        with open_store(store, db_url=db, mode="a") as opened:
            trace_id = opened.add(trace, lossy=lossy or False)
            if causal:
                store_causal(opened, trace_id, causal_layers, image.name)
    except (EngineError, StoreError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(f"answer: {trace.info.answer!r}")
    typer.echo(trace_id)
