"""The views against their reference: the pure comparison, the settled differences,
and both read from real chDB."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from contracts.registry import DEMO_REGISTRY, load_registry
from contracts.views import SUMMARY_COLUMNS, VIEW_KEYS
from exnet.metrics import Metrics
from exnet.settings import Settings
from sinks.client import connect
from sinks.migrate import apply_migrations, load_registry_tables
from sinks.verify import (
    CATCHING_UP_BACKLOG,
    QueryRows,
    RowDifference,
    SettledDifferences,
    ViewCheck,
    compare,
    compared_columns,
    rows_of,
    verify,
)
from tests.conftest import SettingsFactory

# --- compare: pure -------------------------------------------------------------------


def _node(node_id: str = "N01", version: int | None = 1, **figures: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"node_id": node_id, "node_name": f"name of {node_id}"}
    row |= dict.fromkeys(SUMMARY_COLUMNS, 0) | {"exercise_minutes": 0.0} | figures
    if version is not None:
        row["version"] = version
    return row


def test_equal_rows_make_no_difference_whatever_their_types() -> None:
    stream = [_node(screened=3, exercise_minutes=10.5, version=7), _node("N02", assays=1)]
    # ClickHouse's JSON quotes 64-bit integers; order does not matter; the reference has
    # no version; updated_at is not compared.
    reference = [
        {k: str(v) for k, v in _node("N02", None, assays=1, updated_at="x").items()},
        _node(screened=3, exercise_minutes=10.5, version=None),
    ]
    assert compare("node_summary", stream, reference) == []


def test_minutes_compare_within_the_tolerance_counts_exactly() -> None:
    stream = [_node(exercise_minutes=0.1 + 0.2)]
    assert compare("node_summary", stream, [_node(exercise_minutes=0.3, version=None)]) == []
    assert compare("node_summary", stream, [_node(exercise_minutes=0.3 + 1e-5)]) != []
    big = [_node(exercise_minutes=1e9 + 0.5)]
    assert compare("node_summary", big, [_node(exercise_minutes=1e9 + 0.5 + 1e-4)]) == []
    [difference] = compare("node_summary", [_node(sessions_missed=2)], [_node(sessions_missed=3)])
    assert difference.columns == (("sessions_missed", 2, 3),)


def test_a_changed_value_names_the_row_and_the_column() -> None:
    stream = [_node(screened=4, version=9), _node("N02", screened=1)]
    reference = [_node(screened=5, version=None), _node("N02", screened=1, version=None)]
    [difference] = compare("node_summary", stream, reference)
    assert difference == RowDifference(
        "node_summary",
        (("node_id", "N01"),),
        None,
        (("screened", 4, 5),),
        9,
        tuple(_node(screened=5)[c] for c in compared_columns("node_summary")),
    )
    assert difference.lines() == ["node_summary node_id=N01: screened: stream 4, reference 5"]


def test_node_name_is_compared_too() -> None:
    [difference] = compare(
        "node_summary", [_node(node_name="Old")], [_node(node_name="New", version=None)]
    )
    assert difference.lines() == [
        "node_summary node_id=N01: node_name: stream 'Old', reference 'New'"
    ]


def test_a_missing_row_is_a_difference_unless_an_emptied_row_the_stream_deletes() -> None:
    # N02 registered, nothing happened there: its row of zeros is still due (SPEC §4).
    reference = [_node(version=None, screened=1), _node("N02"), _node("N03", completed=1)]
    stream = [_node(screened=1), _node("N09", screened=1)]
    differences = compare("node_summary", stream, reference)
    assert [line for d in differences for line in d.lines()] == [
        "node_summary node_id=N02: missing in the stream table",
        "node_summary node_id=N03: missing in the stream table",
        "node_summary node_id=N09: missing in the reference",
    ]
    # A stream row of zeros where the reference has none is still a difference.
    assert compare("node_summary", [_node("N02")], []) != []
    # An arm everyone left: the stream deletes its row, the reference counts nothing.
    arm = {"scope": "node", "node_id": "N01", "modality": "aerobic", "adjunct": "none"}
    emptied = arm | {"randomized": 0, "sessions_attended": 0, "exercise_minutes": 0.0}
    emptied |= {"responders": 0, "remitters": 0}
    assert compare("arm_summary", [], [emptied]) == []
    assert compare("arm_summary", [], [emptied | {"randomized": 1}]) != []


def test_keys_of_several_columns_and_days() -> None:
    def arm(node: str, **figures: Any) -> dict[str, Any]:
        scope = "node" if node else "network"
        row: dict[str, Any] = {"scope": scope, "node_id": node, "modality": "aerobic"}
        row["adjunct"] = "none"
        row |= {"randomized": 1, "sessions_attended": 0, "exercise_minutes": 0.0}
        return row | {"responders": 0, "remitters": 0} | figures

    stream = [arm("N01"), arm("", responders=1)]
    reference = [arm("N01"), arm("")]
    [difference] = compare("arm_summary", stream, reference)
    assert difference.lines() == [
        "arm_summary scope=network node_id= modality=aerobic adjunct=none: "
        "responders: stream 1, reference 0"
    ]
    day: dict[str, Any] = {"node_id": "N01", "day": date(2026, 3, 2), "screened": 2}
    day |= {c: 0 for c in compared_columns("node_daily") if c not in day}
    as_text = day | {"day": "2026-03-02"}
    assert compare("node_daily", [day], [as_text]) == []
    [network] = compare("network_summary", [], [dict.fromkeys(SUMMARY_COLUMNS, 1)])
    assert network.lines() == ["network_summary: missing in the stream table"]


# --- settled differences: pure ---------------------------------------------------------


def _differing(version: int | None, reference: int = 5, stream: int = 4) -> RowDifference:
    [difference] = compare(
        "node_summary", [_node(screened=stream, version=version)], [_node(screened=reference)]
    )
    return difference


def test_a_difference_settles_when_it_stays_while_nothing_changes() -> None:
    settled = SettledDifferences()
    first = settled.update([_differing(3)])
    assert first["node_summary"] == [] and set(first) == set(VIEW_KEYS)  # may be on its way
    assert settled.update([_differing(3)])["node_summary"] == [_differing(3)]  # settled
    assert settled.update([_differing(3)])["node_summary"] == [_differing(3)]  # still
    # The same wrong row sent again (a new version, as after a rebalance) stays settled:
    # the rollup re-sends rows, and a wrong one must still be counted.
    assert settled.update([_differing(4)])["node_summary"] == [_differing(4)]


def test_a_difference_whose_values_changed_has_not_settled() -> None:
    settled = SettledDifferences()
    settled.update([_differing(3)])
    assert settled.update([_differing(4, stream=3)])["node_summary"] == []  # other figures
    assert settled.update([_differing(4, stream=3, reference=6)])["node_summary"] == []  # facts
    assert settled.update([_differing(4, stream=3, reference=6)])["node_summary"] != []
    assert settled.update([])["node_summary"] == []  # fixed
    assert settled.update([_differing(4, stream=3, reference=6)])["node_summary"] == []  # new


def test_a_row_missing_in_the_stream_settles_too() -> None:
    [missing] = compare("node_summary", [], [_node(screened=1)])
    settled = SettledDifferences()
    settled.update([missing])
    assert settled.update([missing])["node_summary"] == [missing]


# --- against real chDB -----------------------------------------------------------------


@pytest.fixture
def settings(settings_factory: SettingsFactory) -> Settings:
    return settings_factory()


@pytest.fixture
def client(settings: Settings) -> Iterator[Any]:
    """A migrated database with a few facts, and the view tables written from the reference."""
    client = connect(settings, create_database=True)
    database = settings.clickhouse_database
    apply_migrations(client, database)
    load_registry_tables(client, database, load_registry(DEMO_REGISTRY))
    client.command(
        "INSERT INTO enrollment_events (event_id, schema, occurred_at, node_id, site_id, "
        "participant_id, status, modality, adjunct, source_topic, source_partition, "
        "source_offset, ingested_at) VALUES "
        "('e1', 'enrollment/1', '2026-03-02 09:00:00', 'N01', 'N01-S01', 'P-1', "
        "'randomized', 'aerobic', 'none', 't', 0, 1, now64(3)), "
        "('e2', 'enrollment/1', '2026-03-03 09:00:00', 'N02', 'N02-S01', 'P-2', "
        "'screened', NULL, 'none', 't', 0, 2, now64(3))"
    )
    client.command(
        "INSERT INTO session_events (event_id, schema, occurred_at, node_id, site_id, "
        "participant_id, session_number, status, modality, supervised, duration_min, "
        "source_topic, source_partition, source_offset, ingested_at) VALUES "
        "('s1', 'session/1', '2026-03-04 09:00:00', 'N01', 'N01-S01', 'P-1', 1, 'attended', "
        "'aerobic', true, 0.1, 't', 0, 3, now64(3)), "
        "('s2', 'session/1', '2026-03-05 09:00:00', 'N01', 'N01-S01', 'P-1', 2, 'attended', "
        "'aerobic', true, 0.2, 't', 0, 4, now64(3))"
    )
    for view in VIEW_KEYS:  # N03 has no event: its row of zeros, as the stream writes it
        client.command(f"INSERT INTO {view} SELECT *, 1, 0 FROM {view}_reference")
    yield client
    client.close()


def _query(client: Any) -> Any:
    return rows_of(lambda sql, fmt: client.raw_query(sql, fmt=fmt))


def _change_n01(client: Any, version: int, screened: int = 99) -> None:
    client.command(
        f"INSERT INTO node_summary SELECT * REPLACE ({screened} AS screened, {version} AS version) "
        "FROM node_summary FINAL WHERE node_id = 'N01'"
    )


@pytest.mark.clickhouse
def test_verify_reads_both_sides_from_clickhouse(client: Any, settings: Settings) -> None:
    result = verify(_query(client), settings.clickhouse_database)
    assert result.equal, result.lines()
    assert result.compared == {
        "node_summary": 3,
        "network_summary": 1,
        "arm_summary": 2,
        "node_daily": 4,
    }
    assert result.lines() == [
        "no differences: 10 rows compared "
        "(node_summary 3, network_summary 1, arm_summary 2, node_daily 4)"
    ]

    _change_n01(client, version=2)
    client.command(
        "INSERT INTO network_summary SELECT * REPLACE (3 AS version, 1 AS is_deleted) "
        "FROM network_summary FINAL"
    )
    result = verify(_query(client), settings.clickhouse_database)
    assert result.lines() == [
        "node_summary node_id=N01: screened: stream 99, reference 0",
        "network_summary: missing in the stream table",
        "2 of 10 rows differ (node_summary 1, network_summary 1); "
        "the stream-written views do not match the reference",
    ]


@pytest.mark.clickhouse
def test_the_check_counts_settled_differences_only(client: Any, settings: Settings) -> None:
    metrics = Metrics()
    metrics.preset([])
    check = ViewCheck(_query(client), settings.clickhouse_database, metrics, interval_s=60)

    def differing() -> dict[str, float | None]:
        return {
            view: metrics.registry.get_sample_value("exnet_view_rows_differing", {"view": view})
            for view in VIEW_KEYS
        }

    zero = dict.fromkeys(VIEW_KEYS, 0.0)
    assert differing() == zero  # preset
    assert check.check() == {view: [] for view in VIEW_KEYS}
    last = metrics.registry.get_sample_value("exnet_view_check_last_timestamp_seconds")
    assert last is not None and last > 0

    _change_n01(client, version=2)
    check.check()
    assert differing() == zero  # differs once: may be on its way
    check.check()
    assert differing() == zero | {"node_summary": 1.0}  # the same row twice: settled
    _change_n01(client, version=3)  # sent again unchanged: still settled
    check.check()
    assert differing() == zero | {"node_summary": 1.0}
    _change_n01(client, version=4, screened=98)
    check.check()
    assert differing() == zero  # the stream wrote other figures: not settled
    check.check()
    assert differing() == zero | {"node_summary": 1.0}
    _change_n01(client, version=5, screened=0)  # right again: N01 screened nobody
    check.check()
    assert differing() == zero


@pytest.mark.clickhouse
def test_the_check_waits_while_the_pipeline_catches_up(client: Any, settings: Settings) -> None:
    """A long catch-up leaves view rows behind facts through several checks: no
    check runs then, and differences settle over checks made after it only."""
    metrics = Metrics()
    metrics.preset([])
    backlog: list[int | None] = [0]
    queried: list[str] = []
    read: QueryRows = _query(client)

    def query(sql: str) -> list[dict[str, Any]]:
        queried.append(sql)
        return read(sql)

    check = ViewCheck(
        query, settings.clickhouse_database, metrics, interval_s=0.01, backlog=lambda: backlog[0]
    )

    def node_summary_differing() -> float | None:
        return metrics.registry.get_sample_value(
            "exnet_view_rows_differing", {"view": "node_summary"}
        )

    _change_n01(client, version=2)
    assert not check.catching_up()
    check.check()  # differs once
    backlog[0] = CATCHING_UP_BACKLOG + 1
    assert check.catching_up()
    backlog[0] = CATCHING_UP_BACKLOG
    assert not check.catching_up()
    check.check()
    assert node_summary_differing() == 0.0  # not settled: the catch-up came in between
    check.check()
    assert node_summary_differing() == 1.0
    backlog[0] = None  # Kafka cannot tell: check anyway
    assert not check.catching_up()

    backlog[0] = 5 * CATCHING_UP_BACKLOG
    queried.clear()
    check.start()
    try:
        time.sleep(0.3)  # some 30 rounds of the schedule
        assert queried == []
        backlog[0] = 0
        deadline = time.monotonic() + 10
        while not queried and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queried
    finally:
        check.stop()
        check.join()


def test_a_failed_check_is_counted_and_never_raises(settings: Settings) -> None:
    metrics = Metrics()

    def broken(sql: str) -> list[dict[str, Any]]:
        raise RuntimeError("ClickHouse went away")

    check = ViewCheck(broken, settings.clickhouse_database, metrics, interval_s=60)
    assert check.check() is None
    assert metrics.registry.get_sample_value("exnet_view_check_errors_total") == 1.0
    assert metrics.registry.get_sample_value("exnet_view_check_last_timestamp_seconds") == 0.0
