"""``--causal`` on the recording commands: explanations stored with the trace."""

from __future__ import annotations

from typer.testing import CliRunner

from engine.cli import app
from engine.demo.world import make_scene
from methods.cleann.trace import KIND, CausalParams, result_key
from store import open_store

runner = CliRunner()


def _expected_keys(store, trace_id: str, layers: list[int]) -> set[str]:
    with store.open(trace_id) as trace:
        return {
            result_key(layer, h, k, CausalParams())
            for layer in layers
            for h in range(trace.num_heads)
            for k in range(trace.answer_length)
        }


def test_demo_record_stores_causal_results_by_default(tmp_path):
    result = runner.invoke(app, ["demo", "record", "--store", str(tmp_path), "--count", "2"])
    assert result.exit_code == 0, result.output
    with open_store(tmp_path) as store:
        items = store.query().items
        assert len(items) == 2
        for info in items:
            with store.open(info.trace_id) as trace:
                last = trace.num_layers - 1
            keys = set(store.list_results(info.trace_id, KIND))
            assert keys == _expected_keys(store, info.trace_id, [last])


def test_record_causal_layers_and_default_off(tmp_path, demo_checkpoint):
    image = tmp_path / "scene.png"
    make_scene(3).image.save(image)
    base = ["record", "--model", str(demo_checkpoint), "--image", str(image)]
    base += ["--prompt", "How many shapes are there?", "--max-new-tokens", "3"]
    base += ["--no-relevancy", "--no-vision-attention", "--store", str(tmp_path / "s")]
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    plain_id = plain.output.strip().splitlines()[-1]
    with open_store(tmp_path / "s") as store:
        assert store.list_results(plain_id, KIND) == {}
    chosen = runner.invoke(
        app, [*base, "--causal", "--causal-layers", "-1", "--causal-layers", "1"]
    )
    bad = runner.invoke(app, [*base, "--causal", "--causal-layers", "9"])
    assert chosen.exit_code == 0, chosen.output
    assert bad.exit_code == 2 and "--causal-layers 9 is out of range" in " ".join(
        bad.output.split()
    )
    assert "Traceback" not in bad.output and "loading" not in bad.output  # before the model
    with open_store(tmp_path / "s") as store:
        chosen_id = chosen.output.strip().splitlines()[-1]
        assert chosen_id == plain_id  # the same measurement: --causal explains the stored trace
        with store.open(chosen_id) as trace:
            layers = [trace.num_layers - 1, 1]
        assert set(store.list_results(chosen_id, KIND)) == _expected_keys(store, chosen_id, layers)
        assert store.query().total == 1  # a bad --causal-layers records nothing
