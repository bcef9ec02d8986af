"""``lvlm-interpret families``: the model families this install can record, and what each records.

Every row is read from a registered adapter class (engine/adapters/), so the table cannot
drift from the code: a family added there appears here without another edit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

COLUMNS = {  # field -> header
    "family": "family",
    "model_types": "model types",
    "lm_mask": "LM mask",
    "vision_attention": "vision attn",
    "cross_attention": "cross-attn",
    "multi_image": "multi-image",
    "relevancy_modes": "relevancy modes",
}


@dataclass(frozen=True)
class FamilyRow:
    """What one adapter records; every trace also holds the LM's self-attention."""

    family: str
    model_types: list[str]  # ``config.model_type`` values it serves
    lm_mask: str  # "causal", "prefix" or "image blocks"
    vision_attention: bool  # the vision tower's attention, per layer and sequence
    cross_attention: bool  # LM -> vision cross-attention blocks (Mllama)
    multi_image: bool  # several images in one prompt
    relevancy_modes: list[str]

    def cells(self) -> list[str]:
        values = asdict(self)
        return [_cell(values[field]) for field in COLUMNS]


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(value)
    return str(value)


def family_rows() -> list[FamilyRow]:
    """One row per registered adapter, by family name.

    An adapter records vision attention when it says so (``vision_attention``) and
    cross-attention when it names cross-attention modules (a base-class hook it overrides). Its
    relevancy modes are the maps its relevancy computation returns (engine/relevancy.py, or
    engine/cross_relevancy.py for cross-attention families); all but ``llm`` need the vision
    attention.
    """
    from engine.adapters import VlmAdapter, list_adapters
    from engine.cross_relevancy import CrossRelevancyMaps
    from engine.relevancy import RelevancyMaps
    from store.schema import RelevancyMode

    def overrides(cls: type[VlmAdapter], method: str) -> bool:
        return getattr(cls, method) is not getattr(VlmAdapter, method)

    rows = []
    for cls in list_adapters():
        vision = cls.vision_attention
        cross = overrides(cls, "cross_attention_modules")
        maps = {f.name for f in fields(CrossRelevancyMaps if cross else RelevancyMaps)}
        modes = [m.value for m in RelevancyMode if m.value in maps]
        rows.append(
            FamilyRow(
                family=cls.name,
                model_types=list(cls.model_types),
                lm_mask=cls.lm_mask,
                vision_attention=vision,
                cross_attention=cross,
                multi_image=cls.multi_image,
                relevancy_modes=modes if vision else [RelevancyMode.LLM.value],
            )
        )
    return rows


def render(rows: list[FamilyRow], console: Console) -> None:
    """A table on a terminal; tab-separated lines (a header, then one per family) otherwise,
    for ``grep`` and ``cut``. The table states relevancy modes shared by every family once,
    under it, rather than repeating them on each row."""
    if not console.is_terminal:
        for cells in [list(COLUMNS.values()), *(row.cells() for row in rows)]:
            console.file.write("\t".join(cells) + "\n")  # Rich would expand the tabs
        return
    modes = {_cell(row.relevancy_modes) for row in rows}
    shown = [field for field in COLUMNS if field != "relevancy_modes" or len(modes) > 1]
    table = Table(title=f"{len(rows)} model families")
    for field in shown:
        table.add_column(COLUMNS[field], no_wrap=field in ("family", "model_types"))
    for row in rows:
        cells = dict(zip(COLUMNS, row.cells(), strict=True))
        table.add_row(*(Text(cells[field]) for field in shown))
    if len(modes) == 1:
        table.caption = Text(f"relevancy modes, every family: {modes.pop()}")
    console.print(table)


def families(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON list of families, for machines.")
    ] = False,
) -> None:
    """List the supported model families and what a trace of each records."""
    rows = family_rows()
    if as_json:
        typer.echo(json.dumps([asdict(row) for row in rows], indent=2))
        return
    render(rows, Console())
