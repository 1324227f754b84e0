"""Migration m0005 against real chDB: the views become stream-written tables, their SQL
lives on as ``*_reference``; applied fresh, over an older database with facts, twice."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.registry import DEMO_REGISTRY, load_registry
from contracts.views import VIEW_KEYS
from exnet.settings import Settings
from sinks import migrate
from sinks.client import connect
from sinks.errors import MigrationError
from sinks.migrate import MIGRATIONS, apply_migrations, load_registry_tables
from sinks.migrations import m0005_stream_views
from sinks.rows import FACT_COLUMNS
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.clickhouse

VIEWS = tuple(VIEW_KEYS)
M0005 = "m0005_stream_views"


@pytest.fixture
def settings(settings_factory: SettingsFactory) -> Settings:
    return settings_factory()


@pytest.fixture
def bare(settings: Settings) -> Iterator[Any]:
    """A client of an empty database (nothing migrated)."""
    client = connect(settings, create_database=True)
    yield client
    client.close()


def _engines(client: Any) -> dict[str, str]:
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
    ).result_rows
    return {str(name): str(engine) for name, engine in rows}


def _types(client: Any, table: str) -> dict[str, str]:
    rows = client.query(f"DESCRIBE TABLE {table}").result_rows
    return {str(row[0]): re.sub(r"^LowCardinality\((.*)\)$", r"\1", str(row[1])) for row in rows}


def _migrate_up_to_m0004(client: Any, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database as the previous release left it: m0001-m0004, the views of m0003."""
    with monkeypatch.context() as patch:
        patch.setattr(migrate, "MIGRATIONS", MIGRATIONS[: MIGRATIONS.index(M0005)])
        apply_migrations(client, database)


def _insert_facts(client: Any, database: str) -> None:
    """Two participants of N01: screened and randomized; two sessions, one attended."""
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    base = {
        "schema": "",
        "occurred_at": at,
        "node_id": "N01",
        "site_id": "N01-S01",
        "source_topic": "t",
        "source_partition": 0,
        "ingested_at": at,
    }
    enrollment = [
        {
            **base,
            "event_id": f"e{n}",
            "schema": "enrollment/1",
            "participant_id": f"P-000000000{n // 2}",
            "source_offset": n,
            "status": status,
            "modality": "aerobic" if status == "randomized" else None,
            "adjunct": "none",
            "age_band": None,
            "sex": None,
            "reason": None,
        }
        for n, status in enumerate(("screened", "randomized", "screened", "randomized"))
    ]
    sessions = [
        {
            **base,
            "event_id": f"s{n}",
            "schema": "session/1",
            "participant_id": "P-0000000000",
            "source_offset": 10 + n,
            "session_number": n + 1,
            "status": status,
            "modality": "aerobic",
            "supervised": True,
            "duration_min": minutes,
            "mean_hr_pct_max": None,
            "rpe": None,
            "adverse_event": None,
        }
        for n, (status, minutes) in enumerate((("attended", 42.5), ("missed", None)))
    ]
    for event_type, rows in (("enrollment", enrollment), ("session", sessions)):
        # The columns of the previous release's tables (m0006 added the local time).
        columns = [c for c in FACT_COLUMNS[event_type] if c not in ("utc_offset_min", "local_date")]
        client.insert(
            f"{database}.{event_type}_events",
            [[row[c] for c in columns] for row in rows],
            column_names=list(columns),
            settings={"async_insert": 0},
        )


def _reference_rows(client: Any, relation: str) -> list[tuple[Any, ...]]:
    return list(client.query(f"SELECT * FROM {relation} ORDER BY ALL").result_rows)


def test_fresh_database_gets_tables_and_reference_views(bare: Any, settings: Settings) -> None:
    database = settings.clickhouse_database
    assert M0005 in apply_migrations(bare, database)
    engines = _engines(bare)
    for view in VIEWS:
        assert engines[view] == "ReplacingMergeTree", view
        assert engines[f"{view}_reference"] == "View", view
        assert bare.query(f"SELECT count() FROM {view}").result_rows == [(0,)]
        # Same columns, in the same order, with the reference's types; then the bookkeeping.
        table, reference = _types(bare, view), _types(bare, f"{view}_reference")
        assert list(table.items())[: len(reference)] == list(reference.items()), view
        assert list(table.items())[len(reference) :] == [
            ("version", "UInt64"),
            ("is_deleted", "UInt8"),
        ]
    # The building blocks of m0003 stay views.
    assert engines["node_facts"] == engines["participant_arms"] == "View"


def test_every_column_and_table_says_what_it_holds(bare: Any, settings: Settings) -> None:
    apply_migrations(bare, settings.clickhouse_database)
    for view in VIEWS:
        comments = bare.query(
            "SELECT name, comment FROM system.columns "
            "WHERE database = currentDatabase() AND table = {t:String}",
            parameters={"t": view},
        ).result_rows
        assert all(comment for _, comment in comments), (view, comments)
        [(table_comment, sorting_key, engine_full)] = bare.query(
            "SELECT comment, sorting_key, engine_full FROM system.tables "
            "WHERE database = currentDatabase() AND name = {t:String}",
            parameters={"t": view},
        ).result_rows
        assert "FINAL" in table_comment, view
        assert sorting_key == ", ".join(VIEW_KEYS[view]), view  # network_summary: ""
        assert engine_full.startswith("ReplacingMergeTree(version, is_deleted)"), view


