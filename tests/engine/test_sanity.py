"""The sanity check (cascading randomisation, Adebayo et al. 2018) on the bundled demo model and
real demo traces: the control re-run gives a correlation of exactly 1.0, randomising the
LM's layers makes the relevancy maps lose their ranking, a map that ignores the model fails,
the model is left as it was, and ``lvlm-interpret sanity-check`` checks every input first
(one line, exit code 2) and never writes to the store."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from engine.cli import app
from engine.sanity import (
    CONTROL,
    HEAD_MEAN,
    LANGUAGE,
    VISION,
    case_from_trace,
    explanation_maps,
    reinitialise,
    sanity_check,
    spearman,
    top_overlap,
    tower_layers,
)
from methods.maps import MapChoice, candidate_maps
from store import open_store
from tests.engine.test_cli_hostile import assert_one_line_error, run_cli

RELEVANCY = ("relevancy.llm", "relevancy.vision", "relevancy.all", "relevancy.llm_through_vision")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """Two demo questions (colour, shape) recorded by ``demo record``."""
    store = tmp_path_factory.mktemp("sanity") / "store"
    args = ["demo", "record", "--store", str(store), "--count", "2", "--no-causal"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open_store(store) as opened:
        items = sorted(opened.query().items, key=lambda i: i.created_at)
    return store, [i.trace_id for i in items]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cases(demo_store, demo_model):
    store, ids = demo_store
    with open_store(store) as opened:
        traces = [opened.open(t) for t in ids]
        yield [case_from_trace(demo_model, trace) for trace in traces], traces
        for trace in traces:
            trace.close()


def test_maps_are_the_recorders(cases, demo_model):
    """The maps the check compares are the stored trace's own: relevancy recomputed on the
    stored answer equals the stored relevancy; the head mean equals methods.maps' (from fp16
    attention)."""
    for case, trace in zip(*cases, strict=True):
        ours = explanation_maps(demo_model, case)
        stored = candidate_maps(trace, MapChoice())
        for name in RELEVANCY:
            np.testing.assert_allclose(ours[name], stored[name], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(ours[HEAD_MEAN], stored[HEAD_MEAN], atol=2e-3)


def test_cascade_changes_relevancy_and_control_is_exact(cases, demo_model):
    before = {name: p.detach().clone() for name, p in demo_model.model.named_parameters()}
    report = sanity_check(demo_model, cases[0], {LANGUAGE: 4, VISION: 1}, seed=0)
    after = dict(demo_model.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before), "weights not restored"

    control = [s for s in report.steps if s.tower == CONTROL]
    assert len(control) == 1 and control[0].layers == []
    for name, scores in control[0].maps.items():  # re-running with nothing changed: exact
        assert all(v == 1.0 for row in scores.spearman for v in row), name
        assert scores.mean_overlap == 1.0
    language = [s for s in report.steps if s.tower == LANGUAGE]
    assert [s.layers for s in language] == [[3], [3, 2], [3, 2, 1], [3, 2, 1, 0]]
    assert all("LlamaModel" in init for s in language for init in s.init)
    deepest = language[-1]
    table = {s.depth: {n: round(m.mean_spearman, 3) for n, m in s.maps.items()} for s in language}
    print(table)  # the cascade, for the record (not asserted step by step)
    for name in (*RELEVANCY, HEAD_MEAN):
        assert deepest.maps[name].mean_spearman < 0.5, (name, table)
    # monotone-ish: the full cascade keeps less of the relevancy ranking than its first step
    first = np.mean([language[0].maps[n].mean_spearman for n in RELEVANCY])
    last = np.mean([deepest.maps[n].mean_spearman for n in RELEVANCY])
    assert last < first, table
    verdicts = report.verdicts()
    assert verdicts["random"] == {LANGUAGE: "FAIL", VISION: "FAIL"}  # ignores the model
    assert all(verdicts[n][LANGUAGE] == "PASS" for n in RELEVANCY)
    vision = [s for s in report.steps if s.tower == VISION]
    assert vision[0].layers == [3] and "CLIPVisionModel" in vision[0].init[0]


def test_reinitialise_uses_the_models_init_and_the_seed(demo_model):
    """Every weight matrix of the layer is redrawn by the model's own init (no fallback: the
    ``_is_hf_initialized`` flags set by loading must not make it skip), the same seed draws
    the same weights, another seed others."""
    for tower in (LANGUAGE, VISION):
        layer = tower_layers(demo_model, tower)[-1]
        trained = [p.detach().clone() for p in layer.parameters()]
        draws = []
        for seed in (1, 1, 2):
            init, fallback = reinitialise(demo_model.model, layer, seed)
            assert fallback == 0 and init.startswith("_init_weights of "), init
            draws.append([p.detach().clone() for p in layer.parameters()])
        with torch.no_grad():
            for p, value in zip(layer.parameters(), trained, strict=True):
                p.copy_(value)
        matrices = [i for i, p in enumerate(trained) if p.dim() >= 2]
        assert all(not torch.equal(draws[0][i], trained[i]) for i in matrices)
        assert all(torch.equal(a, b) for a, b in zip(draws[0], draws[1], strict=True))
        assert not all(torch.equal(draws[0][i], draws[2][i]) for i in matrices)


def test_rank_scores():
    a = np.array([0.1, 0.5, 0.2, 0.9, 0.0])
    assert spearman(a, a) == 1.0 and spearman(a, -a) == -1.0
    assert spearman(a, np.zeros(5)) == 0.0  # the randomised map lost every ranking
    assert math.isnan(spearman(np.zeros(5), a))
    assert top_overlap(a, a) == 1.0 and top_overlap(a, -a) == 0.0


def test_cli_store_mode_writes_json_and_leaves_the_store(demo_store, demo_checkpoint, tmp_path):
    store, ids = demo_store
    before, checkpoint = _tree(store), _tree(demo_checkpoint)
    out = tmp_path / "sanity.json"
    args = ["sanity-check", ids[0], "--store", str(store), "--model", str(demo_checkpoint)]
    args += ["--layers", "2", "--vision-layers", "0", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "language cascade" in result.stdout and "vision cascade" not in result.stdout
    assert _tree(store) == before and _tree(demo_checkpoint) == checkpoint
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["cases"] == [ids[0]] and written["threshold"] == 0.5
    assert [(s["tower"], s["layers"]) for s in written["steps"]] == [
        (CONTROL, []),
        (LANGUAGE, [3]),
        (LANGUAGE, [3, 2]),
    ]
    assert written["steps"][0]["maps"]["relevancy.llm"]["spearman"] == 1.0
    assert written["verdicts"]["random"] == {LANGUAGE: "FAIL"}
    assert not list(tmp_path.glob(".sanity.json.*"))  # no temporary file left


def test_cli_image_mode(demo_checkpoint, tmp_path):
    from engine.demo.world import make_scene

    make_scene(5).image.save(tmp_path / "scene.png")
    args = ["sanity-check", "--model", str(demo_checkpoint), "--image", str(tmp_path / "scene.png")]
    args += ["--prompt", "What color is the circle?", "--layers", "1", "--vision-layers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "language cascade" in result.stdout and "vision cascade" in result.stdout


def _one_line(result, fragment: str) -> None:
    """In-process twin of assert_one_line_error: exit 2, one ``error:`` line, no stdout."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def test_cli_errors_one_line_store_untouched(
    demo_store, demo_checkpoint, random_llava_dir, tmp_path
):
    store, ids = demo_store
    before = _tree(store)
    model = ["--model", str(demo_checkpoint)]
    stored = [ids[0], "--store", str(store), *model]
    image = tmp_path / "scene.png"
    image.write_bytes(b"not an image")
    cases = [
        ([ids[0], *model], "go together"),
        ([*stored, "--image", str(image), "--prompt", "q"], "not both"),
        (model, "nothing to check"),
        (["zz", "--store", str(store), *model], "trace id"),
        (["0" * 32, "--store", str(store), *model], "no trace"),
        ([ids[0], "--store", str(tmp_path / "none"), *model], "not found"),
        ([ids[0], "--store", str(store), "--model", str(random_llava_dir)], "not by the given"),
        ([*stored, "--layers", "9"], "language cascade has 4 layers"),
        ([*stored, "--vision-layers", "9"], "vision tower has 4 layers"),
        ([*stored, "--json", str(store / "out.json")], "inside the store"),
        ([*stored, "--json", str(tmp_path)], "is a directory"),
        ([*stored, "--json", str(tmp_path / "no" / "out.json")], "does not exist"),
        ([*stored, "--threshold", "0"], "--threshold"),
        ([*stored, "--seed", "-1"], "--seed"),
        ([*model, "--image", str(image), "--prompt", "q"], "not a readable image"),
        ([*model, "--image", str(tmp_path / "missing.png"), "--prompt", "q"], "not found"),
        (["--model", str(tmp_path), "--image", str(image), "--prompt", "q"], ""),
    ]
    for args, fragment in cases:
        _one_line(CliRunner().invoke(app, ["sanity-check", *args]), fragment)
    assert _tree(store) == before
    assert not (tmp_path / "none").exists()


def test_cli_usage_error_through_the_console_script(demo_store, tmp_path):
    """Click's own checks (--layers below its minimum) end as one line too, via ``main``."""
    store, ids = demo_store
    args = ["sanity-check", ids[0], "--store", store, "--model", "x", "--layers", "-1"]
    result = run_cli(args, tmp_path)
    assert_one_line_error(result, "--layers")
