"""The console command: help everywhere, recording into a store, clear errors."""

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
    with open_store(store, mode="r") as opened:
        info = opened.get(trace_id)
        assert info.tags == ["cli"] and info.image_name == "scene.png"
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
        "import sys, engine, engine.causal; assert 'torch' not in sys.modules; "
        "from engine import load_model, record, RecordOptions, load_image; "
        "assert 'torch' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
