"""The console command: help everywhere, recording into a store, clear errors."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.demo.world import make_scene
from store import TraceQuery, open_store

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [[], ["record"], ["serve"], ["ls"], ["demo"], ["demo", "record"], ["store"], ["store", "gc"]],
)
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "record" in result.stdout


def test_record_into_store(tmp_path, demo_checkpoint):
    image = tmp_path / "scene.png"
    make_scene(3).image.save(image)
    store = tmp_path / "traces"
    args = ["record", "--model", str(demo_checkpoint), "--image", str(image)]
    args += ["--prompt", "How many shapes are there?", "--store", str(store), "--tag", "cli"]
    args += ["--reference", "two", "--max-new-tokens", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    trace_id = result.output.strip().splitlines()[-1]
    with open_store(store) as opened:
        info = opened.get(trace_id)
        assert info.tags == ["cli"] and info.image_name == "scene.png"
        assert info.model_id == "lvlm-interpret/shapes-demo"  # the config's name, not the path
        assert opened.query(TraceQuery(tag="cli")).total == 1
    listing = runner.invoke(app, ["ls", "--store", str(store)])
    assert trace_id[:8] in listing.output


def test_record_errors_are_one_clear_line(tmp_path, demo_checkpoint):
    args = ["record", "--model", str(demo_checkpoint), "--image", str(tmp_path / "missing.png")]
    result = runner.invoke(app, [*args, "--prompt", "hi", "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "Image file not found" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s").exists()  # nothing half-created


def test_public_api_resolves_lazily():
    code = (
        "import sys, engine, methods.cleann; assert 'torch' not in sys.modules; "
        "from engine import load_model, record, RecordOptions, load_image; "
        "assert 'torch' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_one_checkpoint_is_one_model_whatever_its_path(tmp_path, demo_checkpoint):
    """A relative path with a trailing slash, the demo command and the library agree on the
    identity (config name + weights hash); an over-long answer limit is capped and said so."""
    from engine.checkpoint import check_model_source, weights_revision
    from engine.cli.demo import DEMO_MODEL_ID
    from tests.engine.test_cli_hostile import run_cli

    image = tmp_path / "scene [bold].png"  # rich markup in a file name is text
    make_scene(3).image.save(image)
    relative = os.path.relpath(demo_checkpoint, tmp_path) + "/"
    args = ["record", "--model", relative, "--image", image, "--prompt", "How many shapes?"]
    args += ["--store", tmp_path / "s", "--max-new-tokens", "100000", "--no-relevancy"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert "note: --max-new-tokens 100000 capped at 512" in result.stderr.decode()
    demo = run_cli(
        ["demo", "record", "--store", tmp_path / "s", "--count", "1", "--no-causal"], tmp_path
    )
    assert demo.returncode == 0, demo.stderr.decode()
    with open_store(tmp_path / "s") as opened:
        assert opened.models() == [DEMO_MODEL_ID]
        items = opened.query(TraceQuery()).items
        assert {item.model_revision for item in items} == {
            weights_revision(check_model_source(str(demo_checkpoint)).weights)
        }
        recorded = opened.get(result.stdout.decode().split()[-1])
        assert recorded.generation.max_new_tokens == 512
        assert recorded.image_name == "scene [bold].png"


def test_pickle_checkpoint_loads_only_when_allowed(tmp_path, demo_checkpoint):
    import shutil

    import torch
    from safetensors.torch import load_file

    from tests.engine.test_cli_hostile import run_cli

    folder = tmp_path / "pickled"
    shutil.copytree(demo_checkpoint, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    make_scene(3).image.save(tmp_path / "scene.png")
    args = ["record", "--model", folder, "--image", tmp_path / "scene.png", "--prompt", "Colour?"]
    args += ["--store", tmp_path / "s", "--max-new-tokens", "2", "--no-relevancy"]
    refused = run_cli(args, tmp_path)
    assert refused.returncode == 2 and b"--allow-pickle" in refused.stderr
    allowed = run_cli([*args, "--allow-pickle"], tmp_path)
    assert allowed.returncode == 0, allowed.stderr.decode()


def test_analyse_help_names_every_registered_method():
    """The help's method lists are written out (importing the model methods for --help would
    import torch): they must name exactly the registered methods, and which re-run the model."""
    import engine.methods  # noqa: F401  (registers the model methods)
    from engine.cli.analyse import METHOD_NAMES, MODEL_METHODS
    from methods import names, needs_model

    assert sorted(METHOD_NAMES) == names()
    assert sorted(MODEL_METHODS) == sorted(needs_model(names()))
