"""Streamlit dashboard that browses stored traces without loading any model.

Only this package imports Streamlit; it reads traces through :mod:`store` and never imports
torch or transformers, so it starts fast and runs on machines without a GPU.
"""
