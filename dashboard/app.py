"""Entry point of the Streamlit app: it only declares the pages and routes between them.

Run it through ``lvlm-interpret serve --store DIR`` (see :mod:`dashboard.serve`).
"""

import streamlit as st

st.set_page_config(page_title="LVLM-Interpret", page_icon=":material/visibility:", layout="wide")

PAGES = [
    st.Page(
        "views/browse.py",
        title="Browse",
        icon=":material/table_view:",
        default=True,
    ),
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
    st.Page("views/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
]

st.navigation(PAGES).run()
