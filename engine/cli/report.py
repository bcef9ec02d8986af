"""`lvlm-interpret report`: a self-contained HTML report of stored traces (and a PDF of it).

Torch-free: the report is drawn by :mod:`dashboard.report`, imported only when the inputs
are valid. Every mistake (an unknown trace id, an --out that exists, cannot be written or
lies in the store's own folders) is one line and exit code 2, before anything is drawn.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from engine.cli.messages import fail
from store import InvalidName, StoreError, TraceQuery, check_name, open_store

if TYPE_CHECKING:
    from dashboard.report import ReportOptions

TraceIds = Annotated[list[str] | None, typer.Argument(help="Trace ids to report on.")]


def _out_problem(out: Path, store: Path, force: bool) -> str | None:
    """Why the report cannot be written to ``out`` (None: it can); a name the system refuses
    (too long, say) is a problem too, not a traceback."""
    if not out.name:
        return f"--out {str(out)!r} names no file"
    try:
        return _path_problem(out, store, force)
    except OSError as error:
        return f"--out {out}: {error.strerror or error}"


def _path_problem(out: Path, store: Path, force: bool) -> str | None:
    if out.is_dir():
        return f"--out {out} is a directory; name a file"
    if (out.exists() or out.is_symlink()) and not force:
        return f"--out {out} exists; pass --force to replace it"
    # --force renames over the name itself: a device (/dev/null), pipe or socket there would
    # be replaced by a regular file, which is never what "replace the report" means
    if out.exists() and not out.is_symlink() and not stat.S_ISREG(out.stat().st_mode):
        return f"--out {out} is not a regular file; name a file"
    # the store's folder is the store's own (data/, tmp/, quarantine/, its index): a report
    # there would be a foreign file to reindex and gc, or could land on a trace's name
    if (out.parent.resolve() / out.name).is_relative_to(store.resolve()):
        return f"--out {out} lies inside the store {store}; write it elsewhere"
    if not out.parent.is_dir():
        return f"--out {out}: folder {out.parent} does not exist"
    if not os.access(out.parent, os.W_OK | os.X_OK):
        return f"--out {out}: folder {out.parent} is not writable"
    if out.exists() and not os.access(out, os.W_OK):
        return f"--out {out} is not writable"
    return None


def _reserve(out: Path) -> Path:
    """A temporary file beside ``out``, created now: proves the folder takes a file before
    anything is drawn (``os.access`` says yes to root on a read-only mount)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # an ordinary file's mode, not mkstemp's 0600
    return Path(tmp)


def _place(tmp: Path, out: Path, data: bytes, force: bool) -> None:
    """Fill ``tmp`` and put it at ``out``: renamed over it with --force, else linked, so a
    file that appeared at ``out`` meanwhile is never replaced."""
    tmp.write_bytes(data)
    if force:
        os.replace(tmp, out)
    else:
        os.link(tmp, out)


