"""`lvlm-interpret store ...`: list, inspect and maintain a trace store from the shell."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._index import TraceQuery
from ._paths import check_name
from ._store import TraceStore, open_store, reindex_store
from .errors import StoreError
from .schema import RelevancyMode

app = typer.Typer(
    help="Browse and maintain a trace store (HDF5 files + SQL index).", no_args_is_help=True
)
console = Console()

StoreDir = Annotated[Path, typer.Option("--store", help="Store directory.")]
DbUrl = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL of the index (default: SQLite in the store)."),
]


F = TypeVar("F", bound=Callable[..., None])


def _one_line_errors(command: F) -> F:
    """A store error ends the command with one plain line on stderr and exit code 2 (the
    message is printed as text: it may hold paths or names from a file)."""

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> None:
        try:
            command(*args, **kwargs)
        except StoreError as exc:
            _refuse(str(exc))

    return run  # type: ignore[return-value]


# what reindex names the rows it carries over (store._index.CARRIED), in this order
CARRIED_LABELS = {
    "trace_tags": "tag(s)",
    "trace_metrics": "metric(s)",
    "trace_results": "result(s)",
    "trace_notes": "note(s)",
    "jobs": "live job(s)",
}


def _refuse(message: str) -> NoReturn:
    """One plain line on stderr, exit code 2."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    raise typer.Exit(2)


def _row(table: Table, *cells: str) -> None:
    """Add a row of plain text: ids, prompts, answers, tags and paths come from users, models
    and files, and Rich would read "[red]" in them as markup (and "[/x]" as an error)."""
    table.add_row(*(Text(cell) for cell in cells))


def _open(store: Path, db: str | None, writable: bool = False) -> TraceStore:
    """Open an existing store: maintenance commands never create one (a mistyped --store
    would otherwise leave an empty store behind and report "no trace" or "removed 0")."""
    if not store.exists() and not store.is_symlink():
        raise StoreError(f"no store at {store.absolute()}; record a trace into it first")
    return open_store(store, db_url=db, writable=writable)


