"""The example notebook (docs/notebook.ipynb) runs top to bottom on a real store.

It is executed by a real Jupyter kernel (the venv's python3, via nbclient) on the demo
questions recorded on both bundled checkpoints, so an API it shows that changed or broke
fails here. The table export the notebook's frames also feed is checked on the same store.
"""

import base64
import io
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from PIL import Image
from typer.testing import CliRunner

from engine.cli import app
from engine.demo.checkpoints import DEMO_CHECKPOINTS

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebook.ipynb"


@pytest.fixture(scope="module")
def executed(paired_demo_store, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("LVLM_STORE", str(paired_demo_store))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cwd = tmp_path_factory.mktemp("notebook")
    # a cell error raises CellExecutionError with the cell's traceback
    NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return notebook


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _outputs(notebook, mime: str) -> list[str]:
    return [
        out["data"][mime] if mime != "stream" else out["text"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if (mime == "stream" and out.output_type == "stream") or mime in out.get("data", {})
    ]


def test_every_cell_runs_without_error(executed):
    for cell in executed.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None
            assert not [o for o in cell.outputs if o.output_type == "error"]


def test_frames_arrays_and_the_comparison_are_shown(executed):
    printed = "".join(_outputs(executed, "stream"))
    assert "10 traces of 2 checkpoint(s)" in printed
    assert "lm_attention (4, 4, " in printed
    assert "one answer row, image columns: (4, 4, 64) float32" in printed
    assert re.search(r"on the image patches \(\d+, 64\)", printed)  # [answer tokens, patches]
    assert "5 question(s) answered by two checkpoints" in printed
    tables = "".join(_outputs(executed, "text/html"))
    for column in ("relevancy_image_share", "top_k_tokens", "left answer", "right answer"):
        assert column in tables
    for checkpoint in DEMO_CHECKPOINTS.values():
        assert checkpoint.model_id in tables


def test_figures_display_inline(executed):
    pngs = [Image.open(io.BytesIO(base64.b64decode(p))) for p in _outputs(executed, "image/png")]
    assert len(pngs) >= 2  # the relevancy map and the compare page's figures
    assert all(min(png.size) > 100 for png in pngs)
    svgs = _outputs(executed, "image/svg+xml")
    assert len(svgs) == 1 and "<svg" in svgs[0]


@pytest.mark.parametrize("table_format", ["csv", "parquet"])
def test_export_table_writes_the_frames(paired_demo_store, tmp_path, table_format):
    out = tmp_path / f"traces.{table_format}"
    args = ["store", "export-table", "--store", str(paired_demo_store), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--format", table_format, "--tag", "weak-missing"])
    assert result.exit_code == 0, result.output  # no match: an empty table, still written
    weak = DEMO_CHECKPOINTS["weak"].model_id
    tokens = tmp_path / f"tokens.{table_format}"
    args[-1] = str(tokens)
    result = CliRunner().invoke(app, [*args, "--format", table_format, "--model", weak, "--tokens"])
    assert result.exit_code == 0, result.output
    read = pd.read_csv if table_format == "csv" else pd.read_parquet
    assert read(out).empty
    frame = read(tokens)
    assert frame["trace_id"].nunique() == 5
    assert {"token", "probability", "relevancy_image_share"} <= set(frame.columns)


def test_export_table_refuses_in_one_line(paired_demo_store, tmp_path):
    taken = tmp_path / "taken.csv"
    taken.write_text("keep me")
    cases = [
        (["--out", str(taken)], "exists"),
        (["--out", str(tmp_path / "t.xls"), "--format", "xls"], "csv or parquet"),
        (["--out", str(tmp_path / "missing" / "t.csv")], "does not exist"),
        (["--out", str(paired_demo_store / "t.csv")], "inside the store"),
    ]
    for extra, fragment in cases:
        args = ["store", "export-table", "--store", str(paired_demo_store), *extra]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert fragment in result.output and len(result.output.strip().splitlines()) == 1
    assert taken.read_text() == "keep me"
    assert not (paired_demo_store / "t.csv").exists()
