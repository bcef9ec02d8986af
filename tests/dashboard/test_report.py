"""Reports: one self-contained HTML file that opens offline in a real browser, shows every
section, keeps hostile text inert; and the ``lvlm-interpret report`` command around it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from dashboard.report import ReportError, ReportOptions, build_report
from engine.cli import app
from store import TraceQuery, open_store
from store.synthetic import make_synthetic_trace
from tests.dashboard.browser import SCREENSHOTS

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = "http://report.test/"
SECTIONS = (
    "Question and answer",
    "Maps",
    "Metrics and results",
    "Faithfulness",
    "Flagged tokens",
    "Causal explanation",
    "Notes",
    "Provenance",
)
HOSTILE = (
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    '<a href="javascript:window.__pwned=1">link</a>',
    "[click](javascript:window.__pwned=1)",
    r"$\href{javascript:window.__pwned=1}{x}$",
    "<svg onload=window.__pwned=1></svg>",
    '"><iframe src="javascript:window.__pwned=1"></iframe>',
)


def cli(*args: object, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def invoke(*args: object) -> Result:
    """The real command in this process (no interpreter start per call); a process of its
    own (``cli``) where the process itself is checked: no torch loaded, the PDF's browser."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, list[str]]:
    """Two traces of the bundled demo model, recorded by the real command (with CLEANN),
    plus a note, metrics, an evaluation result and flagged tokens on the first."""
    directory = tmp_path_factory.mktemp("demo-report") / "store"
    done = invoke("demo", "record", "--store", directory, "--count", "2")
    assert done.exit_code == 0, done.output
    with open_store(directory, writable=True) as store:
        ids = [i.trace_id for i in store.query(TraceQuery(order_by="created_at")).items]
        first = ids[0]
        answer_start = store.open(first).tokens.prompt_length
        store.add_note(first, "Looks at the right object.", author="ana")
        store.add_note(first, "This token decides.", token_position=answer_start, author="ana")
        store.set_metrics(first, {"deletion_auc": 0.25})
        store.put_result(first, "faithfulness", "deletion", {"auc_llm": 0.31, "auc_vision": 0.4})
        store.put_result(first, "flags", "low-confidence", {"tokens": [0], "why": "p < 0.5"})
    return directory, ids


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, str]:
    """A trace whose every text field, token, tag, note and result name is hostile."""
    directory = tmp_path_factory.mktemp("hostile-report")
    trace = make_synthetic_trace(seed=12, grid=(4, 6))
    texts = list(trace.tokens.text)
    for i, payload in enumerate(HOSTILE):
        texts[trace.tokens.prompt_length + i % trace.tokens.answer_length] = payload
    joined = " ".join(HOSTILE)
    info = dataclasses.replace(
        trace.info,
        prompt=f"What is this? {joined}",
        answer=joined,
        model_id=HOSTILE[1],
        model_revision=HOSTILE[2],
        reference_answer=HOSTILE[3],
        image_name=HOSTILE[0],
        tags=list(HOSTILE[:4]),
        extra={"recording": {"note": joined}, "loading": {HOSTILE[0]: HOSTILE[1]}},
    )
    trace = dataclasses.replace(
        trace, info=info, tokens=dataclasses.replace(trace.tokens, text=texts)
    )
    with open_store(directory, writable=True) as store:
        trace_id = store.add(trace)
        for payload in HOSTILE:
            store.add_note(trace_id, payload, author=HOSTILE[0])
        store.put_result(trace_id, "causal", HOSTILE[0], {HOSTILE[1]: 0.5, "x": [HOSTILE[2]]})
        store.put_result(trace_id, "flags", HOSTILE[4], {"why": HOSTILE[5]})
    return directory, trace_id


