"""Figures: every kind renders as a PNG Pillow decodes and an SVG that parses, at the scale
asked for, with its legend; token text stays text; charts never fetch; no Streamlit needed."""

from __future__ import annotations

import io
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import altair as alt
import numpy as np
import pytest
from PIL import Image

from dashboard import figures
from dashboard.components import colormap
from dashboard.components.overlay import OverlayStyle
from methods.cleann.trace import explain_token
from store import RelevancyMode, open_store
from tests.dashboard.conftest import MD_IMAGE, XSS_IMG, XSS_SCRIPT

SVG = "{http://www.w3.org/2000/svg}"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def traces(demo_store, family_store):
    """Open traces of every geometry: main/second/xss (4x6 grid), tiled, two images, cross."""
    stores = [open_store(demo_store.directory), open_store(family_store.directory)]
    opened = {
        "main": stores[0].open(demo_store.main),
        "second": stores[0].open(demo_store.second),
        "xss": stores[0].open(demo_store.xss),
        "tiled": stores[1].open(family_store.tiled),
        "images": stores[1].open(family_store.images),
        "cross": stores[1].open(family_store.cross),
    }
    yield opened
    for trace in opened.values():
        trace.close()
    for store in stores:
        store.close()


def _svg(figure: figures.Figure, scale: float = 1.0) -> ET.Element:
    root = ET.fromstring(figure.svg(scale))
    assert root.tag == f"{SVG}svg"
    assert list(root.iter(f"{SVG}script")) == [] and list(root.iter(f"{SVG}foreignObject")) == []
    return root


def _texts(root: ET.Element) -> str:
    return " ".join("".join(t.itertext()) for t in root.iter(f"{SVG}text"))


def _png(figure: figures.Figure, scale: float) -> Image.Image:
    picture = Image.open(io.BytesIO(figure.png(scale)))
    picture.load()
    assert picture.format == "PNG"
    assert picture.info["dpi"][0] == pytest.approx(96 * scale, rel=1e-3)
    return picture


def _has_bar(picture: Image.Image, lut: np.ndarray, tolerance: int = 8) -> bool:
    """Whether some row holds the colour map's ramp: its 1/4, 1/2 and 3/4 colours, left to
    right (overlays blend colours with the photo, so pure map colours come from the bar)."""
    pixels = np.asarray(picture.convert("RGB"), np.int16)
    hits = [
        (np.abs(pixels - lut[i].astype(np.int16)).max(axis=2) <= tolerance) for i in (64, 128, 192)
    ]
    for row in range(pixels.shape[0]):
        xs = [np.flatnonzero(hit[row]) for hit in hits]
        if all(x.size for x in xs) and xs[0].min() < xs[1].max() and xs[1].min() < xs[2].max():
            return True
    return False


def _check_resolution(figure: figures.Figure) -> None:
    """Its PNG is as wide as the SVG says, times the scale (3x = 288 dpi: print)."""
    width = float(_svg(figure).get("width"))
    height = float(_svg(figure).get("height"))
    for scale in (1.0, 3.0):
        picture = _png(figure, scale)
        assert picture.width == pytest.approx(width * scale, abs=2 * scale + 1)
        assert picture.height == pytest.approx(height * scale, abs=3 * scale + 1)


def map_builders(traces):
    main = traces["main"]
    return {
        **{
            f"relevancy-{m.value}": lambda m=m: figures.relevancy_figure(main, [0, 1], m)
            for m in main.relevancy.modes
        },
        "attention": lambda: figures.attention_figure(main, heads=3),
        "vision": lambda: figures.vision_figure(main, query=5),
        "rollout": lambda: figures.vision_figure(main, query=5, rollout=True),
        "tiled": lambda: figures.relevancy_figure(traces["tiled"], [0], RelevancyMode.VISION),
        "two-images": lambda: figures.attention_figure(traces["images"], layer=0),
        "cross": lambda: figures.cross_attention_figure(traces["cross"], 0),
        "gallery": lambda: figures.relevancy_gallery(main, RelevancyMode.LLM_THROUGH_VISION),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "relevancy-llm",
        "relevancy-vision",
        "attention",
        "vision",
        "rollout",
        "tiled",
        "two-images",
        "cross",
        "gallery",
    ],
)
def test_maps_have_resolution_and_legend(traces, kind):
    figure = map_builders(traces)[kind]()
    assert figure.kind == "map" and figure.title and figure.caption
    _check_resolution(figure)
    root = _svg(figure, 2.0)
    # the colour bar is vector text: its quantity and its min / mid / max values
    texts = _texts(root)
    assert any(q in texts for q in (figures.SCORE, figures.WEIGHT, "rollout weight"))
    assert len([t for t in root.iter(f"{SVG}text") if (t.text or "").strip()]) >= 5
    embedded = [i.get("href") for i in root.iter(f"{SVG}image")]
    assert embedded and all(h.startswith("data:image/png;base64,") for h in embedded)
    # and the PNG draws the bar: both ends of the colour map are there
    lut = colormap.lut(OverlayStyle().colormap)
    picture = _png(figure, 1.0)
    assert _has_bar(picture, lut)


def test_a_map_without_its_legend_lacks_the_bar(traces):
    """The legend check above can fail: the plain image figure has no colour bar."""
    picture = _png(figures.image_figure(traces["main"]), 1.0)
    assert not _has_bar(picture, colormap.lut("inferno"))


