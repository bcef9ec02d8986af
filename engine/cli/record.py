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
from engine.cli.options import (
    AllowPickle,
    DbUrl,
    Device,
    Dtype,
    LossyStorage,
    MaxNewTokens,
    Revision,
    RowPolicy,
    Sample,
    Seed,
    StoreDir,
    Temperature,
    TopP,
    TrustRemoteCode,
    WeightsDtype,
    WithRelevancy,
    WithVisionAttention,
)
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


class Quantize(str, Enum):
    four_bit = "4bit"
    eight_bit = "8bit"


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
    max_new_tokens: MaxNewTokens = 32,
    sample: Sample = False,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    seed: Seed = 0,
    relevancy: WithRelevancy = True,
    vision_attention: WithVisionAttention = True,
    lossy: LossyStorage = None,
    policy: RowPolicy = None,
    revision: Revision = None,
    dtype: WeightsDtype = Dtype.float32,
    device: Device = "cpu",
    device_map: Annotated[str | None, typer.Option(help="e.g. 'auto' for multi-GPU.")] = None,
    quantize: Annotated[
        Quantize | None,
        typer.Option(help="Load the language model in 4 or 8 bits (bitsandbytes; approximate)."),
    ] = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
    causal: Annotated[
        bool, typer.Option(help="Store CLEANN explanations: every answer token, all heads.")
    ] = False,
    causal_layers: CausalLayers = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated methods to run on the new trace with the loaded model "
            "(occlusion, deletion, insertion, localisation, ...), as `analyse` does."
        ),
    ] = None,
) -> None:
    """Generate an answer and record its full interpretability trace into the store."""
    from engine.checkpoint import check_layers
    from engine.cli.analyse import checked_metrics, run_metrics
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
    classes = checked_metrics(metrics) if metrics is not None else {}
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
            if classes:
                run_metrics(opened, [trace_id], classes, loaded, {}, echo=note, label="metrics")
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
