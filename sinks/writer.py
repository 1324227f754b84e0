"""The ClickHouse side of the sink, behind a small protocol (cf. Snuba's ``BatchWriter``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext

from sinks.client import INSERT_SETTINGS
from sinks.errors import ClickHouseUnavailable

__all__ = ["JSON_SETTINGS", "BatchWriter", "ClickHouseWriter"]

#: JSON rows: ISO-8601 times as the contracts write them; no key that is not a column
#: (a key the table lacks is a bug, not something to drop quietly); floats parsed to
#: the nearest double, as the site wrote them (the fast parser may differ in the last
#: bit).
JSON_SETTINGS: dict[str, Any] = {
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": 0,
    "precise_float_parsing": 1,
}

log = logging.getLogger(__name__)


class BatchWriter(Protocol):
    """Writes one batch of rows to one table, idempotently.

    ``token`` identifies the batch: writing the same rows again with the same
    token is a no-op. Returns only once the rows are durable; raises
    :class:`~sinks.errors.ClickHouseUnavailable` otherwise.
    """

    def write(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str
    ) -> None: ...

    def write_json(
        self, table: str, rows: Sequence[bytes], token: str, *, ingested_at: bool = True
    ) -> None:
        """``rows``: one JSON object each, keyed by column. With ``ingested_at``
        (the fact tables), every column but ``ingested_at``, which the writer sets
        to the time of the write; without (the view tables), every column."""


class ClickHouseWriter:
    """:class:`BatchWriter` over clickhouse-connect, one reused insert context per table."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._database = database
        self._contexts: dict[str, InsertContext] = {}

    def setup(self, tables: dict[str, Sequence[str]]) -> None:
        """Prepare an insert context per table (reads the column types once)."""
        for table, columns in tables.items():
            self._contexts[table] = self._client.create_insert_context(
                table=table,
                database=self._database,
                column_names=list(columns),
                settings=dict(INSERT_SETTINGS),
            )

    def write(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str
    ) -> None:
        context = self._contexts[table]
        if tuple(context.column_names) != tuple(columns):
            raise ValueError(f"{table}: columns {columns} do not match the insert context")
        context.data = rows
        context.settings["insert_deduplication_token"] = token
        try:
            self._client.insert(context=context)
        except Exception as exc:  # clickhouse-connect raises several kinds; all are retried
            raise ClickHouseUnavailable(f"insert into {table} failed: {exc}") from exc

    def write_json(
        self, table: str, rows: Sequence[bytes], token: str, *, ingested_at: bool = True
    ) -> None:
        # The rows go to ClickHouse as they came from Kafka (JSONEachRow), parsed in
        # C++ with the GIL released: no Python object per value.
        if ingested_at:
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").encode()
            prefix = b'{"ingested_at":"' + stamp + b'",'
            block = b"\n".join([prefix + row[1:] for row in rows])
        else:
            block = b"\n".join(rows)
        settings = {**INSERT_SETTINGS, **JSON_SETTINGS, "insert_deduplication_token": token}
        try:
            self._client.raw_insert(
                f"{self._database}.{table}",
                insert_block=block,
                settings=settings,
                fmt="JSONEachRow",
            )
        except Exception as exc:  # clickhouse-connect raises several kinds; all are retried
            raise ClickHouseUnavailable(f"insert into {table} failed: {exc}") from exc
