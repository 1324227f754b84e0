"""The sink gathers the next batch while it writes the last, and commits a batch only
once it is written (a real broker, real chDB; the writer's first insert held back)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from contracts import headers as H
from contracts.topics import Topic, topic_name
from exnet.metrics import Metrics
from sinks.client import connect
from sinks.consumer import ROW_TABLES, SinkConsumer, sink_group
from sinks.migrate import apply_migrations
from sinks.rows import VIEW_COLUMNS
from sinks.writer import ClickHouseWriter
from tests.conftest import SettingsFactory, TopicFactory, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

TIMEOUT_S = 30.0
FIRST_DAY = date(2026, 1, 1)


class _HeldWriter:
    """ClickHouseWriter whose first insert waits until ``release`` is set."""

    def __init__(self, writer: ClickHouseWriter) -> None:
        self._writer = writer
        self.entered = threading.Event()
        self.release = threading.Event()
        self.rows_per_write: list[int] = []

    def write(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str
    ) -> None:
        self._writer.write(table, columns, rows, token)

    def write_json(
        self, table: str, rows: Sequence[bytes], token: str, *, ingested_at: bool = True
    ) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(TIMEOUT_S)
        self._writer.write_json(table, rows, token, ingested_at=ingested_at)
        self.rows_per_write.append(len(rows))


def _send_days(producer: KafkaProducer, topic: str, days: range) -> None:
    for i in days:
        row: dict[str, Any] = dict.fromkeys(VIEW_COLUMNS["node_daily"], 0)
        day = (FIRST_DAY + timedelta(days=i)).isoformat()
        row.update(node_id="N01", day=day, sessions_missed=i, version=1, is_deleted=0)
        row["updated_at"] = "2026-11-30T17:50:01.123+00:00"
        producer.send(
            topic,
            key=f"node_daily|N01|{day}".encode(),
            value=orjson.dumps(row),
            headers=[(H.TABLE, b"node_daily")],
        )
    producer.flush()


def test_the_next_batch_is_gathered_while_the_last_is_written(
    settings_factory: SettingsFactory, topic_factory: TopicFactory
) -> None:
    # Each batch falls due 1 s after its first row: ten rows sent at once make one batch.
    settings = settings_factory(sink_batch_seconds=1.0)
    for topic in (Topic.ACCEPTED, Topic.DEADLETTER):
        topic_factory(topic_name(topic, settings.topic_prefix))
    views = topic_factory(topic_name(Topic.VIEWS, settings.topic_prefix), partitions=1)
    client = connect(settings, create_database=True)
    group = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=sink_group(settings))
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    partition = TopicPartition(views, 0)
    try:
        apply_migrations(client, settings.clickhouse_database)
        clickhouse = ClickHouseWriter(client, settings.clickhouse_database)
        clickhouse.setup(ROW_TABLES)
        writer = _HeldWriter(clickhouse)
        metrics = Metrics()
        metrics.preset([])
        sink = SinkConsumer(settings, writer, metrics)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                sink.run()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            _send_days(producer, views, range(10))
            assert writer.entered.wait(TIMEOUT_S), "the first batch was never written"
            _send_days(producer, views, range(10, 20))
            # The first write is held: the polling thread goes on and gathers the rest...
            wait_until(
                lambda: sink.gathered == 10 and sink.pending == 20,
                "the next batch to be gathered",
                TIMEOUT_S,
            )
            # ... and commits nothing before the write is done.
            assert group.committed(partition) is None
            writer.release.set()
            wait_until(
                lambda: group.committed(partition) == 20, "every offset committed", TIMEOUT_S
            )
        finally:
            writer.release.set()
            sink.stop()
            thread.join(timeout=TIMEOUT_S)
        assert not thread.is_alive()
        assert errors == []
        assert writer.rows_per_write == [10, 10]
        written = client.query(
            f"SELECT count(), sum(sessions_missed) FROM {settings.clickhouse_database}."
            "node_daily FINAL"
        ).result_rows
        assert written == [(20, sum(range(20)))]
    finally:
        producer.close()
        group.close()
        client.close()
