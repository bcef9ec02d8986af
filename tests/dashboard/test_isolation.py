"""The dashboard must not pull in a model stack: it runs without torch or transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.dashboard.conftest import APP

ROOT = APP.parents[1]

SCRIPT = """
import json, sys
from streamlit.testing.v1 import AppTest
pages = ["generation", "attention", "relevancy", "causal", "faithfulness", "compare", "ask"]
at = AppTest.from_file(sys.argv[1], default_timeout=60)
at.query_params.update(trace=sys.argv[2], compare=sys.argv[3])
at.run()
for page in pages:
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    if page == "causal" and at.button:  # CLEANN's compute path too
        at.button[0].click().run()
        assert not at.exception and len(at.get("imgs") or at.get("image")) > 1
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
engine = sorted(m for m in sys.modules if m.split(".")[0] == "engine")
print(json.dumps({"heavy": heavy, "engine": engine}))
"""


def test_app_runs_without_importing_torch_or_transformers(demo_store):
    env = {**os.environ, "LVLM_INTERPRET_STORE": str(demo_store.directory), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(APP), demo_store.main, demo_store.second],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["heavy"] == []
    # CLEANN and every stored-data method live in methods/: the one engine module a page may
    # read is the demo world's plain data (colours, shapes, scene drawing for the Ask page)
    assert set(loaded["engine"]) <= {"engine", "engine.demo", "engine.demo.world"}


def test_streamlit_is_imported_only_inside_dashboard():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("engine", "store")
        if (ROOT / folder).is_dir()
        for path in (ROOT / folder).rglob("*.py")
        if "import streamlit" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_pure_components_do_not_import_streamlit():
    for path in (Path(APP).parent / "components").glob("*.py"):
        assert "streamlit" not in path.read_text(encoding="utf-8"), path.name