@pytest.mark.parametrize(
    ("kind", "legend"),
    [
        ("probabilities", "probability (%)"),
        ("text-relevancy", "share of relevancy (%)"),
        ("head-shares", "attention on image tokens (% of row)"),
        ("shares", "share of attention (%)"),
        ("divergence", "Jensen-Shannon divergence (bits)"),
        ("text-to-image", figures.WEIGHT),
        ("text-to-image-layers", figures.WEIGHT),
    ],
)
def test_charts_have_resolution_and_scale(traces, kind, legend):
    main = traces["main"]
    build = {
        "probabilities": lambda: figures.probability_chart(main, [1]),
        "text-relevancy": lambda: figures.text_relevancy_chart(main, [0]),
        "head-shares": lambda: figures.head_share_chart(main, 1, [0]),
        "shares": lambda: figures.share_matrix_figure(main, [0]),
        "divergence": lambda: figures.compare_figures(main, traces["second"])[-1],
        "text-to-image": lambda: figures.text_to_image_figures(main, [0, 7])[0],
        "text-to-image-layers": lambda: figures.text_to_image_figures(main, [0, 7], head=1)[1],
    }[kind]
    figure = build()
    assert figure.kind == "chart"
    _check_resolution(figure)
    texts = _texts(_svg(figure))
    assert legend in texts  # the value scale's title (colour legend or value axis)
    assert figure.title in texts


def test_gallery_has_a_map_per_answer_token(traces):
    main = traces["main"]
    texts = _texts(_svg(figures.relevancy_gallery(main)))
    labels = figures.answer_labels(main)
    assert all(f"token {k}: {label}" in texts for k, label in enumerate(labels))


def test_compare_figures_align_and_difference(traces):
    drawn = figures.compare_figures(traces["main"], traces["second"], [0], "relevancy")
    assert [f.kind for f in drawn] == ["map", "map", "chart"]
    difference = _texts(_svg(drawn[1]))
    assert "difference (right - left)" in difference.replace("−", "-")
    # different patch layouts: side by side only, no difference map
    apart = figures.compare_figures(traces["main"], traces["images"], [0])
    assert [f.kind for f in apart] == ["map"]


def test_causal_figures(traces):
    main = traces["main"]
    results = [explain_token(main, main.num_layers - 1, h, 0) for h in range(main.num_heads)]
    drawn = figures.causal_figures(main, results)
    kinds = [f.kind for f in drawn]
    assert "graph" in kinds and kinds[-1] == "chart"
    graph = next(f for f in drawn if f.kind == "graph")
    _check_resolution(graph)
    assert "arrowhead" not in _texts(_svg(graph))  # the graph's own legend is in its picture


def test_token_text_stays_text(traces):
    """Hostile tokens, prompt and file name: in SVG they are escaped text, never elements."""
    xss = traces["xss"]
    for figure in (
        figures.probability_chart(xss),
        figures.image_figure(xss),
        figures.relevancy_figure(xss, [0, 1]),
    ):
        source = figure.svg()
        root = _svg(figure)
        assert "<script" not in source and "<img" not in source
        texts = _texts(root)
        if figure.kind != "chart":  # Vega cuts long axis labels: checked below
            assert any(hostile in texts for hostile in (XSS_IMG, XSS_SCRIPT, MD_IMAGE))
    probabilities = _texts(_svg(figures.probability_chart(xss)))
    assert "<script>" in probabilities  # the label, as characters


def test_scale_and_format_are_checked(traces, tmp_path):
    figure = figures.relevancy_figure(traces["main"])
    with pytest.raises(ValueError, match="scale"):
        figure.png(0.1)
    with pytest.raises(ValueError, match="scale"):
        figure.svg(float("nan"))
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        figure.save(tmp_path / "x.jpg")
    assert _png(figure, 2.0).size == Image.open(io.BytesIO(figure.png(dpi=192))).size
    written = figure.save(tmp_path / "x.svg")
    assert ET.parse(written).getroot().tag == f"{SVG}svg"


def test_requests_the_trace_cannot_answer(traces):
    main = traces["main"]
    with pytest.raises(ValueError, match="answer token 99"):
        figures.relevancy_figure(main, [99])
    with pytest.raises(ValueError, match="layer"):
        figures.attention_figure(main, layer=main.num_layers)
    with pytest.raises(ValueError, match="cross-attention"):
        figures.attention_figure(traces["cross"])
    with pytest.raises(ValueError, match="no cross-attention"):
        figures.cross_attention_figure(main)
    with pytest.raises(ValueError, match="patch"):
        figures.text_to_image_figures(main, [main.image.num_patches])
    with pytest.raises(ValueError, match="head"):
        figures.text_to_image_figures(main, [0], head=main.num_heads)


def test_charts_never_fetch():
    """vl-convert is given no allowed base URL: a spec naming one fails instead of fetching."""
    chart = alt.Chart(alt.UrlData("http://127.0.0.1:9/x.csv")).mark_point().encode(x="a:Q")
    figure = figures.chart_figure(chart, "url", "t", "c")
    with pytest.raises(ValueError, match="not allowed"):
        figure.svg()


def test_no_streamlit_or_torch_needed():
    code = (
        "import sys, dashboard.figures, dashboard.report; "
        "print(sorted(m for m in ('streamlit', 'torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
