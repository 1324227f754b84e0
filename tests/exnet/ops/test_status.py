"""``exnet status`` on known input: text and JSON, healthy and not, each part degrading alone."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import TYPE_CHECKING, Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from rich.console import Console

from contracts.registry import load_registry
from contracts.topics import Topic, topic_name
from exnet.admin import ensure_topics
from exnet.broker import port_open
from exnet.ops.status import (
    BrokerState,
    ClickHouseState,
    LagState,
    PartitionLagRow,
    SiteState,
    StageLag,
    StatusReport,
    TableThroughput,
    TopicState,
    collect_status,
    find_problems,
    render_status,
)
from sinks.client import connect
from sinks.consumer import sink_group
from sinks.migrate import load_registry_tables
from streams.names import streams_group

from .conftest import REGISTRY_YAML, SITE_NODE, VIEW_RANDOMIZED, Seeded
from .helpers import exnet_subprocess, ops_cli

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import SettingsFactory

#: A port nothing listens on: the broker (or ClickHouse) is down.
DEAD = "127.0.0.1:1"


def _text(report: StatusReport) -> str:
    out = StringIO()
    Console(file=out, width=160, color_system=None).print(render_status(report))
    return out.getvalue()


def _check_clickhouse_part(document: dict[str, Any], seeded: Seeded) -> None:
    """The ClickHouse sections of ``document`` match the seeded rows exactly."""
    assert document["clickhouse"]["reachable"] is True
    rows = {r["site_id"]: r for r in document["sites"]["rows"]}
    assert set(rows) == set(SITE_NODE)
    for site, node in SITE_NODE.items():
        assert rows[site]["node_id"] == node
        assert rows[site]["registered"] is True
        assert rows[site]["events_total"] == seeded.rows_per_site[site]
    # N01-S02's rows were written 2 days ago: stale, and nothing in the last day
    assert rows["N01-S02"]["stale"] is True
    assert rows["N01-S02"]["events_last_day"] == 0
    assert rows["N01-S01"]["stale"] is False
    assert rows["N01-S01"]["events_last_day"] == seeded.rows_per_site["N01-S01"]
    assert rows["N02-S01"]["events_last_day"] == seeded.rows_per_site["N02-S01"]
    assert document["sites"]["stale"] == 1
    # rejects of the last day: two invalid_field, one unknown_site (malformed_json is 3 days old)
    assert document["rejects"]["by_reason"] == {"invalid_field": 2, "unknown_site": 1}
    accepted = seeded.rows_per_site["N01-S01"] + seeded.rows_per_site["N02-S01"]
    assert document["rejects"]["accepted"] == accepted
    assert document["rejects"]["share"] == pytest.approx(3 / (3 + accepted))
    throughput = {t["table"]: t for t in document["throughput"]["tables"]}
    for table, count in seeded.rows_5m.items():
        assert throughput[table]["rows_5m"] == count
        assert throughput[table]["rows_1h"] == seeded.rows_1h[table]
    # The stream-written summaries, read with FINAL: the highest version of each row.
    views = document["views"]
    assert {row["node_id"]: row["randomized"] for row in views["nodes"]} == {
        "N01": VIEW_RANDOMIZED["N01"],
        "N02": VIEW_RANDOMIZED["N02"],
    }
    assert views["network"]["randomized"] == VIEW_RANDOMIZED[""]


@pytest.mark.clickhouse
def test_broker_down_still_shows_clickhouse(seeded: Seeded) -> None:
    settings = seeded.settings.model_copy(update={"kafka_bootstrap": DEAD})
    report = collect_status(settings, now=seeded.now)
    document = report.as_dict()
    assert document["broker"]["reachable"] is False
    assert document["lag"]["available"] is False
    _check_clickhouse_part(document, seeded)
    kinds = [p["kind"] for p in document["problems"]]
    # 3 of ~49 messages rejected in the last day is above the 5% default
    assert kinds == ["broker_unreachable", "stale_sites", "high_reject_share"]
    assert report.healthy is False

    text = _text(report)
    assert "3 PROBLEM(S)" in text
    assert f"no Kafka broker answers at {DEAD}" in text
    assert "N01-S02" in text and "STALE" in text
    assert "STALE: no event received for more than 24 h; old events: the newest" in text
    assert "invalid_field" in text and "unknown_site" in text
    assert "enrollment_events" in text
    assert "Views (stream-written" in text and "network" in text

    # the command: exit 1, same document
    result = ops_cli(settings, "status", "--json")
    assert result.exit_code == 1, result.output
    printed = json.loads(result.stdout)
    assert [p["kind"] for p in printed["problems"]] == kinds
    _check_clickhouse_part(printed, seeded)


@pytest.mark.clickhouse
def test_a_site_taken_out_of_the_registry_is_no_longer_expected_to_send(
    seeded: Seeded, tmp_path: Path
) -> None:
    """N01-S02 (stale: its events are 2 days old) leaves the registry: still listed
    with its events, not registered, and no stale_sites problem names it."""
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(REGISTRY_YAML.replace("      - {id: N01-S02, name: Riverside Health}\n", ""))
    client = connect(seeded.settings)
    try:
        time.sleep(0.01)  # a later loaded_at
        load_registry_tables(client, seeded.settings.clickhouse_database, load_registry(smaller))
    finally:
        client.close()
    settings = seeded.settings.model_copy(update={"kafka_bootstrap": DEAD})
    document = collect_status(settings, now=seeded.now).as_dict()
    rows = {r["site_id"]: r for r in document["sites"]["rows"]}
    assert rows["N01-S02"]["registered"] is False and rows["N01-S02"]["stale"] is False
    assert rows["N01-S02"]["events_total"] == seeded.rows_per_site["N01-S02"]
    assert rows["N01-S01"]["registered"] is True
    assert document["sites"]["stale"] == 0
    assert "stale_sites" not in [p["kind"] for p in document["problems"]]


@pytest.mark.clickhouse
@pytest.mark.kafka
def test_lag_per_stage_and_a_healthy_exit(seeded: Seeded, kafka_admin: KafkaAdminClient) -> None:
    settings = seeded.settings.model_copy(update={"partitions": 1})
    ensure_topics(settings)
    try:
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        session_topic = topic_name(Topic.SESSION, settings.topic_prefix)
        for _ in range(3):
            producer.send(session_topic, key=b"P-0000000001", value=b"{}")
        producer.flush()
        producer.close()

        report = collect_status(settings, now=seeded.now)
        document = report.as_dict()
        assert document["broker"]["reachable"] is True
        assert all(t["exists"] and t["partitions"] == 1 for t in document["broker"]["topics"])
        stages = {s["stage"]: s for s in document["lag"]["stages"]}
        assert list(stages) == [
            "validate",
            "deduplicate",
            "sink",
            "aggregate",
            "rollup",
            "sink views",
        ]
        assert stages["validate"]["total"] == 3
        lagging = [p for p in stages["validate"]["partitions"] if p["lag"]]
        assert lagging == [
            {"topic": session_topic, "partition": 0, "committed": 0, "end": 3, "lag": 3}
        ]
        assert stages["deduplicate"]["total"] == stages["sink"]["total"] == 0
        assert document["lag"]["total"] == 3
        _check_clickhouse_part(document, seeded)
        text = _text(report)
        assert "validate" in text and session_topic in text

        # With nothing running, the stages say so and the network is not healthy.
        lenient = ("status", "--stale-hours", "1000", "--max-reject-share", "0.5")
        result = ops_cli(settings, *lenient)
        assert result.exit_code == 1, result.output
        # once per consumer group, with every stage it runs and all the group's lag
        lines = [line for line in result.stdout.splitlines() if "no_workers" in line]
        assert len(lines) == 2, result.stdout
        streams, sink = lines
        assert "nothing runs the validate, deduplicate, aggregate and rollup stages" in streams
        assert "3 messages wait" in streams
        assert "nothing runs the sink and sink views stages" in sink
        assert "NOT RUNNING" in result.stdout

        # Members of the stream and sink groups (the workers' consumer groups) are the
        # processes at work: lag alone is then no problem, and the network is healthy.
        members = [
            KafkaConsumer(session_topic, bootstrap_servers=settings.kafka_bootstrap, group_id=g)
            for g in (streams_group(settings), sink_group(settings))
        ]
        try:
            for member in members:
                while not member.assignment():
                    member.poll(timeout_ms=500)
            result = ops_cli(settings, *lenient)
            assert result.exit_code == 0, result.output
            assert "HEALTHY" in result.stdout
            assert "total 3" in result.stdout and "1 in its group" in result.stdout
            stages = {s["stage"]: s for s in collect_status(settings).as_dict()["lag"]["stages"]}
            assert len(stages["validate"]["members"]) == len(stages["sink"]["members"]) == 1
        finally:
            for member in members:
                member.close()
    finally:
        prefix = settings.topic_prefix
        kafka_admin.delete_topics([t for t in kafka_admin.list_topics() if t.startswith(prefix)])


@pytest.mark.kafka
def test_clickhouse_down_still_shows_the_broker(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(clickhouse_url="http://default:secret@127.0.0.1:1")
    report = collect_status(settings)
    document = report.as_dict()
    assert document["broker"]["reachable"] is True
    # nothing was initialised under this prefix: every topic is reported missing
    assert document["broker"]["topics"] and not any(
        t["exists"] for t in document["broker"]["topics"]
    )
    assert document["clickhouse"]["reachable"] is False
    assert document["clickhouse"]["url"] == "http://127.0.0.1:1"  # no credentials shown
    assert "secret" not in json.dumps(document)
    assert [p["kind"] for p in document["problems"]] == ["topics_missing", "clickhouse_unreachable"]
    text = _text(report)
    assert "missing topic" in text and "ClickHouse http://127.0.0.1:1" in text


def test_problems_and_json_keys_from_a_built_report() -> None:
    """Pure: thresholds, and the stable key set of the --json document."""
    now = datetime(2025, 3, 3, 12, tzinfo=UTC)
    sites = (
        SiteState("N01", "N01-S01", "A", True, now, now - timedelta(hours=1), 95, 300, False),
        SiteState("N01", "N01-S02", "B", True, None, None, 0, 0, True),
        SiteState("N01", "N01-S03", "C", True, now, now - timedelta(hours=30), 0, 9, True),
    )
    clickhouse = ClickHouseState(
        True,
        "exnet",
        "chdb:///x",
        None,
        sites,
        (("invalid_field", 5),),
        (TableThroughput("session_events", 1, 2),),
    )
    broker = BrokerState("b:9092", True, None, ())
    running = ("exnet-streams-1@127.0.0.1",)
    lag = LagState(
        True, None, (StageLag("validate", "g", (PartitionLagRow("t", 0, 1, 4, 3),), running),)
    )
    problems = find_problems(broker, lag, clickhouse, 24.0, 0.05)
    assert [p.kind for p in problems] == ["stale_sites"]  # 5 / 100 is not above 5%
    # A site that never sent is said to have never sent (until 2026-12-05, "sent no
    # event for more than 24 h" for a pipeline 15 s old: an outside reviewer's find).
    assert problems[0].message == (
        "2 site(s) sent no event for more than 24 h: N01-S03; never sent one: N01-S02"
    )
    found = find_problems(broker, lag, clickhouse, 24.0, 0.04)
    assert [p.kind for p in found] == ["stale_sites", "high_reject_share"]
    # Its denominator is what ClickHouse holds: duplicates are not there, and it says so.
    assert found[1].message.startswith(
        "5.0% of the last day's events written to ClickHouse were rejected (5 of 100, "
        "accepted and rejected; duplicates are not written; limit 4.0%)"
    ), found[1].message
    report = StatusReport(now, 24.0, 0.05, broker, lag, clickhouse, problems)
    document = report.as_dict()
    assert list(document) == [
        "generated_at",
        "healthy",
        "problems",
        "broker",
        "lag",
        "clickhouse",
        "sites",
        "rejects",
        "throughput",
        "views",
    ]
    assert document["views"] == {"nodes": [], "network": None}
    assert document["generated_at"] == "2025-03-03T12:00:00.000Z"
    assert document["rejects"]["share"] == 0.05
    assert document["sites"]["rows"][1]["last_ingested_at"] is None
    text = _text(report)
    assert "never" in text and "1 PROBLEM(S)" in text


def test_the_broker_line_names_each_partition_count_topics_have() -> None:
    """Pure: topics of 1 and of 6 partitions read "1 or 6 partitions each", not "1/6"
    (one of six)."""
    topics = (
        TopicState("exnet.session", "exnet.session", True, 6),
        TopicState("exnet.contributions", "exnet.contributions", True, 1),
    )
    broker = BrokerState("b:9092", True, None, topics, (1,))
    lag = LagState(True, None, ())
    clickhouse = ClickHouseState(False, "exnet", "chdb:///x", "down", (), (), ())
    report = StatusReport(datetime.now(UTC), 24.0, 0.05, broker, lag, clickhouse, ())

    assert "topics: 2 of 2 exist, 1 or 6 partitions each" in _text(report)
    one = BrokerState("b:9092", True, None, (topics[1],), (1,))
    single = StatusReport(datetime.now(UTC), 24.0, 0.05, one, lag, clickhouse, ())
    assert "topics: 1 of 1 exist, 1 partition each" in _text(single)


def test_a_screen_printed_to_a_pipe_keeps_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    """Piped or written to a file (cron, logs), a wide screen is printed whole, not cut
    to rich's 80 columns with '…'."""
    from rich.table import Table

    from exnet.cli.ops import _print_whole

    table = Table("site", *(f"column {n}" for n in range(12)))
    table.add_row("N01-S01 (10 s ago)", *(f"{123_456_789 + n:,}" for n in range(12)))

    _print_whole(table)

    printed = capsys.readouterr().out
    assert "…" not in printed and "N01-S01 (10 s ago)" in printed
    assert all(f"{123_456_789 + n:,}" in printed for n in range(12))


