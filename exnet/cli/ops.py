"""`exnet status`, `exnet rejects`, `exnet report`, `exnet verify`: for operators, site
coordinators, analysts."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, RenderableType

from contracts.errors import UserError
from contracts.registry import load_registry
from exnet.ops import DEFAULT_MAX_REJECT_SHARE, DEFAULT_STALE_HOURS, JSON_KEYS_HELP
from exnet.settings import load_settings

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("status", help=_STATUS_HELP)(status)
    app.command("rejects")(rejects)
    app.command("report")(report)
    app.command("verify")(verify)


_STATUS_HELP = f"""Pipeline health on one screen: brokers and topics (replicas in sync),
consumer lag per stage and partition, each site's last events (stale ones flagged), rejects
by reason over the last day, and sink throughput.

Exits 1 when there is a problem (broker or ClickHouse unreachable, a broker of a cluster \
down or behind, topics missing, stale sites, a high share of rejected messages), 0 when \
healthy. Each part is shown even when another cannot be read.

\b
{JSON_KEYS_HELP}
"""


def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (keys below) instead.")
    ] = False,
    stale_hours: Annotated[
        float,
        typer.Option(
            "--stale-hours",
            envvar="EXNET_STALE_HOURS",
            min=0,
            help="A site that sent no event for longer is stale.",
        ),
    ] = DEFAULT_STALE_HOURS,
    max_reject_share: Annotated[
        float,
        typer.Option(
            "--max-reject-share",
            min=0,
            max=1,
            help="A larger share of rejected messages over the last day is a problem.",
        ),
    ] = DEFAULT_MAX_REJECT_SHARE,
) -> None:
    from exnet.ops.status import collect_status, render_status

    settings = load_settings()
    # kafka-python logs each refused connection and its own defaults at WARNING:
    # the status screen says what matters.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    report = collect_status(settings, stale_hours=stale_hours, max_reject_share=max_reject_share)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        _print_whole(render_status(report))
    raise typer.Exit(0 if report.healthy else 1)


def rejects(
    node: Annotated[
        list[str] | None,
        typer.Option(
            "--node",
            help="Only this node (repeatable): a registered one, or one rejected messages name.",
        ),
    ] = None,
    site: Annotated[
        list[str] | None,
        typer.Option(
            "--site",
            help="Only this site (repeatable): a registered one, or one rejected messages name "
            "(an unknown_site rejection's).",
        ),
    ] = None,
    reason: Annotated[
        list[str] | None,
        typer.Option("--reason", help="Only this reason code, e.g. invalid_field (repeatable)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Rejected at or after: ISO date/time (UTC unless an offset is given) "
            "or a span back from now: 30m, 24h, 7d, 2w."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Rejected before (same forms as --since).")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="At most this many messages, newest first "
            "(default: 100 on the terminal, all with --csv or --json).",
        ),
    ] = None,
    as_csv: Annotated[
        bool,
        typer.Option(
            "--csv",
            help="Write a per-site work list as CSV: one row per failing field, with the "
            "source position and the payload as analysts read it (redacted; with --original, "
            "as the site sent it).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Write one JSON document.")] = False,
    original: Annotated[
        bool,
        typer.Option(
            "--original",
            help="Show each message's original bytes, read from the dead-letter topic with "
            "this process's Kafka login (analysts' tables keep them redacted). Needs --site: "
            "a coordinator sees their own site's originals only.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the CSV or JSON to this file instead of stdout."),
    ] = None,
) -> None:
    """Rejected messages and what to fix in them: reason, failing field paths, source.

    A corrected record is published again with its event_id (a rejection before
    the duplicate check takes none away), then validated and accepted like any new
    event; only a conflicting_duplicate's correction takes a new event_id.
    """
    from exnet.ops.rejects import (
        DEFAULT_TERMINAL_LIMIT,
        RejectFilter,
        find_rejects,
        names_in_rejects,
        parse_moment,
        rejects_as_dict,
        render_rejects,
        with_originals,
        write_worklist,
    )

    if as_csv and as_json:
        raise typer.BadParameter("choose one of --csv and --json")
    if out is not None and not (as_csv or as_json):
        raise typer.BadParameter("--out needs --csv or --json")
    if out is not None:
        _check_writable(out)
    settings = load_settings()
    query = RejectFilter(
        nodes=tuple(node or ()),
        sites=tuple(site or ()),
        reasons=tuple(reason or ()),
        since=parse_moment(since) if since else None,
        until=parse_moment(until) if until else None,
        limit=limit if limit is not None or as_csv or as_json else DEFAULT_TERMINAL_LIMIT,
    )
    registry = load_registry(settings.registry_path)
    unregistered = query.unregistered(registry)
    carried = names_in_rejects(settings, unregistered) if any(unregistered.values()) else {}
    query.check_names(registry, str(settings.registry_path), carried)
    if original and not site:
        raise typer.BadParameter("--original needs --site: one site's originals at a time")
    result = find_rejects(settings, query)
    if original:
        result = with_originals(settings, result)
    if not (as_csv or as_json):
        _print_whole(render_rejects(result))
        return
    try:
        target = out.open("w", encoding="utf-8", newline="") if out is not None else sys.stdout
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        if as_csv:
            rows = write_worklist(result.messages, target)
            summary = f"{rows} row(s) for {len(result.messages)} rejected message(s)"
        else:
            json.dump(rejects_as_dict(result), target, indent=2)
            target.write("\n")
            summary = f"{len(result.messages)} rejected message(s)"
    finally:
        if out is not None:
            target.close()
        else:
            target.flush()
    if out is not None:
        Console(stderr=True, highlight=False).print(f"wrote {summary} to {out}")


def report(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="The HTML file to write (default: <var_dir>/report.html)."),
    ] = None,
) -> None:
    """A self-contained HTML report for analysts and steering committees (renders offline)."""
    from exnet.ops.report import write_report

    if out is not None and out.is_dir():
        raise UserError(f"cannot write {out}: it is a directory; give a file name")
    settings = load_settings()
    written = write_report(settings, out if out is not None else settings.var_dir / "report.html")
    Console(highlight=False).print(f"report written to {written}")


def _check_writable(out: Path) -> None:
    """Refuse ``out`` before any work when it cannot be a file: a directory, or in a
    directory that does not exist."""
    if out.is_dir():
        raise UserError(f"cannot write {out}: it is a directory; give a file name")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: no directory {out.parent}")


def verify(
    wait: Annotated[
        float,
        typer.Option(
            help="Seconds to wait first for the pipeline to catch up with what it held "
            "when asked, stage by stage (read from Kafka). The stream-written views "
            "trail the facts while events flow; 0 compares at once.",
            min=0,
        ),
    ] = 60.0,
) -> None:
    """Recompute the views from the fact tables and compare them with the stream-written
    ones; print every differing row, then a final line.

    One line per difference: the view, the row's key as col=value pairs, then the
    column with the stream's and the reference's value, or "missing in the stream
    table" / "missing in the reference". Every column is compared but updated_at,
    version and is_deleted; exercise_minutes within a relative 1e-9 (absolute 1e-6);
    an arm_summary or node_daily row the stream deleted (nothing left to count) may
    be absent where the reference counts zeros. Works while
    `exnet up` runs: it first waits (--wait) for the pipeline to catch up, and says
    when it had not (differences may then go). Exits 1 on any difference, 0
    otherwise; before the stream's first start its tables are empty, and one line
    says so instead (exit 1).
    """
    from functools import partial

    from exnet.monitor import wait_until_caught_up
    from exnet.ops._sql import query_rows
    from sinks.verify import verify as compare_views

    settings = load_settings()
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    behind = wait_until_caught_up(
        settings,
        wait,
        lambda messages: err.print(
            f"the pipeline is {messages} message(s) behind: waiting up to {wait:g} s "
            "for it to catch up (--wait)"
        ),
    )
    result = compare_views(partial(query_rows, settings), settings.clickhouse_database)
    sys.stdout.write("".join(f"{line}\n" for line in result.lines()))
    sys.stdout.flush()
    if not result.equal and behind is not None:
        err.print(
            f"the pipeline was not caught up when compared ({behind}): the stream-written "
            "views trail the facts while events flow, so these differences may go: run "
            "`exnet verify` again once `exnet status` shows no lag"
        )
    raise typer.Exit(0 if result.equal else 1)


def _print_whole(screen: RenderableType) -> None:
    """Print ``screen`` to stdout: at the terminal's width on a terminal; else (a pipe, a
    file, cron's mail) as wide as its widest line, so that no figure is cut to ``…``
    at rich's default 80 columns."""
    console = Console(highlight=False)
    if not console.is_terminal:
        widest = Console(width=10_000).measure(screen).maximum
        console = Console(highlight=False, width=max(80, widest))
    console.print(screen)
