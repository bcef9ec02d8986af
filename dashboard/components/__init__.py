"""Pure helpers of the dashboard: no Streamlit here, so every piece is unit-testable."""
