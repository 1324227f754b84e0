"""Applies the numbered migrations and loads the network registry into ClickHouse."""

from __future__ import annotations

import hashlib
import importlib
import logging
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from contracts.registry import NetworkRegistry, outcome_definition
from sinks.client import insert_json
from sinks.errors import MigrationError

__all__ = ["MIGRATIONS", "apply_migrations", "load_registry_tables"]

log = logging.getLogger(__name__)

#: In the order they apply; each is a module of ``sinks.migrations``.
MIGRATIONS: tuple[str, ...] = (
    "m0001_fact_tables",
    "m0002_rejected_and_registry",
    "m0003_views",
    "m0004_rejected_redacted",
    "m0005_stream_views",
    "m0006_analysts_tables",
    "m0007_rejected_failed_text",
    "m0008_randomized_comments",
    "m0009_rejected_unknown_names",
    "m0010_rejected_payload_comment",
)


def _statements(migration: str, database: str) -> list[str]:
    module = importlib.import_module(f"sinks.migrations.{migration}")
    statements: list[str] = module.statements(database)
    return statements


def apply_migrations(client: Client, database: str) -> list[str]:
    """Apply every migration not yet recorded in ``exnet_migrations``; return those applied.

    Idempotent: statements are ``IF NOT EXISTS`` / ``OR REPLACE``, and a
    migration is recorded only after all its statements succeeded.
    """
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"""CREATE TABLE IF NOT EXISTS {database}.exnet_migrations (
            id String, checksum String, applied_at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree(applied_at) ORDER BY id
        COMMENT 'migrations applied by exnet init'"""
    )
    recorded: dict[str, str] = {
        str(row[0]): str(row[1])
        for row in client.query(
            f"SELECT id, checksum FROM {database}.exnet_migrations FINAL"  # noqa: S608  # identifier
        ).result_rows
    }
    applied: list[str] = []
    for migration in MIGRATIONS:
        statements = _statements(migration, database)
        checksum = hashlib.sha256("\n".join(statements).encode()).hexdigest()[:16]
        if migration in recorded:
            if recorded[migration] != checksum:
                log.warning(
                    "migration %s changed since it was applied; released migrations must not "
                    "change (write a new one)",
                    migration,
                )
            continue
        for statement in statements:
            try:
                client.command(statement)
            except Exception as exc:
                raise MigrationError(f"migration {migration} failed: {exc}") from exc
        insert_json(
            client,
            f"{database}.exnet_migrations",
            ["id", "checksum", "applied_at"],
            [[migration, checksum, datetime.now(UTC)]],
        )
        log.info("applied migration %s", migration)
        applied.append(migration)
    return applied


def load_registry_tables(client: Client, database: str, registry: NetworkRegistry) -> None:
    """Write the registry's nodes and sites (the latest load wins per id)."""
    now = datetime.now(UTC)
    insert_json(
        client,
        f"{database}.nodes",
        ["node_id", "name", "loaded_at"],
        [[node.id, node.name, now] for node in registry.nodes],
    )
    insert_json(
        client,
        f"{database}.sites",
        ["site_id", "node_id", "name", "timezone", "loaded_at"],
        [
            [site.id, node_id, site.name, site.timezone or "", now]
            for node_id, site in registry.sites()
        ],
    )
    endpoint = registry.primary_endpoint
    study = (
        [
            endpoint.instrument,
            endpoint.week,
            endpoint.response_reduction_pct,
            endpoint.remission_max if endpoint.remission_max is not None else -1,
        ]
        if endpoint is not None
        else ["", 0, 50, -1]
    )
    insert_json(
        client,
        f"{database}.study",
        [
            "instrument",
            "week",
            "response_reduction_pct",
            "remission_max",
            "definition",
            "loaded_at",
        ],
        [[*study, outcome_definition(endpoint), now]],
    )
