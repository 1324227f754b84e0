"""The sinks: ClickHouse client, numbered migrations, rows, batch writer, sink consumer.

The sink consumer reads ``exnet.accepted``, ``exnet.deadletter`` and
``exnet.views`` and writes the analytics tables idempotently; :func:`run_query`
answers analysts' SQL.
"""

from sinks.client import INSERT_SETTINGS, Client, connect
from sinks.consumer import SINK_TABLES, SinkConsumer, SinkStopped, sink_group
from sinks.errors import ClickHouseUnavailable, DatabaseLocked, MigrationError
from sinks.migrate import MIGRATIONS, apply_migrations, load_registry_tables
from sinks.query import QueryEndpoint, endpoint_file, run_query
from sinks.rows import FACT_COLUMNS, FACT_TABLES, REJECTED_COLUMNS, REJECTED_TABLE, VIEW_COLUMNS
from sinks.writer import BatchWriter, ClickHouseWriter

__all__ = [
    "FACT_COLUMNS",
    "FACT_TABLES",
    "INSERT_SETTINGS",
    "MIGRATIONS",
    "REJECTED_COLUMNS",
    "REJECTED_TABLE",
    "SINK_TABLES",
    "VIEW_COLUMNS",
    "BatchWriter",
    "ClickHouseUnavailable",
    "ClickHouseWriter",
    "Client",
    "DatabaseLocked",
    "MigrationError",
    "QueryEndpoint",
    "SinkConsumer",
    "SinkStopped",
    "apply_migrations",
    "connect",
    "endpoint_file",
    "load_registry_tables",
    "run_query",
    "sink_group",
]
