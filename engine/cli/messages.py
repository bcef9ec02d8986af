"""How every command reports a problem: one line on stderr and exit code 2.

Library messages can span lines and carry user text (paths, prompts) with bytes that are not
UTF-8 or with rich markup; the line is flattened and printed as plain text, never markup.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

USAGE_ERROR = 2


def one_line(text: object) -> str:
    """``text`` on one line, with undecodable bytes escaped rather than crashing the print."""
    flat = " ".join(str(text).split())
    return flat.encode("utf-8", "backslashreplace").decode("utf-8")


def note(text: object) -> None:
    """A remark on stderr that does not stop the command (e.g. a value that was capped)."""
    print(one_line(text), file=sys.stderr, flush=True)


def fail(error: object) -> NoReturn:
    """End the command: ``error: <message>`` and exit code 2, no traceback."""
    note(f"error: {one_line(error)}")
    raise typer.Exit(USAGE_ERROR)