def open_offline(browser, html: str):
    """The report as the only document; every other request is aborted and counted, and so
    is every console message (a request or style the page's policy refused)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    tried: list[str] = []
    # a refused style or script is a console message: the stylesheet's hash must match and
    # nothing may need more than the policy allows
    page.on("console", lambda message: tried.append(f"console: {message.text}"))

    def route(request_route) -> None:
        if request_route.request.url == DOCUMENT:
            request_route.fulfill(body=html, content_type="text/html; charset=utf-8")
        else:
            tried.append(request_route.request.url)
            request_route.abort()

    page.route("**", route)
    page.goto(DOCUMENT, wait_until="load")
    return page, tried


def _images_decoded(page) -> tuple[int, int]:
    return page.evaluate(
        "[document.images.length, "
        "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length]"
    )


@pytest.mark.browser
def test_one_trace_report_offline_with_every_section(demo, browser, capsys):
    directory, ids = demo
    with open_store(directory) as store:
        html = build_report(store, [ids[0]])
        info = store.get(ids[0])
    page, tried = open_offline(browser, html)
    try:
        assert tried == []  # nothing but the document itself was requested
        headings = page.eval_on_selector_all("section > h3", "els => els.map(e => e.textContent)")
        assert list(SECTIONS) == headings
        body = page.inner_text("body")
        for expected in (
            info.prompt,
            info.answer,
            info.model_id,
            info.model_revision,
            "Looks at the right object.",
            "This token decides.",
            "deletion_auc",
            "auc_vision",
            "low-confidence",
            "CLEANN explanation of answer token",
            "Causal graph",
            "Relevancy (LLM)",
            "Relevancy (vision tower)",
            "attention of answer token",
            "Generation settings",
            "Recording options",
            "Loading options",
        ):
            assert expected in body, expected
        count, broken = _images_decoded(page)
        assert count >= 8 and broken == 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)
    finally:
        page.close()
    assert "<script" not in html.lower()
    with capsys.disabled():
        print(f"\nreport of one demo trace: {len(html.encode()):,} bytes")


@pytest.mark.browser
def test_comparison_and_set_reports_offline(demo, browser):
    directory, ids = demo
    with open_store(directory) as store:
        compared = build_report(store, [ids[0]], compare=ids[1])
        listed = build_report(store, query=TraceQuery(tag="demo"), options=ReportOptions(limit=1))
        infos = store.query(TraceQuery(tag="demo")).items
    judged = [i.correct for i in infos if i.correct is not None]
    accuracy = f"{sum(judged) / len(judged):.1%}"  # the one checkpoint's, computed here
    page, tried = open_offline(browser, compared)
    try:
        assert tried == []
        body = page.inner_text("body")
        assert "Comparison:" in body and "Answer diff" in body
        assert "Divergence of image attention per layer" in body
        assert body.count("Question and answer") == 2  # each trace's own sections follow
        assert body.count("Prompt") >= 4  # and the pair side by side above them
        assert _images_decoded(page)[1] == 0
    finally:
        page.close()
    page, tried = open_offline(browser, listed)
    try:
        assert tried == []
        body = page.inner_text("body")
        assert "By model and revision" in body and "By tag" in body
        assert "lvlm-interpret/shapes-demo" in body
        checkpoint = page.inner_text("#set-summary table >> nth=0")
        assert f"{len(infos)}\t{len(judged)}\t{sum(judged)}\t{accuracy}" in checkpoint
        assert "Showing 1 of 2 (the report lists at most 1" in body
        assert page.eval_on_selector_all("img.thumb", "els => els.length") == 1
        assert _images_decoded(page)[1] == 0
    finally:
        page.close()


@pytest.mark.browser
def test_hostile_text_is_inert(hostile, browser):
    directory, trace_id = hostile
    with open_store(directory) as store:
        html = build_report(store, [trace_id])
    page, tried = open_offline(browser, html)
    try:
        assert tried == []
        assert page.evaluate("window.__pwned") is None
        dangerous = page.evaluate(
            """() => ({
              scripts: document.querySelectorAll('script').length,
              handlers: Array.from(document.querySelectorAll('*')).filter(
                e => Array.from(e.attributes).some(a => a.name.startsWith('on'))).length,
              js: Array.from(document.querySelectorAll('[href],[src]')).filter(
                e => /^\\s*javascript:/i.test(e.getAttribute('href') || e.getAttribute('src'))
              ).length,
              frames: document.querySelectorAll('iframe, svg, object, embed').length,
            })"""
        )
        assert dangerous == {"scripts": 0, "handlers": 0, "js": 0, "frames": 0}
        body = page.inner_text("body")
        for payload in HOSTILE:  # shown as the characters typed
            assert payload in body, payload
    finally:
        page.close()


def test_requests_that_cannot_be_made(demo):
    directory, ids = demo
    with open_store(directory) as store:
        with pytest.raises(ReportError, match="no trace"):
            build_report(store, ["0" * 32])
        with pytest.raises(ReportError, match="exactly one"):
            build_report(store, ids, compare=ids[0])
        with pytest.raises(ReportError, match="query"):
            build_report(store, ids[:1], query=TraceQuery())
        with pytest.raises(ReportError, match="limit"):
            build_report(store, query=TraceQuery(), options=ReportOptions(limit=0))
        with pytest.raises(ReportError, match="answer token 99 is not in trace"):
            build_report(store, ids[:1], options=ReportOptions(tokens=(0, 99)))
        with pytest.raises(ReportError, match="layer 99 is not in trace"):
            build_report(store, ids[:1], options=ReportOptions(layer=99))


def test_cli_writes_a_report_without_torch(demo, tmp_path):
    directory, ids = demo
    out = tmp_path / "one.html"
    code = (
        "import sys; from engine.cli import main; sys.argv = sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as end:\n    code = end.code\n"
        "print('loaded:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "lvlm-interpret",
            "report",
            ids[0],
            "--store",
            directory,
            "--out",
            out,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    assert f"wrote {out}" in done.stdout
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cli_mistakes_are_one_line(demo, tmp_path):
    directory, ids = demo
    existing = tmp_path / "existing.html"
    existing.write_text("keep me")
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    cases = [
        ((ids[0], "--out", existing), "exists; pass --force"),
        (("0" * 32, "--out", tmp_path / "a.html"), "no trace"),
        (("nothex", "--out", tmp_path / "a.html"), "invalid trace id"),
        ((ids[0], "--out", directory / "data" / "r.html"), "inside the store"),
        ((ids[0], "--out", a_file / "r.html"), "does not exist"),
        ((ids[0], "--out", "/proc/report.html"), "cannot write"),
        ((ids[0], "--out", tmp_path), "is a directory"),
        ((ids[0], "--compare", "--out", tmp_path / "a.html"), "exactly two"),
        ((ids[0], "--query", "--out", tmp_path / "a.html"), "not both"),
        (("--out", tmp_path / "a.html"), "name at least one trace"),
        ((ids[0], "--scale", "20", "--out", tmp_path / "a.html"), "scale"),
        ((ids[0], "--token", "99", "--out", tmp_path / "a.html"), "answer token 99"),
    ]
    for args, message in cases:
        done = invoke("report", *args, "--store", directory)
        assert done.exit_code == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, done.stderr)
        assert done.stdout == "", (args, done.stdout)
    assert existing.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.html", "plain"]
    with open_store(directory) as store:  # the store is as it was
        assert store.query().total == 2
    done = invoke("report", ids[0], "--store", directory, "--out", existing, "--force")
    assert done.exit_code == 0 and existing.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.browser
def test_cli_pdf(demo, tmp_path):
    directory, ids = demo
    out = tmp_path / "pair.html"
    done = cli("report", *ids, "--compare", "--store", directory, "--out", out, "--pdf")
    assert done.returncode == 0, done.stderr
    assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF-")
    assert f"wrote {out.with_suffix('.pdf')}" in done.stdout


def test_traces_that_hold_less(demo_store, family_store):
    """A format-1 trace, one without relevancy or vision attention, a damaged one's
    neighbour, and every image geometry: each report says what is missing, never fails."""
    with open_store(demo_store.directory) as store:
        html = build_report(store, [demo_store.legacy, demo_store.bare])
        assert "Relevancy was not recorded for this trace." in html
        assert "No CLEANN explanation stored for this trace." in html
        with pytest.raises(ReportError, match=demo_store.broken):
            build_report(store, [demo_store.broken])
    with open_store(family_store.directory) as store:
        every = [family_store.tiled, family_store.images, family_store.merged]
        html = build_report(store, [*every, family_store.cross, family_store.policy])
        assert "cross-attention of answer token" in html
        compared = build_report(store, [family_store.tiled], compare=family_store.images)
        assert "patches do not line up: no difference map" in compared
