"""Shared fixtures: one small synthetic store for the whole session, and an AppTest factory."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser
from streamlit.testing.v1 import AppTest

from dashboard.config import STORE_ENV
from store import open_store, reindex_store
from store.synthetic import make_synthetic_trace
from tests.dashboard.browser import running_dashboard, shared_chromium

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
# Written by lvlm-interpret 0.1 (make_synthetic_trace(seed=6, grid=(4, 6)), format 1).
FORMAT_1 = Path(__file__).with_name("fixtures") / "66666666666666666666666666666666.h5"
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=window.__xss=1>"
# Markdown that must show as text: an image fetch (the port is closed), a colour directive, bold.
MD_IMAGE = "![](http://127.0.0.1:9/x.png)"
MD_HOSTILE = (MD_IMAGE, ":red[painted]", "**bold**")
GROUND_TRUTH = {
    "objects": [{"shape": "cross", "colour": "red", "position": "top left", "box": [0, 0, 42, 63]}]
}


@dataclasses.dataclass(frozen=True)
class DemoStore:
    directory: Path
    main: str  # complete trace, non-square 4x6 patch grid, with a causal result
    second: str  # same shapes, another image: for Compare
    xss: str  # prompt, answer, tokens and a causal result carry HTML/JS/Markdown payloads
    bare: str  # no vision attention, no relevancy, no causal results
    broken: str  # indexed, but its file was deleted
    legacy: str  # trace format 1 (a file lvlm-interpret 0.1 wrote): one grid, processed image


@dataclasses.dataclass(frozen=True)
class FamilyStore:
    """One trace per image geometry beyond LLaVA-1.5's single grid (a store of its own, so
    the demo store's Browse table stays as its tests know it)."""

    directory: Path
    tiled: str  # LLaVA-NeXT-like: a global view plus 2x2 crops, each 4x6 patches
    images: str  # two images of different patch grids (two vision sequences)
    merged: str  # Qwen-VL-like: each token reads a 2x2 block of patches; tower without CLS
    cross: str  # Mllama-like: no image tokens, cross-attention keys -> patches
    policy: str  # recorded under the answer_rows policy: only the answer's attention rows


def _xss_trace(seed: int):
    trace = make_synthetic_trace(seed=seed, grid=(4, 6))
    tokens = trace.tokens
    texts = list(tokens.text)
    texts[tokens.prompt_length] = XSS_SCRIPT
    texts[tokens.prompt_length + 1] = XSS_IMG
    for offset, hostile in enumerate(MD_HOSTILE, start=2):
        texts[tokens.prompt_length + offset] = hostile
    texts[tokens.prompt_length - 3] = MD_IMAGE  # a prompt token
    info = dataclasses.replace(
        trace.info,
        prompt=f"What is this? {XSS_IMG} {MD_IMAGE}",
        answer=f"{XSS_SCRIPT} {XSS_IMG} {MD_IMAGE} :red[painted] **bold**",
        image_name=f"{XSS_IMG}{MD_IMAGE}.png",
        model_revision=f"rev {MD_IMAGE}",
        reference_answer=f"**bold** {MD_IMAGE}",
    )
    return dataclasses.replace(trace, info=info, tokens=dataclasses.replace(tokens, text=texts))


def _with_truth(trace):
    info = dataclasses.replace(
        trace.info,
        reference_answer="orange star",
        extra={**trace.info.extra, "ground_truth": GROUND_TRUTH},
    )
    return dataclasses.replace(trace, info=info)


def _with_format_1_trace(directory: Path) -> str:
    """A store holding a trace file lvlm-interpret 0.1 wrote (format 1: one grid, the
    processed image, relevancy "all" holding today's llm_through_vision), indexed the way
    old files are: by ``reindex``."""
    open_store(directory, writable=True).close()
    trace_id = FORMAT_1.stem
    target = directory / "data" / trace_id[:2] / FORMAT_1.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FORMAT_1, target)
    reindex_store(directory)
    return trace_id


def demo_store_at(directory: Path) -> DemoStore:
    legacy = _with_format_1_trace(directory)
    with open_store(directory, writable=True) as store:
        main = store.add(_with_truth(make_synthetic_trace(seed=1, grid=(4, 6))))
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
            {
                "patch_effect": patches,
                "patch_effect_2": patches[::-1],  # two maps on one page: one set of controls
                "token_effect": [0.5] * answer,
                "faithfulness": 0.8,
            },
        )
        store.put_result(xss, "causal", MD_IMAGE, {MD_IMAGE: patches, f"**{XSS_IMG}**": 0.5})
        store.tag(main, "demo")
    for path in directory.rglob(f"{broken}*.h5"):
        path.unlink()
    return DemoStore(directory, main, second, xss, bare, broken, legacy)


def family_store_at(directory: Path) -> FamilyStore:
    with open_store(directory, writable=True) as store:
        return FamilyStore(
            directory,
            tiled=store.add(
                make_synthetic_trace(seed=7, grid=(4, 6), crops=(2, 2), prompt_len=140)
            ),
            images=store.add(make_synthetic_trace(seed=8, grid=[(4, 6), (2, 4)])),
            merged=store.add(
                make_synthetic_trace(seed=9, grid=(4, 6), merge=2, vision_has_cls=False)
            ),
            cross=store.add(make_synthetic_trace(seed=10, grid=(4, 6), cross_attention=True)),
            policy=store.add(make_synthetic_trace(seed=11, grid=(4, 6), policy="answer_rows")),
        )


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    return demo_store_at(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def family_store(tmp_path_factory: pytest.TempPathFactory) -> FamilyStore:
    return family_store_at(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the session (a launch costs seconds on 2 busy cores);
    each test isolates itself in a new context. Playwright's sync API allows one driver per
    thread, so ``browser.chromium()`` hands out this one while it runs."""
    with shared_chromium() as launched:
        yield launched


@pytest.fixture(scope="session")
def demo_site(demo_store: DemoStore) -> Iterator[str]:
    """One real server on the demo store for the modules that only read it (each browser
    context is a session of its own there)."""
    with running_dashboard(demo_store.directory) as url:
        yield url


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, demo_store: DemoStore) -> Callable[..., AppTest]:
    """Run a page of the real app (through its navigation) with URL parameters; ``expand``
    names lazy expanders (drawn only when open: "notes", "figures") to open as a user would."""
    monkeypatch.setenv(STORE_ENV, str(demo_store.directory))

    def run(
        view: str | None = None,
        /,
        store_dir: Path | None = None,
        expand: tuple[str, ...] = (),
        **params: str,
    ) -> AppTest:
        if store_dir is not None:
            monkeypatch.setenv(STORE_ENV, str(store_dir))
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.query_params.update(params)
        for key in expand:
            at.session_state[key] = True
        if view is not None:
            at.switch_page(f"views/{view}.py")
        return at.run()

    return run
