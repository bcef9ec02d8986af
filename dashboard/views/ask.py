"""Work in progress (wave 2): this page is being built."""

import streamlit as st

st.info("This page is being built.")
