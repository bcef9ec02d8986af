"""``lvlm-interpret record``: one or more images + one prompt -> one stored trace.

Every input is checked before the model loads (text, settings, image, checkpoint folder,
device) and the store is opened next, so a mistake costs seconds, not a whole recording.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from engine.cli.messages import fail, note
from engine.cli.options import DbUrl, StoreDir
from engine.inputs import MAX_NEW_TOKENS

if TYPE_CHECKING:
    from engine.adapters.base import VlmAdapter
    from engine.checkpoint import ModelSource

CausalLayers = Annotated[
    list[int] | None,
    typer.Option(
        help="Layer for --causal (repeatable; negative counts from the end). Default: last."
    ),
]


class Lossy(str, Enum):
    log8 = "log8"
    sparse = "sparse"


class Policy(str, Enum):
    full = "full"
    text_rows = "text_rows"
    answer_rows = "answer_rows"


class Quantize(str, Enum):
    four_bit = "4bit"
    eight_bit = "8bit"


class Dtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


def checked_source(
    model: str,
    *,
    revision: str | None,
    allow_pickle: bool,
    device: str,
    device_map: str | None,
    quantize: Quantize | None,
) -> tuple[ModelSource, type[VlmAdapter]]:
    """The model's source and family, and the load options, checked before anything loads
    (torch is imported here, after the cheap checks of the caller)."""
    from engine.checkpoint import check_model_source

    source = check_model_source(model, revision=revision, allow_pickle=allow_pickle)
    from engine.loading import check_family, check_load_options, resolve_source

    check_load_options(
        device=device, device_map=device_map, quantize=quantize.value if quantize else None
    )
    source = resolve_source(source, revision)
    return source, check_family(source)


def record(
    model: Annotated[str, typer.Option(help="Hub id or local checkpoint folder.")],
    image: Annotated[
        list[Path],
        typer.Option(help="Image file (PNG, JPEG, WebP, ...); repeat for a multi-image prompt."),
    ],
    prompt: Annotated[str, typer.Option(help="Question about the image.")],
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    reference: Annotated[
        str | None, typer.Option(help="Expected answer; the trace records correctness.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tag the trace (repeatable).")] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help=f"Answer length limit; above {MAX_NEW_TOKENS} it is capped.")
    ] = 32,
    sample: Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(help="Above 0 when sampling.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="0-1.")] = 1.0,
    seed: Annotated[int, typer.Option(help="0 to 2**63-1.")] = 0,
    relevancy: Annotated[bool, typer.Option(help="Compute relevancy maps.")] = True,
    vision_attention: Annotated[bool, typer.Option(help="Store vision-tower attention.")] = True,
    lossy: Annotated[Lossy | None, typer.Option(help="Store attention lossily.")] = None,
    policy: Annotated[
        Policy | None,
        typer.Option(
            help="LM attention rows to keep: full, text_rows (all but image-token rows) or "
            "answer_rows. Default: full when it fits in ~1 GiB, else the largest that does."
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="Hub revision (branch, tag, commit); hub ids only.")
    ] = None,
    dtype: Annotated[Dtype, typer.Option(help="Weights' precision.")] = Dtype.float32,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    device_map: Annotated[str | None, typer.Option(help="e.g. 'auto' for multi-GPU.")] = None,
    quantize: Annotated[
        Quantize | None,
        typer.Option(help="Load the language model in 4 or 8 bits (bitsandbytes; approximate)."),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Run the model repo's own Python code (off: safer).")
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(help="Load pickle weights (*.bin) when no safetensors exist: runs code."),
    ] = False,
    causal: Annotated[
        bool, typer.Option(help="Store CLEANN explanations: every answer token, all heads.")
    ] = False,
    causal_layers: CausalLayers = None,
) -> None:
    """Generate an answer and record its full interpretability trace into the store."""
    from engine.checkpoint import check_layers
    from engine.cli.progress import recording_progress
    from engine.errors import EngineError
    from engine.inputs import (
        check_generation,
        check_prompt,
        check_reference,
        check_tags,
        check_text,
        load_image,
    )
    from store import StoreError, open_store
    from store.schema import GenerationSettings, RecordingPolicy

    if max_new_tokens > MAX_NEW_TOKENS:
        note(f"note: --max-new-tokens {max_new_tokens} capped at {MAX_NEW_TOKENS}")
        max_new_tokens = MAX_NEW_TOKENS
    try:
        settings = check_generation(
            GenerationSettings(
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )
        )
        question = check_prompt(prompt)
        reference = check_reference(reference)
        tags = check_tags(tag or ())
        check_text(str(store), "The --store path")
        if db is not None:
            check_text(db, "The --db URL")
        pictures = [load_image(path) for path in image]
        source, family = checked_source(
            model,
            revision=revision,
            allow_pickle=allow_pickle,
            device=device,
            device_map=device_map,
            quantize=quantize,
        )
        from engine.loading import load_model

        if len(pictures) > 1 and not family.multi_image:
            fail(f"{family.name} models take one image per prompt; {len(pictures)} were given.")
        if causal and causal_layers and source.language_layers is not None:
            check_layers(causal_layers, source.language_layers, "--causal-layers")
        with open_store(store, db_url=db, writable=True) as opened:
            from engine.recorder import RecordOptions
            from engine.recording import RecordRequest, record_into_store

            note(f"loading {model} ...")
            loaded = load_model(
                model,
                revision=revision,
                dtype=dtype.value,
                device=device,
                device_map=device_map,
                quantize=quantize.value if quantize else None,
                trust_remote_code=trust_remote_code,
                allow_pickle=allow_pickle,
                source=source,
            )
            if causal and causal_layers:  # a hub model's config is known only now
                count = len(loaded.adapter.language_attention_modules())
                check_layers(causal_layers, count, "--causal-layers")
            options = RecordOptions(
                settings,
                relevancy=relevancy,
                vision_attention=vision_attention,
                policy=RecordingPolicy(policy.value) if policy else None,
            )
            request = RecordRequest(
                tuple(pictures),
                question,
                options,
                reference=reference,
                tags=tuple(tags),
                lossy=lossy.value if lossy else None,
                causal=tuple(causal_layers or ()) if causal else None,
            )
            label = " + ".join(picture.name for picture in pictures)
            with recording_progress(label) as progress:
                recorded = record_into_store(opened, loaded, request, progress)
            trace_id = recorded.trace_id
            if recorded.info is None:
                note(f"already stored (same model, images, prompt and settings): {trace_id}")
            info = recorded.info or opened.get(trace_id)
    except (EngineError, StoreError) as error:
        fail(error)
    kept = info.extra["recording"]["policy"]
    if policy is None and kept != RecordingPolicy.FULL.value:
        note(
            f"note: the full LM attention would exceed 1 GiB, so only its '{kept}' rows are "
            "stored; --policy full keeps every row"
        )
    note(f"answer: {info.answer!r}")
    typer.echo(trace_id)
