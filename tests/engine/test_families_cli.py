"""``lvlm-interpret families``: one row per registered adapter, read from the adapter classes."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

import engine.adapters.base as adapters_base
from engine.adapters import VlmAdapter
from engine.cli import app
from engine.cli.families import COLUMNS, family_rows, render
from tests.engine.families.builders import FAMILIES, build_tokenizer

runner = CliRunner()


def _json_rows() -> list[dict]:
    result = runner.invoke(app, ["families", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_family_built_offline_is_served_by_exactly_one_row():
    served = [t for row in _json_rows() for t in row["model_types"]]
    assert len(served) == len(set(served))
    for spec in FAMILIES.values():
        model_type = spec.config(spec.tokenizer() if spec.tokenizer else build_tokenizer(spec))
        assert model_type.model_type in served, spec.name


def test_rows_state_what_the_families_are_known_to_do():
    """Facts from the models themselves (docs/add-a-family.md, families findings): only
    Mllama reads the image through cross-attention; Gemma 3 and PaliGemma attend both ways."""
    rows = {row["family"]: row for row in _json_rows()}
    assert [name for name, row in rows.items() if row["cross_attention"]] == ["mllama"]
    masks = {name: row["lm_mask"] for name, row in rows.items() if row["lm_mask"] != "causal"}
    assert masks == {"gemma3": "image blocks", "paligemma": "prefix"}
    assert all(row["vision_attention"] for row in rows.values())
    every = ["llm", "vision", "all", "llm_through_vision"]
    # The seed's "all" reads the LM's image-by-image block, which Mllama's sequence lacks.
    modes = {name: row["relevancy_modes"] for name, row in rows.items()}
    assert modes == {name: every if name != "mllama" else every[:2] + every[3:] for name in rows}


class _Toy(VlmAdapter):
    name = "toy"
    model_types = ("toy_vlm", "toy_vlm_2")
    language_layers_path = "model.layers"
    lm_mask = "prefix"
    vision_attention = False

    def cross_attention_modules(self):
        return []


class _SeeingToy(_Toy):
    name = "seeing_toy"
    model_types = ("seeing_toy",)
    vision_attention = True


def test_a_newly_registered_adapter_appears_with_what_it_records(monkeypatch):
    monkeypatch.setitem(adapters_base._ADAPTERS, _Toy.name, _Toy)
    (toy,) = [row for row in family_rows() if row.family == "toy"]
    assert toy.model_types == ["toy_vlm", "toy_vlm_2"] and toy.lm_mask == "prefix"
    assert toy.cross_attention and not toy.vision_attention and not toy.multi_image
    assert toy.relevancy_modes == ["llm"]  # the other modes need the vision attention
    monkeypatch.setitem(adapters_base._ADAPTERS, _SeeingToy.name, _SeeingToy)
    (seeing,) = [row for row in family_rows() if row.family == "seeing_toy"]
    assert seeing.vision_attention  # cross-attention relevancy has no "all" (the seed's map)
    assert seeing.relevancy_modes == ["llm", "vision", "llm_through_vision"]


def test_plain_output_is_one_tab_separated_line_per_family():
    result = runner.invoke(app, ["families"])  # not a terminal
    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert header.split("\t") == list(COLUMNS.values())
    rows = _json_rows()
    assert [line.split("\t")[0] for line in lines] == [row["family"] for row in rows]
    assert all(len(line.split("\t")) == len(COLUMNS) for line in lines)


@pytest.mark.parametrize("differ", [False, True])
def test_terminal_table_states_shared_relevancy_modes_once(monkeypatch, differ):
    registry = {"toy": _Toy, "seeing_toy": _SeeingToy} if differ else {"toy": _Toy}
    monkeypatch.setattr(adapters_base, "_ADAPTERS", registry)
    out = io.StringIO()
    render(family_rows(), Console(file=out, force_terminal=True, width=160, color_system=None))
    text = out.getvalue()
    assert f"{len(registry)} model families" in text
    assert ("relevancy modes, every family: llm" in text) is not differ
    assert ("relevancy modes" in text.splitlines()[2]) is differ  # the header row's column
