"""The ``lvlm-interpret`` command: record traces, maintain the store, serve the dashboard.

Sub-command modules import torch and transformers lazily, so ``--help``, ``ls`` and ``serve``
start fast and the dashboard process never loads a model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer._click import exceptions as click_errors  # typer vendors Click

from engine.cli import analyse, dataset, demo, families, record
from engine.cli.messages import fail, note
from engine.cli.report import report as report_command
from engine.cli.sanity import sanity_check as sanity_check_command
from engine.cli.worker import worker as worker_command
from store.cli import app as store_app
from store.cli import ls as store_ls

app = typer.Typer(
    name="lvlm-interpret",
    help="Record, store and explore interpretability traces of vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("record")(record.record)
app.command("record-dataset")(dataset.record_dataset)
app.command("families")(families.families)
app.command("report")(report_command)
app.command("worker")(worker_command)
app.command("analyse")(analyse.analyse)
app.command("sanity-check")(sanity_check_command)
app.add_typer(demo.app, name="demo")
app.add_typer(store_app, name="store")
app.command("ls", help="List stored traces (same as `store ls`).")(store_ls)


@app.command()
def serve(
    store: Annotated[Path, typer.Option("--store", help="Store directory.")] = Path("traces"),
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL of the index.")] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback by default; 0.0.0.0: all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (1-65535).")] = 8501,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Also answer requests addressed to this host name (repeatable; '*.lan' "
            "matches subdomains). Others are refused, against DNS rebinding."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Also start a worker with this model, for live questions (Ask page)."),
    ] = None,
    device: Annotated[str, typer.Option(help="The worker's device (with --model).")] = "cpu",
) -> None:
    """Start the dashboard on a store (the dashboard loads no model; --model starts a worker
    process beside it that does)."""
    from dashboard.serve import ServeError
    from dashboard.serve import serve as run_dashboard
    from engine.errors import EngineError

    try:
        if model is not None:  # a bad model is one line now, not a worker dying later
            from engine.checkpoint import check_model_source

            check_model_source(model)
        code = run_dashboard(
            store,
            db,
            host=host,
            port=port,
            allow_hosts=allow_host or (),
            model=model,
            device=device,
        )
    except (ServeError, EngineError) as error:
        fail(error)
    raise typer.Exit(code)


def main() -> None:
    """The console script. Usage mistakes end like every other error: one line, exit code 2
    (Click's own report is a framed block of several lines)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="lvlm-interpret", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as error:
        typer.echo(error.format_message())
        code = error.exit_code
    except click_errors.ClickException as error:
        context = getattr(error, "ctx", None)
        hint = f" See '{context.command_path} --help'." if context else ""
        note(f"error: {error.format_message()}{hint}")
        code = error.exit_code
    except typer.Abort:  # a declined confirmation, Ctrl-C or end of input at a prompt
        note("aborted")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