def test_a_replica_out_of_sync_or_a_partition_without_leader_is_a_problem() -> None:
    """Pure: a cluster with a broker down is not healthy even though every topic exists
    and every stage runs; the screen and the --json document name the broker."""
    now = datetime(2025, 3, 3, 12, tzinfo=UTC)
    clickhouse = ClickHouseState(True, "exnet", "chdb:///x")
    running = ("exnet-streams-1@127.0.0.1",)
    lag = LagState(True, None, (StageLag("validate", "g", (), running),))
    in_sync = TopicState("exnet.session", "p.exnet.session", True, 6)
    assert (
        find_problems(
            BrokerState("b", True, None, (in_sync,), (1, 2, 3)), lag, clickhouse, 24, 0.05
        )
        == ()
    )

    lagging = TopicState("exnet.session", "p.exnet.session", True, 6, under_replicated=4)
    leaderless = TopicState("exnet.assay", "p.exnet.assay", True, 6, under_replicated=2, offline=1)
    broker = BrokerState("b", True, None, (lagging, leaderless), (1, 2), (3,))
    problems = find_problems(broker, lag, clickhouse, 24, 0.05)
    assert [p.kind for p in problems] == ["partitions_offline", "under_replicated"]
    assert problems[0].message.startswith("1 partition(s)")
    assert "6 partition(s)" in problems[1].message and "broker(s) 3" in problems[1].message
    assert "brokers alive: 1, 2" in problems[1].message
    report = StatusReport(now, 24.0, 0.05, broker, lag, clickhouse, problems)
    document = report.as_dict()["broker"]
    assert document["brokers"] == [1, 2] and document["out_of_sync"] == [3]
    assert [(t["under_replicated"], t["offline"]) for t in document["topics"]] == [(4, 0), (2, 1)]
    text = _text(report)
    assert "brokers alive: 1, 2" in text and "6 under-replicated" in text and "1 offline" in text