@app.command("ls")
@_one_line_errors
def ls(
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    model: Annotated[str | None, typer.Option(help="Exact model id.")] = None,
    text: Annotated[str | None, typer.Option(help="Substring of prompt or answer.")] = None,
    token: Annotated[str | None, typer.Option(help="An answer token, e.g. 'red'.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only traces with this tag.")] = None,
    after: Annotated[str | None, typer.Option(help="Created at or after (ISO date/time).")] = None,
    before: Annotated[str | None, typer.Option(help="Created before (ISO date/time).")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 50,
    offset: int = 0,
) -> None:
    """List traces, newest first."""
    with _open(store, db) as st:
        q = TraceQuery(
            model=model,
            text=text,
            answer_token=token,
            tag=tag,
            created_after=after,
            created_before=before,
            limit=limit,
            offset=offset,
        )
        page = st.query(q)
    table = Table(
        title=f"{page.total} trace(s)"
        + (f", showing {offset + 1}-{offset + len(page)}" if page.has_more or offset else "")
    )
    table.add_column("id", no_wrap=True, min_width=32)
    for col in ("created", "model", "prompt", "answer", "tags"):
        table.add_column(col, overflow="fold")
    for info in page:
        _row(
            table,
            info.trace_id,
            info.created_at[:19],
            info.model_id,
            info.prompt[:60],
            info.answer[:40],
            ", ".join(info.tags),
        )
    console.print(table)


@app.command()
@_one_line_errors
def show(trace_id: str, store: StoreDir = Path("traces"), db: DbUrl = None) -> None:
    """Show one trace's metadata and tensor shapes."""
    with _open(store, db) as st, st.open(trace_id) as tr:
        info = tr.info.to_dict()
        shapes = {
            "lm_attention": [tr.num_layers, tr.num_heads, tr.seq_len, tr.seq_len],
            "policy": tr.policy.value if tr.policy is not None else "custom",
            "lm_rows_kept": tr.seq_len if tr.lm_rows is None else len(tr.lm_rows),
            "vision_attention": [list(shape) for shape in tr.vision_shapes] or None,
            "cross_attention_layers": tr.cross_layers,
            "images": len(tr.image.images),
            "tiles": len(tr.image.tiles),
            "precision": tr.precision.value,
            "prompt_length": tr.prompt_length,
            "relevancy_modes": _held_modes(tr.relevancy),
            "file": str(tr.path),
        }
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in {**info, **shapes}.items():
        _row(table, key, value if isinstance(value, str) else json.dumps(value))
    console.print(table)


@app.command()
@_one_line_errors
def rm(
    trace_ids: list[str],
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete traces (index row and file)."""
    if not yes:
        typer.confirm(f"Delete {len(trace_ids)} trace(s)?", abort=True)
    with _open(store, db, writable=True) as st:
        for tid in trace_ids:
            st.delete(tid)
            console.print(f"deleted {tid}", markup=False)


@app.command()
@_one_line_errors
def tag(
    trace_id: str,
    tags: list[str],
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove these tags instead.")] = False,
) -> None:
    """Add (or with --remove, remove) tags."""
    with _open(store, db, writable=True) as st:
        (st.untag if remove else st.tag)(trace_id, *tags)
        info = st.get(trace_id)
        console.print(f"{info.trace_id}: {', '.join(info.tags) or '(no tags)'}", markup=False)


@app.command()
@_one_line_errors
def verify(store: StoreDir = Path("traces"), db: DbUrl = None) -> None:
    """Check every file against its checksum and the index; exit 1 if anything is wrong."""
    with _open(store, db) as st:
        problems = st.verify()
    if not problems:
        console.print("[green]store is consistent[/green]")
        return
    table = Table(title=f"{len(problems)} problem(s)")
    table.add_column("kind", no_wrap=True)
    table.add_column("trace", no_wrap=True, min_width=32)
    for col in ("path", "detail"):
        table.add_column(col, overflow="fold")
    for p in problems:
        _row(table, p.kind, p.trace_id or "", str(p.path), p.detail)
    console.print(table)
    if any(p.kind in ("temp_leftover", "orphan_file") for p in problems):
        console.print("temp leftovers and orphan files: `lvlm-interpret store gc` removes them")
    raise typer.Exit(1)


@app.command()
@_one_line_errors
def gc(store: StoreDir = Path("traces"), db: DbUrl = None) -> None:
    """Remove leftovers of interrupted writes and files no index row points at."""
    with _open(store, db, writable=True) as st:
        report = st.gc()
    console.print(
        f"removed {len(report.removed_temp)} temp file(s), {len(report.removed_orphans)} "
        f"orphan file(s), freed {report.freed_bytes / 2**20:.1f} MiB"
    )
    for path in report.quarantined:
        console.print(
            f"unreadable, moved to quarantine (not deleted): {path}", markup=False, soft_wrap=True
        )


@app.command()
@_one_line_errors
def export(trace_id: str, dest: Path, store: StoreDir = Path("traces"), db: DbUrl = None) -> None:
    """Copy a trace's HDF5 file and a JSON of its metadata to DEST."""
    with _open(store, db) as st:
        out = st.export(trace_id, dest)
    console.print(f"wrote {out} and {out.with_suffix('.json')}", markup=False)


@app.command()
@_one_line_errors
def reindex(store: StoreDir = Path("traces"), db: DbUrl = None) -> None:
    """Rebuild the index from the trace files (the old SQLite index is kept as a .bak file).

    Files that cannot be read are moved to quarantine/ (never deleted); damaged traces keep
    the evidence, so `store verify` still reports them."""
    report = reindex_store(store, db)
    console.print(f"indexed {report.indexed} trace(s)")
    for path in report.quarantined:
        console.print(
            f"unreadable, moved to quarantine (not deleted): {path}", markup=False, soft_wrap=True
        )
    for tid in report.damaged:
        console.print(f"damaged (`store verify` reports it): {tid}", markup=False)
    for path in report.skipped:
        console.print(
            f"not a trace file (a link or not ours), left alone: {path}",
            markup=False,
            soft_wrap=True,
        )
    if report.carried:
        rows = ", ".join(
            f"{report.carried[table]} {label}"
            for table, label in CARRIED_LABELS.items()
            if table in report.carried
        )
        console.print(f"kept from the old index: {rows}", markup=False)
    if report.set_aside is not None:
        console.print(
            f"notes and results of traces no longer indexed, kept in: {report.set_aside}",
            markup=False,
            soft_wrap=True,
        )


@app.command()
@_one_line_errors
def migrate(store: StoreDir = Path("traces"), db: DbUrl = None) -> None:
    """Upgrade the index's schema to this version's (Alembic); rows and files are kept.

    Opening a store writable does the same; a read-only open of an older index asks for it."""
    with _open(store, db, writable=True) as opened:
        console.print(f"index schema version {opened.schema_version()} (up to date)")


@app.command("gc-uploads")
@_one_line_errors
def gc_uploads(
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    older_than_days: Annotated[
        float,
        typer.Option(
            "--older-than-days",
            min=0,
            max=36500,  # inf passed min=0 and overflowed timedelta: a traceback
            help="Keep uploads newer than this (0 to 36500).",
        ),
    ] = 7.0,
) -> None:
    """Delete Ask-page uploads older than the limit that no queued or running job needs.

    Stored traces keep their own copy of the image: a removed upload only means "from the
    store" starts from that copy (at most 1024 pixels on a side) instead of the original."""
    from .jobs import JobQueue

    _open(store, db).close()  # an existing store only: never create one here
    with JobQueue(store, db) as queue:
        removed = queue.remove_stale_uploads(dt.timedelta(days=older_than_days))
    console.print(f"removed {len(removed)} upload file(s)")


def _held_modes(relevancy) -> str:
    if relevancy is None:
        return "not recorded"
    held = ", ".join(mode.value for mode in relevancy.modes)
    return held + (f" ({relevancy.legacy_note})" if relevancy.legacy_note else "")


@app.command()
@_one_line_errors
def relevancy(
    trace_id: str,
    mode: Annotated[
        RelevancyMode, typer.Option(help="Relevancy mode (see the README's definitions).")
    ] = RelevancyMode.ALL,
    token: Annotated[int, typer.Option(help="Answer token, 0-based.")] = 0,
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
) -> None:
    """Print one answer token's relevancy map in MODE on the patch grid, in % of the token's
    total relevancy."""
    with _open(store, db) as st, st.open(trace_id) as tr:
        maps, tokens, image = tr.relevancy, tr.tokens, tr.image
    if maps is None:
        _refuse("this trace has no relevancy (recorded with --no-relevancy)")
    if maps.map(mode) is None:
        _refuse(f"this trace holds no '{mode.value}' map. {maps.legacy_note or ''}")
    answer = tokens.text[tokens.prompt_length :]
    if not 0 <= token < len(answer):
        _refuse(f"--token must be in 0..{len(answer) - 1} (the answer's tokens)")
    values = maps.on_patches(mode, image)[token]
    console.print(f"{mode.value}: {mode.definition}", markup=False, highlight=False)
    console.print(f"answer token {token}: {answer[token]!r}", markup=False, highlight=False)
    for i, tile in enumerate(image.tiles):
        if len(image.tiles) > 1:
            box = ", ".join(f"{v:g}" for v in tile.box)
            console.print(f"tile {i} ({tile.kind} of image {tile.image}, box {box}):", markup=False)
        table = Table(show_header=False, box=None)
        for _ in range(tile.cols):
            table.add_column(justify="right")
        for row in values[image.tile_patches(i)].reshape(tile.rows, tile.cols):
            table.add_row(*(f"{100 * v:.2f}" for v in row))
        console.print(table)


@app.command("export-table")
@_one_line_errors
def export_table(
    out: Annotated[Path, typer.Option("--out", help="File to write (a new file).")],
    table_format: Annotated[
        str, typer.Option("--format", help="csv (for spreadsheets) or parquet (exact values).")
    ] = "csv",
    tokens: Annotated[
        bool, typer.Option("--tokens", help="One row per answer token instead of per trace.")
    ] = False,
    store: StoreDir = Path("traces"),
    db: DbUrl = None,
    model: Annotated[str | None, typer.Option(help="Exact model id.")] = None,
    text: Annotated[str | None, typer.Option(help="Substring of prompt or answer.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only traces with this tag.")] = None,
) -> None:
    """Write the traces the filters match as one table (the columns of ``store.frames``:
    what a notebook's query_frame / token_frame give), for a spreadsheet or pandas."""
    if table_format not in ("csv", "parquet"):
        _refuse(f"--format is csv or parquet, not {table_format!r}")
    if tag is not None:
        tag = check_name(tag, "tag")
    if not str(out).strip() or out.name in ("", ".", ".."):
        _refuse(f"--out {str(out)!r} names no file; give a new file's path")
    try:
        if out.exists() or out.is_symlink():
            _refuse(f"--out {out} exists; choose a new file")
        if not out.parent.is_dir():
            _refuse(f"--out {out}: folder {out.parent} does not exist")
        if (out.parent.resolve() / out.name).is_relative_to(store.resolve()):
            _refuse(f"--out {out} lies inside the store {store}; write it elsewhere")
    except OSError as error:  # a name too long, a folder that cannot be searched
        _refuse(f"--out {out}: {error.strerror}")
    from . import frames  # pandas: only for this command

    with _open(store, db) as st:
        frame = frames.query_frame(st, TraceQuery(model=model, text=text, tag=tag))
        if tokens:
            frame = frames.token_frame(st, frame["trace_id"])
    data = frames.csv_bytes(frame) if table_format == "csv" else frames.parquet_bytes(frame)
    # written beside --out, then linked: never a half-written table, never over a file that
    # appeared meanwhile
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.link(tmp, out)
    except FileExistsError:
        _refuse(f"--out {out} exists; choose a new file")
    except OSError as error:
        _refuse(f"cannot write --out {out}: {error.strerror}")
    finally:
        tmp.unlink(missing_ok=True)
    console.print(f"wrote {len(frame)} row(s) to {out}", markup=False)
