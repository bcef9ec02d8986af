"""Options shared by the commands that write traces (record, record-dataset, demo)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from engine.inputs import MAX_NEW_TOKENS

StoreDir = Annotated[Path, typer.Option("--store", help="Store directory (created if missing).")]
DbUrl = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy URL of the index (default: SQLite in store).")
]


class Lossy(str, Enum):
    log8 = "log8"
    sparse = "sparse"


class Policy(str, Enum):
    full = "full"
    text_rows = "text_rows"
    answer_rows = "answer_rows"


class Dtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


MaxNewTokens = Annotated[
    int, typer.Option(help=f"Answer length limit; above {MAX_NEW_TOKENS} it is capped.")
]
Sample = Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")]
Temperature = Annotated[float, typer.Option(help="Above 0 when sampling.")]
TopP = Annotated[float, typer.Option(help="0-1.")]
Seed = Annotated[int, typer.Option(help="0 to 2**63-1.")]
WithRelevancy = Annotated[
    bool, typer.Option("--relevancy/--no-relevancy", help="Compute relevancy maps.")
]
WithVisionAttention = Annotated[
    bool,
    typer.Option("--vision-attention/--no-vision-attention", help="Store vision-tower attention."),
]
LossyStorage = Annotated[Lossy | None, typer.Option("--lossy", help="Store attention lossily.")]
RowPolicy = Annotated[
    Policy | None,
    typer.Option(
        "--policy",
        help="LM attention rows to keep: full, text_rows (all but image-token rows) or "
        "answer_rows. Default: full when it fits in ~1 GiB, else the largest that does.",
    ),
]
Revision = Annotated[
    str | None, typer.Option(help="Hub revision (branch, tag, commit); hub ids only.")
]
WeightsDtype = Annotated[Dtype, typer.Option("--dtype", help="Weights' precision.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")]
TrustRemoteCode = Annotated[
    bool, typer.Option(help="Run the model repo's own Python code (off: safer).")
]
AllowPickle = Annotated[
    bool,
    typer.Option(help="Load pickle weights (*.bin) when no safetensors exist: runs code."),
]
