"""The dashboard served as an ASGI app whose every request must name an allowed host.

DNS rebinding: a page on ``evil.example`` whose name is re-pointed at 127.0.0.1 reaches a
local server with ``Host: evil.example`` (and a matching ``Origin``), so an origin check
alone lets it in. Streamlit's ``server.allowedHosts`` guards only the websocket; this
middleware applies the same list to every HTTP request and websocket, before Streamlit.
``lvlm-interpret serve`` fills the list (see :mod:`dashboard.serve`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import streamlit as st
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from streamlit import config

from dashboard.serve import LOOPBACK_NAMES


def host_allowed(host: str | None, allowed: list[str]) -> bool:
    """Whether a ``Host`` header names an allowed host (port ignored; ``*.x`` wildcards)."""
    try:
        name = urlsplit(f"//{host}").hostname if host else None
    except ValueError:
        return False
    if not name:
        return False
    name = name.rstrip(".")
    return any(
        pattern == "*"
        or name == pattern
        or (pattern.startswith("*.") and name.endswith(pattern[1:]))
        for pattern in (p.strip().lower().rstrip(".") for p in allowed)
    )


class HostCheck:
    """Answer 403 to any request or websocket whose ``Host`` is not in the allowed list."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope["headers"])
            host = headers.get(b"host", b"").decode("latin-1") or None
            allowed = config.get_option("server.allowedHosts") or list(LOOPBACK_NAMES)
            if not host_allowed(host, allowed):
                refusal = PlainTextResponse(
                    "Host not allowed; see lvlm-interpret serve --help", 403
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


app = st.App(Path(__file__).with_name("app.py"), middleware=[Middleware(HostCheck)])
