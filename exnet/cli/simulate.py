"""`exnet simulate`: a seeded, realistic network publishing events (demo and benchmark source)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from contracts import Reason
from contracts.errors import UserError
from exnet.settings import load_settings
from producers import (
    DEFAULT_INVALID_KINDS,
    DEFAULT_PARTICIPANTS,
    DEFAULT_SEED,
    INVALID_KINDS,
    SimulationResult,
    simulate,
)

__all__ = ["register"]

_HELP = f"""Simulate a network's sites and publish their events to Kafka (or write them).

Deterministic: the same --seed and options give the same messages, byte for
byte. Participants flow screened -> consented -> randomized -> withdrawn or
completed, with exercise sessions, depression ratings and biomarker assays, at
the sites of the network registry (EXNET_REGISTRY, else the demo one).
About 64 events a participant: --participants 1500 makes ~100k events.

Published messages bypass the publisher's validation on purpose: the invalid
ones (--invalid-share) must reach Kafka for the stream workers to reject. With
--out FILE the values are written as JSON Lines instead (no keys, hence no
key_mismatch cases). An invalid kind is the reason code its messages must be
rejected with. Default invalid kinds: {", ".join(DEFAULT_INVALID_KINDS)};
opt-in: {", ".join(kind for kind in INVALID_KINDS if kind not in DEFAULT_INVALID_KINDS)}.
"""


def _parse_kinds(text: str | None) -> tuple[Reason, ...] | None:
    """``--invalid-kinds``: comma-separated reason codes the simulator can provoke."""
    if text is None:
        return None
    by_name = {kind.value: kind for kind in INVALID_KINDS}
    kinds = []
    for part in text.split(","):
        name = part.strip()
        if not name:
            continue
        if name not in by_name:
            allowed = ", ".join(by_name)
            raise UserError(f"--invalid-kinds: {name!r} is not one of: {allowed}")
        kinds.append(by_name[name])
    return tuple(kinds)


def _summary_table(result: SimulationResult) -> Table:
    table = Table(
        title=f"simulated network (seed {result.seed}, {result.participants} participants)"
    )
    table.add_column("topic")
    table.add_column("messages", justify="right")
    table.add_column("new events", justify="right")
    table.add_column("duplicates", justify="right")
    for topic, count in result.per_topic.items():
        event_type = topic.rsplit(".", 1)[-1]
        table.add_row(
            topic,
            str(count),
            str(result.events.get(event_type, 0)),
            str(result.duplicates.get(event_type, 0)),
        )
    table.add_row(
        "total",
        str(result.messages),
        str(result.accepted),
        str(result.duplicate_total),
        style="bold",
    )
    return table


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to ``app``."""

    @app.command("simulate", help=_HELP)
    def simulate_command(
        seed: Annotated[int, typer.Option(help="Random seed.")] = DEFAULT_SEED,
        participants: Annotated[
            int, typer.Option(min=0, help="Participants screened across the network.")
        ] = DEFAULT_PARTICIPANTS,
        out: Annotated[
            Path | None,
            typer.Option(help="Write JSON Lines to this file instead of publishing."),
        ] = None,
        invalid_share: Annotated[
            float,
            typer.Option(
                min=0.0,
                max=1.0,
                help="Invalid messages added, as a share of the valid events (0.5: one for "
                "every two events, a third of all messages).",
            ),
        ] = 0.0,
        invalid_kinds: Annotated[
            str | None,
            typer.Option(help="Comma-separated kinds of invalid messages (default: see above)."),
        ] = None,
        duplicate_share: Annotated[
            float,
            typer.Option(
                min=0.0, max=1.0, help="Exact re-sends (same or reformatted bytes), as a share."
            ),
        ] = 0.0,
        conflict_share: Annotated[
            float,
            typer.Option(
                min=0.0, max=1.0, help="Re-sends with the same event_id but other content."
            ),
        ] = 0.0,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the expected outcome as JSON.")
        ] = False,
    ) -> None:
        settings = load_settings()
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        kinds = _parse_kinds(invalid_kinds)
        errors = Console(stderr=True)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=errors,
            transient=True,
            disable=not errors.is_terminal,
        ) as progress:
            task = progress.add_task("writing" if out else "publishing", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            result = simulate(
                settings,
                seed=seed,
                participants=participants,
                invalid_share=invalid_share,
                duplicate_share=duplicate_share,
                conflict_share=conflict_share,
                invalid_kinds=kinds,
                out=out,
                progress=report,
            )
        console = Console(soft_wrap=True, highlight=False)
        if as_json:
            console.print(orjson.dumps(result.as_dict()).decode(), markup=False)
            return
        console.print(_summary_table(result))
        if result.rejected:
            rejected = ", ".join(f"{reason} {count}" for reason, count in result.rejected.items())
            console.print(f"expected rejections: {rejected}", markup=False)
        where = f"written to {out}" if out else f"published to {result.destination}"
        console.print(f"{result.messages} messages {where}", markup=False)
