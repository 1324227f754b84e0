"""What analysts looked for (m0006), on embedded ClickHouse with known facts: every column
commented; participants and site_summary; local time; outcomes by the primary endpoint."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from contracts import EventBase, Origin
from contracts.registry import DEMO_REGISTRY, NetworkRegistry, load_registry
from contracts.topics import Topic, topic_name
from contracts.validation import Accepted, Validator
from contracts.views import SUMMARY_COLUMNS, compute_views
from contracts.wire import validated_message
from exnet.settings import Settings
from producers.simulate import MessageKind, SimulationConfig, generate
from sinks.client import connect
from sinks.migrate import apply_migrations, load_registry_tables
from sinks.rows import FACT_TABLES
from sinks.writer import ClickHouseWriter
from tests.conftest import SettingsFactory
from tests.contracts.test_views import Make

pytestmark = pytest.mark.clickhouse

A, B = "P-00000000aa", "P-00000000bb"


@pytest.fixture
def settings(settings_factory: SettingsFactory) -> Settings:
    return settings_factory()


def _registry(tmp_path: Path, endpoint: str = "") -> NetworkRegistry:
    """The demo network (N01-S01 in Chicago) with no zone for N02-S01, and ``endpoint``
    (a YAML line) if given."""
    text = DEMO_REGISTRY.read_text()
    assert "{id: N01-S01, name: Downtown Clinic, timezone: America/Chicago}" in text
    zoned = "{id: N02-S01, name: Harbour Sports Medicine, timezone: Europe/London}"
    assert zoned in text
    text = text.replace(zoned, "{id: N02-S01, name: Harbour Sports Medicine}")
    path = tmp_path / "registry.yaml"
    path.write_text(endpoint + text)
    return load_registry(path)


@pytest.fixture
def client(settings: Settings) -> Iterator[Any]:
    client = connect(settings, create_database=True)
    apply_migrations(client, settings.clickhouse_database)
    yield client
    client.close()


def _rows(client: Any, sql: str) -> list[dict[str, Any]]:
    result = client.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _write(client: Any, registry: NetworkRegistry, messages: Sequence[tuple[bytes, Topic]]) -> None:
    """Validate each message and write its fact row as the sink does (JSONEachRow)."""
    validator = Validator(registry)
    writer = ClickHouseWriter(client, client.database)
    by_table: dict[str, list[bytes]] = {}
    for offset, (raw, topic) in enumerate(messages):
        key = orjson.loads(raw)["participant_id"].encode()
        outcome = validator.validate_message(
            raw, key, Origin(topic_name(topic, ""), 0, offset), datetime.now(UTC)
        )
        assert isinstance(outcome, Accepted), outcome
        _, value, _ = validated_message(outcome, raw, None, validator.site_zones)
        by_table.setdefault(FACT_TABLES[outcome.event_type], []).append(value)
    for table, rows in by_table.items():
        writer.write_json(table, rows, f"test:{table}")


def _raw(event: EventBase, offset_hours: int = 0) -> tuple[bytes, Topic]:
    """The event as a site would send it, ``occurred_at`` written at ``offset_hours``."""
    local = event.occurred_at.astimezone(timezone(timedelta(hours=offset_hours)))
    document = event.model_dump(mode="json", by_alias=True)
    document["occurred_at"] = local.isoformat()
    return orjson.dumps(document), Topic.for_event_type(event.EVENT_TYPE)


def _event(registry: NetworkRegistry, raw: bytes, topic: Topic) -> EventBase:
    key = orjson.loads(raw)["participant_id"].encode()
    outcome = Validator(registry).validate_message(raw, key, Origin(topic_name(topic, ""), 0, 0))
    assert isinstance(outcome, Accepted)
    return outcome.event


def test_every_column_of_every_table_and_view_has_a_comment(client: Any) -> None:
    uncommented = _rows(
        client,
        "SELECT table, name FROM system.columns "
        f"WHERE database = '{client.database}' AND comment = '' ORDER BY table, name",
    )
    assert uncommented == []
    tables = _rows(
        client,
        f"SELECT name FROM system.tables WHERE database = '{client.database}' AND comment = ''",
    )
    assert tables == []


def test_the_rejected_payload_s_comment_says_what_the_sink_redacts(client: Any) -> None:
    """An identifier is redacted when it failed its pattern (SPEC §4); an unknown site's
    or a mismatched key's passed it, and is kept (sinks.rows._WELL_FORMED_ERRORS)."""
    ((comment,),) = client.query(
        "SELECT comment FROM system.columns WHERE database = {db:String} "
        "AND table = 'rejected_events' AND name = 'payload'",
        parameters={"db": client.database},
    ).result_rows
    assert "identifier fields that failed their patterns" in comment
    assert "failed their rules" not in comment


