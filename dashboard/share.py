"""'Copy link': the address of the view on screen, for sending to someone else.

Every setting of every page lives in the URL (:mod:`dashboard.state`), so the link is the
browser's own address. It is read in the browser at the moment of the click, not built on
the server from configuration: the server may be reached under another host name (a tunnel,
a proxy, ``--allow-host``) and only the browser knows which. The snippet carries no text
from the server, so nothing a trace or a user wrote can end up in its HTML or script.
Where the clipboard is refused (an insecure origin, a policy), the link appears, selected,
in a text field for copying by hand; otherwise that field stays hidden (an empty box on every
page said nothing). The sidebar also offers the link as text, drawn only when opened.
"""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

# Runs in the component's iframe (same origin as the app, allowed to write the clipboard).
_SNIPPET = """
<style>
  body { margin: 0; font-family: "Source Sans Pro", sans-serif; }
  button { font: inherit; font-size: 14px; padding: 6px 12px; border-radius: 8px;
           border: 1px solid rgba(49, 51, 63, 0.2); background: white; cursor: pointer; }
  button:hover { border-color: #ff4b4b; color: #ff4b4b; }
  input { display: block; width: 96%; margin-top: 6px; font-size: 12px; }
  input[hidden] { display: none; }  /* display: block above would show it empty */
</style>
<button id="copy" type="button">Copy link</button>
<input id="link" type="text" readonly hidden aria-label="Link to this view">
<script>
  const button = document.getElementById("copy");
  const field = document.getElementById("link");
  button.addEventListener("click", async () => {
    const url = window.parent.location.href;
    field.value = url;
    try {
      await navigator.clipboard.writeText(url);
      field.hidden = true;
      button.textContent = "Link copied ✓";
    } catch (error) {
      field.hidden = false;  // the fallback: the link, selected, for copying by hand
      field.select();
      const copied = document.execCommand && document.execCommand("copy");
      button.textContent = copied ? "Link copied ✓" : "Copy the selected link";
    }
    setTimeout(() => { button.textContent = "Copy link"; }, 4000);
  });
  // The settings changed since the click: the shown link is out of date, hide it.
  setInterval(() => {
    if (!field.hidden && field.value !== window.parent.location.href) field.hidden = true;
  }, 1000);
</script>
"""


def current_url() -> str | None:
    """The address of this view as the browser reached it (host name included), with the
    settings of this run; ``None`` outside a browser session (tests without a front end)."""
    base = st.context.url
    if not base:
        return None
    query = urlencode(st.query_params.to_dict())
    return f"{base}?{query}" if query else base


def link_button() -> None:
    """The "Copy link" button, and the same link as text under it (the app puts them at
    the top of the sidebar). The text is drawn only while its expander is open (opening it
    reruns the page), so a page's first heatmap does not wait for it."""
    st.iframe(_SNIPPET, height=76)  # room for the fallback field under the button
    url = current_url()
    if url:
        shown = st.expander("Link as text", key="share:text", on_change="rerun")
        if shown.open:
            with shown:
                st.code(url, language=None, wrap_lines=True)
