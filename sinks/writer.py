"""The ClickHouse side of the sink, behind a small protocol (cf. Snuba's ``BatchWriter``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from sinks.client import INSERT_SETTINGS, JSON_SETTINGS, insert_json
from sinks.errors import ClickHouseUnavailable

__all__ = ["JSON_SETTINGS", "BatchWriter", "ClickHouseWriter"]

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
    """:class:`BatchWriter` over clickhouse-connect: every batch as ``JSONEachRow``."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._database = database
        self._columns: dict[str, tuple[str, ...]] = {}

    def setup(self, tables: dict[str, Sequence[str]]) -> None:
        """Declare the tables :meth:`write` takes rows for, and their columns."""
        for table, columns in tables.items():
            self._columns[table] = tuple(columns)

    def write(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str
    ) -> None:
        if self._columns.get(table) != tuple(columns):
            raise ValueError(f"{table}: columns {columns} are not those set up")
        try:
            insert_json(
                self._client,
                f"{self._database}.{table}",
                columns,
                rows,
                {"insert_deduplication_token": token},
            )
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