def test_a_broker_the_cluster_still_lists_but_that_refuses_connections_is_a_problem() -> None:
    """Pure: right after a broker's kill -9, before the controller fences it (about 9 s),
    its partitions still look in sync: status said HEALTHY and `brokers alive: 1, 2, 3`
    (an outside operator's find). A broker that refuses connections is named."""
    now = datetime(2025, 3, 3, 12, tzinfo=UTC)
    clickhouse = ClickHouseState(True, "exnet", "chdb:///x")
    lag = LagState(True, None, (StageLag("validate", "g", (), ("w-1@127.0.0.1",)),))
    in_sync = TopicState("exnet.session", "p.exnet.session", True, 6)
    broker = BrokerState("b", True, None, (in_sync,), (1, 2), silent=(3,))
    problems = find_problems(broker, lag, clickhouse, 24, 0.05)
    assert [p.kind for p in problems] == ["broker_silent"]
    assert problems[0].message.startswith("broker(s) 3 refuse connections")
    assert "brokers alive: 1, 2" in problems[0].message
    report = StatusReport(now, 24.0, 0.05, broker, lag, clickhouse, problems)
    assert not report.healthy
    assert report.as_dict()["broker"]["silent"] == [3]
    assert "not answering: 3" in _text(report)


def test_a_listener_is_checked_by_a_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        assert port_open("127.0.0.1", port, 3.0)
    assert not port_open("127.0.0.1", port, 3.0)  # closed: refused


