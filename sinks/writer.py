"""The ClickHouse side of the sink, behind a small protocol (cf. Snuba's ``BatchWriter``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext

from sinks.client import INSERT_SETTINGS
from sinks.errors import ClickHouseUnavailable

__all__ = ["BatchWriter", "ClickHouseWriter"]

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
