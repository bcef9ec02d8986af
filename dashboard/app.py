"""Entry point of the Streamlit app: it declares the pages and routes between them.

Run it through ``lvlm-interpret serve --store DIR`` (see :mod:`dashboard.serve`). Two things
hold for every page, so they live here: the URL's shared settings are remembered before
the page runs (a link keeps its colour map on a page without heatmaps), and a trace file
that fails while a page reads it, or lacks a part a view reads, ends in one line, not a
traceback.
"""

import streamlit as st

from dashboard import context, export, icon, share, state
from dashboard.components import filters, text
from store import CorruptTrace, MissingData, StoreError

# The icon is an in-memory picture served by this server: an emoji or Material icon would
# make every page load fetch it from the internet (and fail offline).
st.set_page_config(page_title="LVLM-Interpret", page_icon=icon.picture(), layout="wide")

PAGES = [
    st.Page("views/browse.py", title="Browse", icon=":material/table_view:", default=True),
    st.Page(
        "views/generation.py", title="Generation", icon=":material/chat:", url_path="generation"
    ),
    st.Page(
        "views/attention.py", title="Raw attention", icon=":material/grid_on:", url_path="attention"
    ),
    st.Page(
        "views/relevancy.py", title="Relevancy", icon=":material/insights:", url_path="relevancy"
    ),
    st.Page("views/causal.py", title="Causal", icon=":material/science:", url_path="causal"),
    st.Page(
        "views/faithfulness.py",
        title="Faithfulness",
        icon=":material/verified:",
        url_path="faithfulness",
    ),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    st.Page("views/dataset.py", title="Dataset", icon=":material/dataset:", url_path="dataset"),
    st.Page("views/ask.py", title="Ask", icon=":material/forum:", url_path="ask"),
]

state.keep((*state.SHARED, *state.VIEWS, *filters.PARAMS))
page = st.navigation(PAGES)
# Filled after the page: its link and report carry the page's final settings, and the
# page's own content (the heatmap people wait for) is sent first.
tools = st.sidebar.container()
try:
    page.run()
except (CorruptTrace, OSError) as error:
    context.damaged(error)
except MissingData as error:  # a part the recording policy left out: what to record instead
    st.info(text.markdown_literal(str(error).splitlines()[0]))
except StoreError as error:  # the index failed (locked, unreachable): one line, no traceback
    st.error(f"The store cannot be read: {text.markdown_literal(str(error).splitlines()[0])}")
finally:  # also when a page stops early (st.stop: no trace selected)
    with tools:
        share.link_button()
        export.page_report(page.url_path)