def test_randomized_says_what_each_view_counts(client: Any) -> None:
    result = client.query(
        "SELECT concat(table, '.', name), comment FROM system.columns "
        f"WHERE database = '{client.database}' AND name IN ('randomized', 'randomized_at')"
    )
    comments = dict(result.result_rows)
    reached = "distinct participants that reached status randomized"
    for view in ("site_summary", "node_facts", "node_summary_reference"):
        assert comments[f"{view}.randomized"] == reached, view
    assert comments["network_summary_reference.randomized"] == reached
    assert comments["arm_summary_reference.randomized"].endswith("(by their latest randomization)")
    assert "null" not in comments["participant_arms.randomized_at"]
    assert comments["participants.randomized_at"].endswith("null if none")


def test_local_time_is_kept_and_the_registry_zone_gives_the_local_date(
    client: Any, tmp_path: Path
) -> None:
    """22:30 in Chicago on 12 May is 13 May in UTC; a site with no zone keeps its offset's day."""
    registry = _registry(tmp_path)
    load_registry_tables(client, client.database, registry)
    make = Make()
    at = datetime(2025, 5, 13, 3, 30, tzinfo=UTC)
    chicago = make.session(A, "N01-S01", "attended", at=at)  # zone America/Chicago (CDT, -05:00)
    elsewhere = make.session(B, "N02-S01", "attended", at=at)  # no zone in the registry
    _write(client, registry, [_raw(chicago, 2), _raw(elsewhere, -5)])
    rows = _rows(
        client,
        "SELECT participant_id, utc_offset_min, local_date, toDate(occurred_at) AS utc_day "
        "FROM session_events FINAL ORDER BY participant_id",
    )
    assert rows == [
        # The site's clock said +02:00; its registered zone wins for the date.
        {"participant_id": A, "utc_offset_min": 120, "local_date": date(2025, 5, 12),
         "utc_day": date(2025, 5, 13)},
        {"participant_id": B, "utc_offset_min": -300, "local_date": date(2025, 5, 12),
         "utc_day": date(2025, 5, 13)},
    ]  # fmt: skip
    zones = _rows(
        client,
        "SELECT site_id, timezone FROM sites FINAL WHERE site_id LIKE '%S01' ORDER BY site_id",
    )
    assert zones == [
        {"site_id": "N01-S01", "timezone": "America/Chicago"},
        {"site_id": "N02-S01", "timezone": ""},
        {"site_id": "N03-S01", "timezone": "America/Toronto"},
    ]


