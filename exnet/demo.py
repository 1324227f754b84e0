"""``make demo``: the whole story on the embedded defaults.

broker (started by make) -> ``exnet init`` -> a simulated network published
to Kafka -> ``exnet up --drain`` -> the network and node summaries, checked
against what the simulation says they must be -> the HTML report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from contracts.errors import UserError
from contracts.views import ARM_COLUMNS, SUMMARY_COLUMNS
from exnet.settings import Settings, load_settings
from producers import simulate
from sinks.query import run_query

#: A network of this size gives ~45k events and drains in about a minute here.
DEMO_PARTICIPANTS = 600
DEMO_SEED = 2026

console = Console(width=None if sys.stdout.isatty() else 120)


def _exnet(*args: str) -> None:
    command = [str(Path(sys.executable).with_name("exnet")), *args]
    console.print(f"[dim]$ exnet {' '.join(args)}[/]")
    done = subprocess.run(command, check=False)  # noqa: S603  # our own console script
    if done.returncode != 0:
        raise UserError(f"`exnet {' '.join(args)}` failed with exit status {done.returncode}")


def _rows(settings: Settings, sql: str) -> list[dict[str, Any]]:
    raw = run_query(settings, sql, "JSONEachRow")
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def _cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,.0f}"


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        text = column in ("node_id", "node_name", "scope", "modality", "adjunct", "reason")
        table.add_column(column, justify="left" if text else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    return table


def _transposed(title: str, rows: list[dict[str, Any]], key: str, columns: list[str]) -> Table:
    """One column per row (e.g. per node), one line per figure: fits a terminal."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for row in rows:
        table.add_column(str(row[key]), justify="right", no_wrap=True)
    for column in columns:
        table.add_row(column, *(_cell(row[column]) for row in rows))
    return table


def main() -> None:
    settings = load_settings()
    console.rule("[bold]exnet demo")
    _exnet("init")
    console.print(
        f"simulating {DEMO_PARTICIPANTS} participants (seed {DEMO_SEED}), with 1% "
        "invalid messages, 2% exact and 0.2% conflicting duplicates"
    )
    result = simulate(
        settings,
        seed=DEMO_SEED,
        participants=DEMO_PARTICIPANTS,
        invalid_share=0.01,
        duplicate_share=0.02,
        conflict_share=0.002,
    )
    console.print(
        f"published {result.messages:,} messages: {result.accepted:,} events, "
        f"{result.duplicate_total:,} duplicates, {result.rejected_total:,} invalid"
    )
    _exnet("up", "--drain")

    summary = list(SUMMARY_COLUMNS)
    (network,) = _rows(settings, "SELECT *, 'network' AS scope FROM network_summary FINAL")
    nodes = _rows(settings, "SELECT * FROM node_summary FINAL ORDER BY node_id")
    columns = [*({**node, "scope": node["node_id"]} for node in nodes), network]
    console.print(_transposed("node_summary and network_summary", columns, "scope", summary))
    arms = _rows(
        settings,
        "SELECT * FROM arm_summary FINAL WHERE scope = 'network' ORDER BY modality, adjunct",
    )
    console.print(
        _table(
            "arm_summary (network)",
            arms,
            ["modality", "adjunct", *ARM_COLUMNS],
        )
    )
    rejects = _rows(
        settings,
        "SELECT reason, count() AS messages FROM rejected_events FINAL "
        "GROUP BY reason ORDER BY reason",
    )
    console.print(_table("rejected_events", rejects, ["reason", "messages"]))

    expected = result.views.network_summary
    mismatches = [
        name
        for name in summary
        if abs(float(network[name]) - float(expected[name]))
        > 1e-6 * max(1.0, abs(float(expected[name])))
    ]
    if mismatches:
        raise UserError(f"network_summary differs from the simulation in {mismatches}")
    console.print("[green]network_summary matches what the simulation published.[/]")
    # The stream-written views against the same figures recomputed from the facts.
    _exnet("verify")

    report = settings.var_dir / "report.html"
    _exnet("report", "--out", str(report))
    console.rule("where to look next")
    console.print(
        f"report:   open {report.resolve()}\n"  # noqa: S608  # text for people, not SQL
        "status:   .venv/bin/exnet status   (the demo's drain has ended: it reports "
        "no_workers until `.venv/bin/exnet up` runs)\n"
        "rejects:  .venv/bin/exnet rejects --site N01-S01\n"
        'SQL:      .venv/bin/exnet sql "SELECT * FROM node_summary FINAL" --format PrettyCompact\n'
        "verify:   .venv/bin/exnet verify   (stream-written views against the facts)\n"
        "docs:     docs/analytics.md (tables, views, example queries), "
        "docs/architecture.md"
    )


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        sys.exit(2)
