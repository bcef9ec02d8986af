"""The Faithfulness page, the flagged-token and metric filters in Browse, the report section
and figures, on results computed by the real methods: a demo question recorded by the real
command on the bundled model, then ``lvlm-interpret analyse`` with small steps. Every number
the page shows is checked against the stored payload; hostile names in payloads stay text."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from dashboard import figures, result_views
from dashboard.components import results
from dashboard.components.filters import FLAGGED_METRIC, BrowseFilters
from dashboard.figures import faithfulness as faith_figures
from dashboard.report import build_report
from engine.cli import app as cli
from store import TraceQuery, open_store
from store.synthetic import make_synthetic_trace
from tests.dashboard.browser import SCREENSHOTS, chromium, running_dashboard
from tests.dashboard.conftest import MD_IMAGE, XSS_IMG, XSS_SCRIPT

METRICS = "localisation,deletion,insertion,occlusion,evidence"
HOSTILE_MAP = f"{XSS_SCRIPT}**bold**"
STRICT = 0.99  # a grounding threshold the demo's answer word falls below


@dataclasses.dataclass(frozen=True)
class FaithStore:
    directory: Path
    trace: str  # a demo question with every result of METRICS stored
    bare: str  # no results: the empty states
    hostile: Path  # a copy whose payloads carry hostile names and unreadable shapes


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _hostile_copy(source: Path, target: Path, trace_id: str) -> None:
    """The same store, its deletion maps renamed to hostile text, a stored map named by a
    script, and payloads of shapes no view reads (one line each, the rest still shown)."""
    shutil.copytree(source, target)
    with open_store(target, writable=True) as store:
        (key, deletion), *_ = [
            (k, p)
            for k, p in store.list_results(trace_id, results.FAITHFULNESS).items()
            if p["method"] == results.DELETION
        ]
        rename = {"relevancy.llm": HOSTILE_MAP, "random": MD_IMAGE}
        for part in ("curves", "auc"):
            deletion["per_token"][part] = {
                rename.get(k, k): v for k, v in deletion["per_token"][part].items()
            }
        store.put_result(trace_id, results.FAITHFULNESS, key, deletion)
        (occlusion,) = store.list_results(trace_id, results.MAPS).values()
        store.put_result(trace_id, results.MAPS, "x@1/hostile", {**occlusion, "method": XSS_IMG})
        broken = {"method": "broken", "per_token": {"map": "not a table"}}
        store.put_result(trace_id, results.MAPS, "broken@1/0", broken)
        store.put_result(trace_id, results.FAITHFULNESS, "insertion@9/0", {"method": "insertion"})
        (grounding,) = store.list_results(trace_id, results.GROUNDING).items()
        key, payload = grounding
        payload["per_token"]["words"][0] = XSS_SCRIPT
        store.put_result(trace_id, results.GROUNDING, key, payload)
        ((key, evidence),) = store.list_results(trace_id, results.EVIDENCE).items()
        evidence["per_token"]["weights"] = {HOSTILE_MAP: 1.0}
        store.put_result(trace_id, results.EVIDENCE, key, evidence)


def _grounding(directory: Path, trace_id: str, model) -> None:
    """The real grounding method with a strict threshold: the demo model's correct colour
    word (grounding ~0.97) is flagged, so a flag reaches the page and Browse's filter."""
    from engine.methods.grounding import Grounding, GroundingParams
    from methods import save_result

    with open_store(directory, writable=True) as store:
        trace = store.open(trace_id)
        result = Grounding().run(trace, GroundingParams(threshold=STRICT), model=model)
        save_result(store, trace_id, result)


@pytest.fixture(scope="module")
def faith(tmp_path_factory, demo_checkpoint, demo_model) -> FaithStore:
    root = tmp_path_factory.mktemp("faithfulness")
    directory = root / "store"
    _cli("demo", "record", "--store", str(directory), "--count", "1", "--no-causal")
    with open_store(directory) as store:
        (trace_id,) = [i.trace_id for i in store.query().items]
    _cli(
        "analyse", trace_id, "--store", str(directory), "--model", str(demo_checkpoint),
        "--metrics", METRICS, "--steps", "4",
    )  # fmt: skip
    _grounding(directory, trace_id, demo_model)
    with open_store(directory, writable=True) as store:
        bare = store.add(make_synthetic_trace(seed=21))
    _hostile_copy(directory, root / "hostile", trace_id)
    return FaithStore(directory, trace_id, bare, root / "hostile")


def _stored(directory: Path, trace_id: str, kind: str) -> dict[str, dict]:
    with open_store(directory) as store:
        return results.latest(store.list_results(trace_id, kind))


