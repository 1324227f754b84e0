"""The sink writes the stream's view messages (exnet.views) into the view tables: a real
broker, real chDB; and refuses, counts and commits past what is no view row."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from contracts import headers as H
from contracts.topics import Topic, topic_name
from contracts.views import VIEW_KEYS
from exnet.metrics import Metrics
from exnet.settings import Settings
from sinks.client import connect
from sinks.consumer import ROW_TABLES, SinkConsumer, sink_group
from sinks.migrate import apply_migrations
from sinks.rows import VIEW_COLUMNS
from sinks.writer import ClickHouseWriter
from tests.conftest import SettingsFactory, TopicFactory, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

#: Seconds the sink may take to write and commit what was sent.
WRITTEN_TIMEOUT_S = 30.0
STAMP = "2026-11-30T17:50:01.123+00:00"


def _row(table: str, version: int, deleted: int = 0, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(VIEW_COLUMNS[table], 0)
    row.update(values, updated_at=STAMP, version=version, is_deleted=deleted)
    return row


def _message(table: str, row: dict[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    key = "|".join([table, *(str(row[c]) for c in VIEW_KEYS[table])])
    return key.encode(), orjson.dumps(row), [(H.TABLE, table.encode())]


@pytest.fixture
def settings(settings_factory: SettingsFactory, topic_factory: TopicFactory) -> Settings:
    settings = settings_factory(sink_batch_seconds=0.05)
    for topic in (Topic.ACCEPTED, Topic.DEADLETTER, Topic.VIEWS):
        topic_factory(topic_name(topic, settings.topic_prefix))
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[Any]:
    client = connect(settings, create_database=True)
    apply_migrations(client, settings.clickhouse_database)
    yield client
    client.close()


def _committed(settings: Settings, topic: str) -> int | None:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=sink_group(settings)
    )
    try:
        committed: int | None = consumer.committed(TopicPartition(topic, 0))
        return committed
    finally:
        consumer.close()


def test_the_sink_writes_view_rows_and_refuses_what_is_none(
    settings: Settings, client: Any
) -> None:
    views_topic = topic_name(Topic.VIEWS, settings.topic_prefix)
    node: dict[str, Any] = {"node_id": "N01", "node_name": "North"}
    arm: dict[str, Any] = {
        "scope": "node",
        "node_id": "N01",
        "modality": "aerobic",
        "adjunct": "none",
    }
    messages = [
        _message("node_summary", _row("node_summary", 1, screened=1, **node)),
        _message("node_summary", _row("node_summary", 3, screened=3, exercise_minutes=2.5, **node)),
        (b"nope|x", b"{}", [(H.TABLE, b"node_facts")]),  # no view table: refused
        _message("node_summary", _row("node_summary", 2, screened=2, **node)),  # late
        _message("network_summary", _row("network_summary", 3, assays=7)),
        _message("arm_summary", _row("arm_summary", 1, randomized=2, **arm)),
        (b"node_summary|N02", b'{"node_id":"N02"}', [(H.TABLE, b"node_summary")]),  # refused
        _message("arm_summary", _row("arm_summary", 4, deleted=1, **arm)),
        _message(
            "node_daily", _row("node_daily", 2, node_id="N01", day="2026-11-30", sessions_missed=4)
        ),
    ]
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    for key, value, headers in messages:
        producer.send(views_topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()

    metrics = Metrics()
    metrics.preset([])
    writer = ClickHouseWriter(client, settings.clickhouse_database)
    writer.setup(ROW_TABLES)
    sink = SinkConsumer(settings, writer, metrics)
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: _committed(settings, views_topic) == len(messages),
            "the commit",
            WRITTEN_TIMEOUT_S,
        )
    finally:
        sink.stop()
        thread.join(timeout=WRITTEN_TIMEOUT_S)
    assert not thread.is_alive()

    def written(table: str) -> float | None:
        return metrics.registry.get_sample_value("exnet_sink_rows_written_total", {"table": table})

    assert {t: written(t) for t in VIEW_COLUMNS} == {
        "node_summary": 3.0,
        "network_summary": 1.0,
        "arm_summary": 2.0,
        "node_daily": 1.0,
    }
    refused = {
        reason: metrics.registry.get_sample_value(
            "exnet_sink_view_rows_refused_total", {"reason": reason}
        )
        for reason in ("unknown_table", "invalid_row")
    }
    assert refused == {"unknown_table": 1.0, "invalid_row": 1.0}

    def final(sql: str) -> list[tuple[Any, ...]]:
        return list(client.query(sql).result_rows)

    # The highest version per key, whatever the arrival order; a deleted row hidden.
    assert final("SELECT node_id, screened, exercise_minutes, version FROM node_summary FINAL") == [
        ("N01", 3, 2.5, 3)
    ]
    assert final("SELECT assays FROM network_summary FINAL") == [(7,)]
    assert final("SELECT count() FROM arm_summary FINAL") == [(0,)]
    assert final("SELECT node_id, toString(day), sessions_missed FROM node_daily FINAL") == [
        ("N01", "2026-11-30", 4)
    ]


def test_a_replayed_view_batch_is_a_no_op(client: Any, settings: Settings) -> None:
    writer = ClickHouseWriter(client, settings.clickhouse_database)
    rows = [
        orjson.dumps(_row("node_daily", 1, node_id="N01", day="2026-11-30", screened=1)),
        orjson.dumps(_row("node_daily", 1, node_id="N02", day="2026-11-30", screened=2)),
    ]
    writer.write_json("node_daily", rows, "g:node_daily:v/0/0-1", ingested_at=False)
    writer.write_json("node_daily", rows, "g:node_daily:v/0/0-1", ingested_at=False)
    assert client.query("SELECT count() FROM node_daily").result_rows == [(2,)]
    stamps = client.query("SELECT DISTINCT toString(updated_at) FROM node_daily").result_rows
    assert stamps == [("2026-11-30 17:50:01.123",)]  # as the stream wrote it