def test_participants_and_site_summary(client: Any, tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    load_registry_tables(client, client.database, registry)
    make = Make()
    events = [
        make.enrollment(A, "N01-S01", "screened", 0, age_band="25-34", sex="female"),
        make.enrollment(A, "N01-S01", "consented", 1),
        make.enrollment(A, "N01-S01", "randomized", 2, modality="aerobic"),
        make.enrollment(A, "N01-S02", "randomized", 5, modality="control"),
        make.session(A, "N01-S02", "attended", day=6, minutes=30.0),
        make.enrollment(A, "N01-S02", "withdrawn", 9, reason="participant_choice"),
        make.enrollment(B, "N02-S01", "screened", 3),
        make.assay(B, "N02-S01", "SP-0001"),
    ]
    _write(client, registry, [_raw(event) for event in events])
    people = {
        row["participant_id"]: row
        for row in _rows(client, "SELECT * FROM participants ORDER BY participant_id")
    }
    start = datetime(2025, 3, 3, 9, 0)  # tests.contracts.test_views.START, naive UTC
    a = people[A]
    assert (a["site_id"], a["node_id"], a["age_band"], a["sex"]) == (
        "N01-S02",
        "N01",
        "25-34",
        "female",
    )
    assert a["screened_at"].replace(tzinfo=None) == start
    assert a["randomized_at"].replace(tzinfo=None) == start + timedelta(days=2)  # the first
    assert a["ended_at"].replace(tzinfo=None) == start + timedelta(days=9)
    assert a["completed_at"] is None
    assert (a["status"], a["modality"], a["adjunct"]) == ("withdrawn", "control", "none")
    b = people[B]
    assert (b["status"], b["modality"], b["age_band"], b["randomized_at"]) == (
        "screened",
        None,
        None,
        None,
    )

    sites = {row["site_id"]: row for row in _rows(client, "SELECT * FROM site_summary")}
    assert set(sites) == {site.id for _, site in registry.sites()}  # every registered site
    assert sites["N01-S01"]["screened"] == 1 and sites["N01-S01"]["randomized"] == 1
    assert sites["N01-S02"]["randomized"] == 1 and sites["N01-S02"]["withdrawn"] == 1
    assert sites["N01-S02"]["exercise_minutes"] == 30.0
    assert sites["N02-S01"]["specimens"] == 1 and sites["N02-S01"]["node_id"] == "N02"
    assert sites["N03-S01"] == {
        "node_id": "N03",
        "site_id": "N03-S01",
        "site_name": "Meadow Lane Clinic",
        **dict.fromkeys(SUMMARY_COLUMNS, 0),
        "exercise_minutes": 0.0,
        "updated_at": sites["N03-S01"]["updated_at"],
    }
    # Per node, the sites add up to node_summary's reference (distinct counts per site).
    node = _rows(client, "SELECT * FROM node_summary_reference WHERE node_id = 'N01'")[0]
    for column in ("sessions_attended", "exercise_minutes", "assays", "withdrawn"):
        assert node[column] == sum(s[column] for s in sites.values() if s["node_id"] == "N01")


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        "primary_endpoint: {instrument: HAMD17, week: 4}\n",
        "primary_endpoint: {instrument: PHQ9, week: 8, response_reduction_pct: 30, "
        "remission_max: 6}\n",
    ],
)
def test_reference_outcomes_follow_the_registrys_endpoint(
    client: Any, tmp_path: Path, endpoint: str
) -> None:
    registry = _registry(tmp_path, endpoint)
    load_registry_tables(client, client.database, registry)
    simulation = generate(registry, SimulationConfig(seed=11, participants=60))
    messages = [(m.value, m.topic) for m in simulation.messages if m.kind is MessageKind.EVENT]
    random.Random(1).shuffle(messages)
    _write(client, registry, messages)
    arms = {
        (r["scope"], r["node_id"], r["modality"], r["adjunct"]): (r["responders"], r["remitters"])
        for r in _rows(client, "SELECT * FROM arm_summary_reference")
    }
    want = compute_views(
        [_event(registry, raw, topic) for raw, topic in messages],
        [node.id for node in registry.nodes],
        registry.primary_endpoint,
    ).arm_summary  # fmt: skip
    assert arms == {key: (f["responders"], f["remitters"]) for key, f in want.items()}
    (definition,) = client.query("SELECT argMax(definition, loaded_at) FROM study").result_rows[0]
    assert definition.startswith("any instrument at any later week") == (not endpoint)
