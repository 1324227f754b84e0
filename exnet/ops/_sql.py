"""Read-only queries of the operators' and analysts' tools, through :func:`run_query`.

Every read goes through :func:`sinks.query.run_query`, so the tools work
while ``exnet up`` holds the embedded database. Queries run on a session
pinned ``readonly=1``, which forbids per-query ``SETTINGS``: values are
therefore inlined as literals built here, never from unquoted input.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from contracts.errors import UserError
from exnet.settings import Settings
from sinks.query import run_query

__all__ = [
    "from_millis",
    "query_rows",
    "quote",
    "quote_list",
    "time_literal",
    "to_float",
    "to_int",
]


#: ClickHouse error names that mean ``exnet init`` has not run against this database.
_NOT_INITIALISED = ("UNKNOWN_DATABASE", "UNKNOWN_TABLE")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def quote(value: str) -> str:
    """``value`` as a ClickHouse string literal (backslashes and quotes escaped)."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def quote_list(values: Iterable[str]) -> str:
    """``('a', 'b')`` for an ``IN`` clause."""
    return "(" + ", ".join(quote(v) for v in values) + ")"


def time_literal(moment: datetime) -> str:
    """A ``DateTime64(3, 'UTC')`` literal of an aware ``moment``."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a UTC offset")
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"toDateTime64('{text}', 3, 'UTC')"


def query_rows(settings: Settings, sql: str) -> list[dict[str, Any]]:
    """Rows of ``sql`` as dicts (``JSONEachRow``).

    ClickHouse quotes 64-bit integers in JSON: read numbers with
    :func:`to_int` / :func:`to_float`.
    """
    try:
        body = run_query(settings, sql, "JSONEachRow")
    except UserError as exc:
        if any(code in str(exc) for code in _NOT_INITIALISED):
            raise UserError(
                f"the analytics database {settings.clickhouse_database!r} lacks exnet's tables: "
                f"run `exnet init` (or `exnet up`) first ({_first_line(str(exc))})"
            ) from None
        raise
    return [orjson.loads(line) for line in body.splitlines() if line.strip()]


def to_int(value: Any) -> int:
    return int(value) if value is not None else 0


def to_float(value: Any) -> float:
    return float(value) if value is not None else 0.0


def from_millis(value: Any) -> datetime | None:
    """A UTC datetime from unix milliseconds; None for null or the epoch (ClickHouse's 'empty')."""
    if value is None:
        return None
    millis = int(value)
    if millis <= 0:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC)