def test_topics_a_login_may_not_describe_are_not_called_missing() -> None:
    """Pure: with a login Kafka's ACLs hide exnet's topics from, status says so and
    does not send the operator to `exnet init`."""
    now = datetime(2025, 3, 3, 12, tzinfo=UTC)
    clickhouse = ClickHouseState(True, "exnet", "chdb:///x")
    hidden = TopicState("exnet.session", "p.exnet.session", False, 0, authorized=False)
    missing = TopicState("exnet.assay", "p.exnet.assay", False, 0)
    lag = LagState(False, "this login may not describe exnet's topics")
    broker = BrokerState("b", True, None, (hidden, missing), (1,), login="analyst")
    problems = find_problems(broker, lag, clickhouse, 24, 0.05)
    assert [p.kind for p in problems] == ["topics_not_authorized"]
    assert "login 'analyst'" in problems[0].message and "p.exnet.session" in problems[0].message
    assert "exnet init" not in problems[0].message
    report = StatusReport(now, 24.0, 0.05, broker, lag, clickhouse, problems)
    assert [t["authorized"] for t in report.as_dict()["broker"]["topics"]] == [False, True]
    text = _text(report)
    assert "1 not visible to login 'analyst'" in text and "0 of 2 exist" in text

    # every topic visible: the missing one is missing
    visible = BrokerState("b", True, None, (missing,), (1,), login="analyst")
    assert [p.kind for p in find_problems(visible, lag, clickhouse, 24, 0.05)] == ["topics_missing"]


def test_an_unreachable_clickhouse_is_one_error_line(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    """The HTTP client's retry and driver warnings repeated what exnet's error says."""
    settings = settings_factory(clickhouse_url="http://127.0.0.1:1")
    result = exnet_subprocess(settings, "sql", "SELECT 1", cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr  # a transient failure, not a usage error
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach ClickHouse"), lines


def test_an_event_time_ahead_of_the_clock_reads_ahead_not_zero_seconds_ago() -> None:
    """SPEC §2 accepts an event up to 5 minutes ahead of processing time (a site's clock
    running fast): it read "(0s ago)" (an outside check)."""
    from datetime import UTC, datetime, timedelta

    from exnet.ops.status import _when

    now = datetime(2026, 12, 5, 7, 40, 16, tzinfo=UTC)
    assert _when(now + timedelta(minutes=4), now).plain == "2026-12-05 07:44 (4m ahead)"
    assert _when(now - timedelta(hours=3), now).plain == "2026-12-05 04:40 (3h ago)"