def _frame(chart) -> list[dict]:
    """The rows an Altair chart on the page carries (its Arrow dataset)."""
    (dataset,) = chart.proto.datasets
    return pa.ipc.open_stream(io.BytesIO(dataset.data.data)).read_all().to_pylist()


def _table(at, column: str):
    """The first table on the page with ``column`` (pages hold several)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _texts(at) -> list[str]:
    return [t.value for t in at.text]


def test_method_table_and_curves_are_the_stored_numbers(app, faith):
    at = app("faithfulness", store_dir=faith.directory, trace=faith.trace, tokens="1")
    assert not at.exception
    stored = _stored(faith.directory, faith.trace, results.FAITHFULNESS)
    whole, token = at.dataframe[0].value, at.dataframe[1].value
    deletion, localisation = stored["deletion"], stored["localisation"]
    row = whole.set_index("map").loc["relevancy.llm"]
    assert row["deletion AUC ↓"] == pytest.approx(
        deletion["headline"]["deletion_auc.relevancy.llm"]
    )
    assert row["pointing ↑"] == pytest.approx(localisation["headline"]["pointing.relevancy.llm"])
    maps = list(whole["map"])
    assert maps[-2:] == ["random", "chance (analytic)"]  # the rows every map is read against
    assert "occlusion" in maps  # a stored map joins the comparison (localisation scored it)
    chance = whole.set_index("map").loc["chance (analytic)"]
    assert chance["box mass ↑"] == pytest.approx(localisation["headline"]["box_mass.chance"])
    # the token table holds answer token 1's own values, not the answer's mean
    per_token = token.set_index("map").loc["relevancy.llm"]
    assert per_token["deletion AUC ↓"] == pytest.approx(
        deletion["per_token"]["auc"]["relevancy.llm"][1]
    )
    assert "Curves of answer token 1: </s>" in _texts(at)
    rows = _frame(at.get("vega_lite_chart")[0])
    llm = [
        r["probability"] for r in rows if r["map"] == "relevancy.llm" and r["mode"] == "deletion"
    ]
    assert llm == pytest.approx(deletion["per_token"]["curves"]["relevancy.llm"][1])
    assert {r["mode"] for r in rows} == {"deletion", "insertion"}
    assert len(at.get("image")) == 2  # the stored occlusion map and the evidence map
    # the page's figures for export: the curves, the occlusion map, the evidence map
    assert "Figures (3): PNG and SVG" in [e.label for e in at.expander]
    with open_store(faith.directory) as store:  # the headline numbers are filterable metrics
        assert store.get(faith.trace).metrics["deletion_auc.relevancy.llm"] == pytest.approx(
            row["deletion AUC ↓"]
        )


def test_a_trace_without_results_says_how_to_compute_them(app, faith):
    at = app("faithfulness", store_dir=faith.directory, trace=faith.bare)
    assert not at.exception
    commands = [c.value for c in at.code]
    assert len(commands) == len(result_views.VIEWS)  # every kind: how to compute it
    first = commands[0]
    assert first.startswith(f"lvlm-interpret analyse {faith.bare} --store ")
    assert "--metrics localisation,deletion,insertion --model CHECKPOINT" in first
    assert str(faith.directory) in first


def test_hostile_names_and_unreadable_payloads_show_as_text(app, faith):
    at = app("faithfulness", store_dir=faith.hostile, trace=faith.trace, tokens="0")
    assert not at.exception
    texts = _texts(at)
    assert f"{XSS_IMG} · answer token 0: yellow" in texts  # the map's name, literally
    assert any(t.startswith("broken map: not shown (its map is not a table") for t in texts)
    assert any(t.startswith("insertion result: not shown") for t in texts)
    grounding_words = _table(at, "word")  # the payload's words are table cells
    assert grounding_words["word"][0] == XSS_SCRIPT
    assert not any("<script" in h.proto.body for h in at.get("html"))
    assert len(at.get("image")) == 3  # occlusion, its hostile-named copy, evidence; not broken
    assert HOSTILE_MAP in list(_table(at, "weight")["map"])  # evidence weights: text cells
    assert HOSTILE_MAP in list(at.dataframe[0].value["map"])  # a table cell: text
    rows = _frame(at.get("vega_lite_chart")[0])
    assert {HOSTILE_MAP, MD_IMAGE} <= {r["map"] for r in rows}  # chart data, never markup
    markdown = " ".join(str(m.value) for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert XSS_SCRIPT not in markdown and MD_IMAGE not in markdown


def test_unknown_payload_shapes_are_one_line_errors():
    with pytest.raises(results.Unreadable, match="no 'per_token' mapping"):
        results.curves({"method": "deletion", "per_token": [1]}, 0)
    with pytest.raises(results.Unreadable, match="has 2 values, not 3"):
        results.curves({"per_token": {"fractions": [0, 0.5, 1], "curves": {"m": [[1, 2]]}}}, 0)
    with pytest.raises(results.Unreadable, match="the curve of m is not a list of numbers"):
        results.curves({"per_token": {"fractions": [0, 1], "curves": {"m": [[1, "x"]]}}}, 0)
    with pytest.raises(results.Unreadable, match=r"shape \(2,\), not \(1, 3\)"):
        results.map_array({"per_token": {"map": [1, 2]}}, 1, 3)
    with pytest.raises(results.Unreadable, match="not finite"):
        results.map_array({"per_token": {"map": [[1, float("nan"), 2]]}}, 1, 3)
    # a table of payloads that hold nothing readable is empty, not an error
    assert results.method_table({"localisation": {"method": "localisation"}}).empty
    odd = {"method": "deletion", "headline": [1], "per_token": {"auc": {"m": "x"}}}
    table = results.method_table({"deletion": odd}, token=0)
    assert list(table["map"]) == ["m"] and list(table.columns) == ["map"]  # no score: no column
    newest = {"b@2/k": {"method": "x", "v": 2}, "b@1/k": {"method": "x", "v": 1}, "c": [1]}
    assert results.latest(newest) == {"x": {"method": "x", "v": 2}}  # last key; no name: out


def test_flagged_filter_round_trips_the_url_and_combines_with_the_metric_range():
    flagged = BrowseFilters.from_params({"flagged": "1"})
    assert flagged.flagged and flagged.to_params()["flagged"] == "1"
    assert BrowseFilters.from_params({"flagged": "yes"}).flagged is False  # junk: off
    assert flagged.metric_ranges() == {FLAGGED_METRIC: (1.0, None)}
    both = BrowseFilters.from_params(
        {"flagged": "1", "metric": "deletion_auc.relevancy.llm", "mmax": "0.5"}
    )
    assert both.metric_ranges() == {
        "deletion_auc.relevancy.llm": (None, 0.5),
        FLAGGED_METRIC: (1.0, None),
    }
    same = BrowseFilters.from_params({"flagged": "1", "metric": FLAGGED_METRIC, "mmin": "3"})
    assert same.metric_ranges() == {FLAGGED_METRIC: (3.0, None)}


def test_browse_filters_by_flagged_tokens_and_deletion_auc(app, faith):
    with open_store(faith.directory) as store:
        auc = store.get(faith.trace).metrics["deletion_auc.relevancy.llm"]
    name = "deletion_auc.relevancy.llm"

    def shown(directory: Path, **params: str) -> list[str]:
        at = app(None, store_dir=directory, **params)
        assert not at.exception
        return [] if not at.dataframe else list(at.dataframe[0].value["id"])

    short = faith.trace[:8]
    assert shown(faith.directory, metric=name, mmax=repr(auc + 1e-6)) == [short]
    assert shown(faith.directory, metric=name, mmax=repr(auc - 1e-6)) == []
    assert shown(faith.directory, flagged="1") == [short]  # the grounding method flagged a word
    assert shown(faith.directory, flagged="1", metric=name, mmin=repr(auc + 1e-6)) == []
    with open_store(faith.directory, writable=True) as store:
        query = BrowseFilters.from_params({"flagged": "1"}).to_query()
        assert [i.trace_id for i in store.query(query).items] == [faith.trace]
        store.set_metrics(faith.bare, {FLAGGED_METRIC: 0.0})  # graded, none flagged: left out
        assert store.query(TraceQuery(metric_ranges={FLAGGED_METRIC: (None, None)})).total == 2
        assert store.query(query).total == 1


def test_figures_and_report_section(faith):
    with open_store(faith.directory) as store:
        trace = store.open(faith.trace)
        curves = figures.curves_figure(trace, store, 0)  # as a notebook calls it
        svg = curves.svg()
        assert "relevancy.llm" in svg and "deletion" in svg
        stored_map = faith_figures.stored_map_figure(trace, store, "occlusion", 1)
        assert faith_figures.evidence_figure(trace, store, 0).png(1).startswith(b"\x89PNG")
        assert stored_map.png(1).startswith(b"\x89PNG")
        with pytest.raises(ValueError, match="no cleann map is stored"):
            faith_figures.stored_map_figure(trace, store, "cleann", 0)
        with pytest.raises(ValueError, match="out of range"):
            faith_figures.curves_figure(trace, store, 5)
        report = build_report(store, [faith.trace])
        bare = store.open(faith.bare)
        with pytest.raises(ValueError, match="no deletion or insertion result"):
            faith_figures.curves_figure(bare, store, 0)
        grounding = next(iter(store.list_results(faith.trace, "grounding").values()))
        deletion_keys = list(store.list_results(faith.trace, "faithfulness"))
    section = report.split('data-section="Faithfulness"', 1)[1].split("</section>", 1)[0]
    assert "<th>deletion AUC ↓</th>" in section and "chance (analytic)" in section
    assert section.count("<figure>") == 3  # the curves, the evidence and the occlusion map
    flags = report.split('data-section="Flagged tokens"', 1)[1].split("</section>", 1)[0]
    words = grounding["per_token"]["words"]
    flagged = [w for w, f in zip(words, grounding["per_token"]["flagged"], strict=True) if f]
    assert (
        flagged and f"Flagged content words (grounding below 0.99): {', '.join(flagged)}." in flags
    )
    results = report.split('data-section="Metrics and results"', 1)[1].split("</section>", 1)[0]
    assert not any(key in results for key in deletion_keys)  # not repeated as raw JSON


def test_hostile_report_section_is_escaped(faith):
    with open_store(faith.hostile) as store:
        report = build_report(store, [faith.trace])
    section = report.split('data-section="Faithfulness"', 1)[1].split("</section>", 1)[0]
    assert XSS_SCRIPT not in report and "&lt;script&gt;" in section
    assert "Not drawn:" in section  # the broken map: one line in the report


@pytest.mark.browser
@pytest.mark.slow
def test_page_in_chromium_draws_curves_table_and_map_and_runs_no_script(faith):
    errors: list[str] = []
    with running_dashboard(faith.hostile) as site, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (errors.append("dialog"), d.dismiss()))
        page.goto(f"{site}/faithfulness?trace={faith.trace}&tokens=0")
        page.get_by_text("Methods compared over the whole answer").wait_for()
        page.locator(
            "[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg"
        ).first.wait_for()
        page.locator("[data-testid='stDataFrame']").first.wait_for()
        page.locator("[class*='st-key-faith-map'] img").first.wait_for()
        assert page.locator("[class*='st-key-faith-map'] img").count() == 2
        page.get_by_text(f"{XSS_IMG} · answer token 0: yellow", exact=True).wait_for()
        page.wait_for_timeout(500)
        assert page.locator("[data-testid='stException']").count() == 0
        assert page.evaluate("() => window.__xss") is None
        assert errors == []
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "faithfulness.png"), full_page=True)


def test_grounding_view_and_flagged_answer_on_generation(app, faith):
    (payload,) = _stored(faith.directory, faith.trace, results.GROUNDING).values()
    assert payload["per_token"]["flagged"] == [True, False]  # "yellow" < STRICT; "</s>" no word
    at = app("faithfulness", store_dir=faith.directory, trace=faith.trace)
    assert not at.exception
    tokens = _table(at, "drop")
    assert list(tokens["drop"]) == pytest.approx(payload["per_token"]["drop"])
    assert list(tokens["image share"]) == pytest.approx(payload["per_token"]["image_share"])
    words = _table(at, "word")
    assert list(words["word"]) == ["yellow", "</s>"] and list(words["flagged"]) == [True, False]
    (answer,) = [h.proto.body for h in at.get("html") if "lvlm-tokens" in h.proto.body]
    assert "<mark" in answer and ">yellow</mark>" in answer and "&lt;/s&gt;</span>" in answer
    generation = app("generation", store_dir=faith.directory, trace=faith.trace)
    assert not generation.exception
    shown = [h.proto.body for h in generation.get("html") if "lvlm-tokens" in h.proto.body]
    assert shown == [answer]  # the same highlighted answer beside the probabilities


def test_generation_without_grounding_shows_no_flag_line(app, faith):
    at = app("generation", store_dir=faith.directory, trace=faith.bare)
    assert not at.exception
    assert not [h for h in at.get("html") if "<mark" in h.proto.body]


def test_evidence_view_is_the_stored_map_agreement_and_weights(app, faith):
    (payload,) = _stored(faith.directory, faith.trace, results.EVIDENCE).values()
    at = app("faithfulness", store_dir=faith.directory, trace=faith.trace, tokens="0")
    assert not at.exception
    agreement = payload["per_token"]["agreement"]
    line = next(t for t in _texts(at) if t.startswith("Agreement"))
    assert f"{agreement[0]:.2f} for this token" in line
    weights = _table(at, "weight")
    stored = payload["per_token"]["weights"]
    assert dict(zip(weights["map"], weights["weight"], strict=True)) == pytest.approx(stored)
    assert list(weights["weight"]) == sorted(stored.values(), reverse=True)
    assert "random" not in stored  # the baseline is what weights are measured against
    found = results.evidence(payload, 2, len(payload["per_token"]["map"][0]))
    assert found.map.shape[0] == 2 and (found.map >= 0).all() and (found.map <= 1).all()