def test_an_older_database_with_facts_keeps_its_figures_as_the_reference(
    bare: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = settings.clickhouse_database
    _migrate_up_to_m0004(bare, database, monkeypatch)
    # The registry as the previous release loaded it (its sites had no time zone column).
    registry = load_registry(DEMO_REGISTRY)
    loaded = datetime(2026, 3, 1, tzinfo=UTC)
    bare.insert(
        f"{database}.nodes",
        [[node.id, node.name, loaded] for node in registry.nodes],
        column_names=["node_id", "name", "loaded_at"],
    )
    bare.insert(
        f"{database}.sites",
        [[site.id, node_id, site.name, loaded] for node_id, site in registry.sites()],
        column_names=["site_id", "node_id", "name", "loaded_at"],
    )
    _insert_facts(bare, database)
    before = {view: _reference_rows(bare, view) for view in VIEWS}
    assert before["node_daily"] and before["arm_summary"]  # the facts show in every view

    assert apply_migrations(bare, database) == list(MIGRATIONS[MIGRATIONS.index(M0005) :])
    load_registry_tables(bare, database, registry)

    for view in VIEWS:
        assert _reference_rows(bare, f"{view}_reference") == before[view], view
        assert bare.query(f"SELECT count() FROM {view} FINAL").result_rows == [(0,)]


def test_interrupted_then_applied_again(
    bare: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = settings.clickhouse_database
    _migrate_up_to_m0004(bare, database, monkeypatch)
    statements = m0005_stream_views.statements(database)
    # Killed half-way: node_summary is a table, network_summary's view is dropped, and
    # nothing is recorded.
    for statement in statements[:5]:
        bare.command(statement)
    assert apply_migrations(bare, database) == list(MIGRATIONS[MIGRATIONS.index(M0005) :])
    # And every statement once more, as a second interrupted run would: no error.
    for statement in statements:
        bare.command(statement)
    engines = _engines(bare)
    assert all(engines[view] == "ReplacingMergeTree" for view in VIEWS)
    assert apply_migrations(bare, database) == []


def test_applied_again_over_a_written_table_it_fails_loudly_and_keeps_the_rows(
    bare: Any, settings: Settings
) -> None:
    """Only a concurrent `exnet init` (or a lost record) could apply m0005 again after a
    sink wrote: it must fail, never drop the rows."""
    database = settings.clickhouse_database
    apply_migrations(bare, database)
    bare.command(
        "INSERT INTO node_summary (node_id, node_name, screened, updated_at, version, "
        "is_deleted) VALUES ('N01', 'x', 3, now64(3), 1, 0)"
    )
    bare.command(
        f"ALTER TABLE exnet_migrations DELETE WHERE id = '{M0005}' SETTINGS mutations_sync = 2"
    )
    with pytest.raises(MigrationError, match=M0005):
        apply_migrations(bare, database)
    assert bare.query("SELECT screened FROM node_summary FINAL").result_rows == [(3,)]


# --- what the tables keep under FINAL ---------------------------------------------


@pytest.fixture
def client(bare: Any, settings: Settings) -> Any:
    apply_migrations(bare, settings.clickhouse_database)
    return bare


def test_final_keeps_the_highest_version_per_key(client: Any) -> None:
    for version, screened in ((1, 10), (3, 30), (2, 20)):  # arrival order is not version order
        client.command(
            "INSERT INTO node_summary (node_id, node_name, screened, updated_at, version, "
            f"is_deleted) VALUES ('N01', 'North', {screened}, now64(3), {version}, 0)"
        )
    client.command(
        "INSERT INTO node_summary (node_id, node_name, screened, updated_at, version, "
        "is_deleted) VALUES ('N02', 'South', 5, now64(3), 1, 0)"
    )
    rows = client.query(
        "SELECT node_id, screened, version FROM node_summary FINAL ORDER BY node_id"
    )
    assert rows.result_rows == [("N01", 30, 3), ("N02", 5, 1)]


def test_network_summary_keeps_one_row(client: Any) -> None:
    for version in (4, 9, 6):
        client.command(
            "INSERT INTO network_summary (screened, exercise_minutes, updated_at, version, "
            f"is_deleted) VALUES ({version}, {version}.5, now64(3), {version}, 0)"
        )
    rows = client.query("SELECT screened, exercise_minutes FROM network_summary FINAL")
    assert rows.result_rows == [(9, 9.5)]


def test_final_hides_a_deleted_row(client: Any) -> None:
    insert = (
        "INSERT INTO arm_summary (scope, node_id, modality, adjunct, randomized, updated_at, "
        "version, is_deleted) VALUES "
    )
    client.command(insert + "('node', 'N01', 'aerobic', 'none', 2, now64(3), 1, 0)")
    client.command(insert + "('network', '', 'aerobic', 'none', 2, now64(3), 1, 0)")
    # Everyone left the N01 arm: the stream deletes its row in a later version.
    client.command(insert + "('node', 'N01', 'aerobic', 'none', 0, now64(3), 2, 1)")
    rows = client.query("SELECT scope, node_id, randomized FROM arm_summary FINAL")
    assert rows.result_rows == [("network", "", 2)]
    # An older version arriving late does not bring it back.
    client.command(insert + "('node', 'N01', 'aerobic', 'none', 2, now64(3), 1, 0)")
    assert client.query("SELECT count() FROM arm_summary FINAL").result_rows == [(1,)]
