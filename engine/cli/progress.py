"""A rich progress display fed by the recorder's ``(stage, done, total)`` callback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:  # the recorder imports torch; a progress bar does not need it
    from engine.recorder import Progress as ProgressCallback


@contextmanager
def recording_progress(label: str) -> Iterator[ProgressCallback]:
    """Bars titled ``label: stage``; the label (a file name) is shown as text, never markup."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{escape(label)}: {stage}", total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update
