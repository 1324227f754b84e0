"""`exnet init`, `exnet up`, `exnet sql`: the pipeline and its analytics database."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from exnet.settings import load_settings

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("init")(init)
    app.command("up")(up)
    # A query may open with a comment ("-- ..."): an argument, not an unknown option.
    app.command("sql", context_settings={"ignore_unknown_options": True})(sql)


def init() -> None:
    """Create the Kafka topics and the ClickHouse tables and views if missing (idempotent)."""
    from exnet.runner import initialize

    settings = load_settings()
    report = initialize(settings)
    console = Console()
    console.print(
        f"topics: {len(report.topics_created)} created"
        + (f" ({', '.join(report.topics_created)})" if report.topics_created else "")
    )
    if report.clickhouse_held:
        console.print(
            f"ClickHouse {settings.clickhouse_database!r}: not checked, the embedded database "
            f"{settings.clickhouse_dsn.removeprefix('chdb://')} is held by another process "
            "(a running `exnet up`: its writer migrates the database when it takes it)"
        )
        return
    console.print(
        f"ClickHouse {settings.clickhouse_database!r}: "
        + (
            f"applied {', '.join(report.migrations_applied)}"
            if report.migrations_applied
            else "up to date"
        )
    )


def up(
    drain: Annotated[
        bool,
        typer.Option(
            "--drain", help="Exit once every input topic is consumed to its end and written."
        ),
    ] = False,
    role: Annotated[
        str,
        typer.Option(
            help="auto: stream workers, plus the ClickHouse writer when this process can hold it "
            "(with embedded chDB one process writes; the others stand by); stream; sink.",
        ),
    ] = "auto",
) -> None:
    """Run the stream workers and the ClickHouse sink (runs `init` first).

    SIGTERM or Ctrl-C flushes what was consumed, commits, and exits 0.
    """
    from exnet.runner import Role, configure_logging, run_up

    settings = load_settings()
    try:
        chosen = Role(role)
    except ValueError:
        raise typer.BadParameter(f"--role must be one of {', '.join(Role)}") from None
    configure_logging(settings)
    raise typer.Exit(run_up(settings, chosen, drain))


def sql(
    query: Annotated[str, typer.Argument(help="SQL to run (read-only); '-' reads it from stdin.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="Any ClickHouse output format (default: PrettyCompact on a terminal, "
            "TabSeparatedWithNames otherwise).",
        ),
    ] = None,
) -> None:
    """Read-only SQL against the analytics database; works while `exnet up` runs."""
    from sinks.query import run_query

    settings = load_settings()
    text = sys.stdin.read() if query == "-" else query
    chosen = fmt or ("PrettyCompact" if sys.stdout.isatty() else "TabSeparatedWithNames")
    sys.stdout.buffer.write(run_query(settings, text, chosen))
    sys.stdout.buffer.flush()
