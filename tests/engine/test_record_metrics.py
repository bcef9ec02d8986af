"""``record --metrics``: methods run on the just-recorded trace with the model already loaded
(the real command, the bundled demo model), results stored through the one channel; stdout
stays the trace id alone. A bad ``--metrics`` is one line and exit 2 before anything loads."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.demo.world import make_scene
from methods.maps import MAPS_KIND
from store import TraceQuery, open_store
from tests.engine.test_cli_hostile import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("record-metrics") / "scene.png"
    make_scene(3).image.save(path)
    return path


def test_record_runs_the_chosen_methods_on_the_new_trace(scene, demo_checkpoint, tmp_path):
    store = tmp_path / "store"
    args = ["record", "--model", str(demo_checkpoint), "--image", str(scene)]
    args += ["--prompt", "What color is the square?", "--store", str(store), "--no-relevancy"]
    result = CliRunner().invoke(app, [*args, "--metrics", "deletion,localisation,occlusion"])
    assert result.exit_code == 0, result.output
    trace_id = result.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), result.stdout
    # a plain image has no ground-truth box: localisation is skipped with its reason
    assert f"skipped localisation on {trace_id}" in result.stderr
    with open_store(store) as opened:
        (occlusion,) = opened.list_results(trace_id, MAPS_KIND).values()
        assert occlusion["method"] == "occlusion"
        (deletion,) = opened.list_results(trace_id, "faithfulness").values()
        # occlusion ran first (stage 0), so deletion scored its stored map
        assert {"occlusion", "attention.head_mean", "random"} <= set(deletion["per_token"]["auc"])
        found = opened.query(TraceQuery(metric_ranges={"deletion_auc.occlusion": (0.0, 1.0)}))
        assert [t.trace_id for t in found.items] == [trace_id]


@pytest.mark.parametrize(
    ("command", "metrics", "fragment"),
    [
        ("record", "occlusion,nope", "unknown method 'nope'"),
        ("record", " , ", "--metrics is empty"),
        ("demo", "nope", "unknown method 'nope'"),
    ],
)
def test_bad_metrics_one_line_before_loading(
    scene, demo_checkpoint, tmp_path, command, metrics, fragment
):
    store = tmp_path / "store"
    if command == "record":
        args = ["record", "--model", demo_checkpoint, "--image", scene, "--prompt", "What?"]
    else:
        args = ["demo", "record", "--count", "1"]
    result = run_cli([*args, "--store", store, "--metrics", metrics], tmp_path)
    assert_one_line_error(result, fragment)
    assert not store.exists()  # refused before the store (or a model) was touched
