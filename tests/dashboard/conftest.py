"""Shared fixtures: one small synthetic store for the whole session, and an AppTest factory."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.config import STORE_ENV
from store import open_store
from store.synthetic import make_synthetic_trace

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=window.__xss=1>"


@dataclasses.dataclass(frozen=True)
class DemoStore:
    directory: Path
    main: str  # complete trace, non-square 4x6 patch grid, with a causal result
    second: str  # same shapes, another image: for Compare
    xss: str  # prompt, answer and tokens carry HTML/JS payloads
    bare: str  # no vision attention, no relevancy, no causal results
    broken: str  # indexed, but its file was deleted


def _xss_trace(seed: int):
    trace = make_synthetic_trace(seed=seed, grid=(4, 6))
    tokens = trace.tokens
    texts = list(tokens.text)
    texts[tokens.prompt_length] = XSS_SCRIPT
    texts[tokens.prompt_length + 1] = XSS_IMG
    info = dataclasses.replace(
        trace.info,
        prompt=f"What is this? {XSS_IMG}",
        answer=f"{XSS_SCRIPT} {XSS_IMG} ![x](http://127.0.0.1:9/x.png)",
        image_name=f"{XSS_IMG}.png",
    )
    return dataclasses.replace(trace, info=info, tokens=dataclasses.replace(tokens, text=texts))


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    directory = tmp_path_factory.mktemp("store")
    with open_store(directory, mode="a") as store:
        main = store.add(make_synthetic_trace(seed=1, grid=(4, 6)))
        second = store.add(make_synthetic_trace(seed=2, grid=(4, 6)))
        xss = store.add(_xss_trace(3))
        bare = store.add(make_synthetic_trace(seed=4, vision_layers=0, with_relevancy=False))
        broken = store.add(make_synthetic_trace(seed=5))
        patches = np.linspace(0, 1, 24).round(3).tolist()
        answer = store.open(main).tokens.answer_length
        store.put_result(
            main,
            "causal",
            "occlusion",
            {"patch_effect": patches, "token_effect": [0.5] * answer, "faithfulness": 0.8},
        )
        store.tag(main, "demo")
    for path in directory.rglob(f"{broken}*.h5"):
        path.unlink()
    return DemoStore(directory, main, second, xss, bare, broken)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, demo_store: DemoStore) -> Callable[..., AppTest]:
    """Run a page of the real app (through its navigation) with URL parameters."""
    monkeypatch.setenv(STORE_ENV, str(demo_store.directory))

    def run(view: str | None = None, /, store_dir: Path | None = None, **params: str) -> AppTest:
        if store_dir is not None:
            monkeypatch.setenv(STORE_ENV, str(store_dir))
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.query_params.update(params)
        if view is not None:
            at.switch_page(f"views/{view}.py")
        return at.run()

    return run