def report(
    trace_ids: TraceIds = None,
    store: Annotated[Path, typer.Option("--store", help="Store directory.")] = Path("traces"),
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL of the index.")] = None,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
    compare: Annotated[
        bool, typer.Option("--compare", help="Compare two traces (give exactly two ids).")
    ] = False,
    query: Annotated[
        bool,
        typer.Option("--query", help="Report on the traces matching the filters (none: all)."),
    ] = False,
    model: Annotated[str | None, typer.Option(help="Filter: exact model id.")] = None,
    revision: Annotated[str | None, typer.Option(help="Filter: part of the revision.")] = None,
    tag: Annotated[str | None, typer.Option(help="Filter: traces with this tag.")] = None,
    text: Annotated[str | None, typer.Option(help="Filter: substring of prompt or answer.")] = None,
    correct: Annotated[
        bool | None, typer.Option("--correct/--incorrect", help="Filter: judged right/wrong.")
    ] = None,
    after: Annotated[str | None, typer.Option(help="Filter: created at or after.")] = None,
    before: Annotated[str | None, typer.Option(help="Filter: created before.")] = None,
    limit: Annotated[int, typer.Option(help="Most traces a set report lists.")] = 100,
    token: Annotated[
        list[int] | None, typer.Option("--token", help="Answer token to explain (repeatable).")
    ] = None,
    layer: Annotated[
        int | None, typer.Option(help="Attention layer (default: most on image).")
    ] = None,
    scale: Annotated[float, typer.Option(help="Picture resolution: 1 screen, 2 print.")] = 1.5,
    pdf: Annotated[
        bool, typer.Option("--pdf", help="Also print it to PDF (.pdf beside --out).")
    ] = False,
) -> None:
    """Write ONE self-contained HTML file (opens offline) about stored traces: one or more
    traces, two compared (--compare), or a filtered set (--query and filters)."""
    ids = list(dict.fromkeys(trace_ids or []))
    filters = dict(
        model=model,
        revision_contains=revision,
        tag=tag,
        text=text,
        correct=correct,
        created_after=after,
        created_before=before,
    )
    filtered = query or any(v is not None for v in filters.values())
    if filtered and ids:
        fail("give trace ids or --query filters, not both")
    if not filtered and not ids:
        fail("name at least one trace id, or pass --query (with filters) for a set of traces")
    if compare and len(ids) != 2:
        fail(f"--compare takes exactly two trace ids, got {len(ids)}")
    if tag is not None:
        try:
            tag = check_name(tag, "tag")
        except InvalidName as error:
            fail(error)
        filters["tag"] = tag
    problem = _out_problem(out, store, force)
    pdf_out = out.with_suffix(".pdf") if problem is None else out
    if pdf and problem is None:
        from dashboard.report.pdf import pdf_unavailable

        problem = pdf_unavailable() or (
            _out_problem(pdf_out, store, force) if pdf_out != out else "--out must not end in .pdf"
        )
    if problem:
        fail(problem)
    if not store.exists() and not store.is_symlink():
        fail(f"no store at {store.absolute()}")
    reserved: list[Path] = []
    try:
        for target in (out, pdf_out) if pdf else (out,):
            try:
                reserved.append(_reserve(target))
            except OSError as error:
                fail(f"cannot write {target}: {error.strerror or error}")
        html = _build(
            store,
            db,
            ids,
            filtered,
            compare,
            TraceQuery(**filters),
            _options(token, layer, scale, limit),
        )
        data = html.encode("utf-8")
        try:
            _place(reserved[0], out, data, force)
        except OSError as error:
            fail(f"cannot write {out}: {error.strerror or error}")
        typer.echo(f"wrote {out} ({len(data):,} bytes)")
        if pdf:
            from dashboard.report.pdf import write_pdf

            try:
                write_pdf(html, reserved[1])
                _place(reserved[1], pdf_out, reserved[1].read_bytes(), force)
            except Exception as error:  # a browser failure is reported, never a traceback
                fail(f"PDF not written: {' '.join(str(error).split())[:300]}")
            typer.echo(f"wrote {pdf_out} ({pdf_out.stat().st_size:,} bytes)")
    finally:
        for tmp in reserved:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def _options(token: list[int] | None, layer: int | None, scale: float, limit: int) -> ReportOptions:
    """The report's options from the command line (imported here: dashboard is lazy)."""
    from dashboard.report import ReportOptions

    return ReportOptions(tokens=tuple(token or ()), layer=layer, scale=scale, limit=limit)


def _build(
    store: Path,
    db: str | None,
    ids: list[str],
    filtered: bool,
    compare: bool,
    query: TraceQuery,
    options: ReportOptions,
) -> str:
    """The report's HTML; a problem with the request or the store is one line, exit 2."""
    from dashboard.report import ReportError, build_report

    try:
        with open_store(store, db_url=db) as opened:
            if filtered:
                return build_report(opened, query=query, options=options)
            if compare:
                return build_report(opened, ids[:1], compare=ids[1], options=options)
            return build_report(opened, ids, options=options)
    except (ReportError, StoreError, ValueError) as error:
        fail(error)
