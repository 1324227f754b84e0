"""A second sink joining the group takes partitions from the first while the first holds
an unwritten batch: nothing is lost, nothing crashes (a real broker, real chDB)."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from contracts import headers as H
from contracts.topics import Topic, topic_name
from exnet.metrics import Metrics
from exnet.settings import Settings
from sinks.client import connect
from sinks.consumer import ROW_TABLES, SinkConsumer, sink_group
from sinks.migrate import apply_migrations
from sinks.rows import VIEW_COLUMNS
from sinks.writer import ClickHouseWriter
from tests.conftest import SettingsFactory, TopicFactory, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

PARTITIONS = 4
ROWS = 60
TIMEOUT_S = 30.0


class _Run:
    """A sink in a thread that keeps what it raised."""

    def __init__(self, sink: SinkConsumer) -> None:
        self.sink = sink
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sink.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.sink.stop()
        self.thread.join(timeout=TIMEOUT_S)
        assert not self.thread.is_alive()


def test_a_sink_that_loses_partitions_mid_batch_reads_them_again(
    settings_factory: SettingsFactory, topic_factory: TopicFactory
) -> None:
    # Batches that only a stop closes: the first sink holds every row when the second joins.
    settings: Settings = settings_factory(sink_batch_seconds=60, sink_batch_rows=1_000_000)
    for topic in (Topic.ACCEPTED, Topic.DEADLETTER):
        topic_factory(topic_name(topic, settings.topic_prefix))
    views = topic_factory(topic_name(Topic.VIEWS, settings.topic_prefix), partitions=PARTITIONS)
    client = connect(settings, create_database=True)
    apply_migrations(client, settings.clickhouse_database)

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    first_day = date(2026, 1, 1)
    for i in range(ROWS):
        row: dict[str, Any] = dict.fromkeys(VIEW_COLUMNS["node_daily"], 0)
        day = (first_day + timedelta(days=i)).isoformat()
        row.update(node_id="N01", day=day, sessions_missed=i, version=1, is_deleted=0)
        row["updated_at"] = "2026-11-30T17:50:01.123+00:00"
        producer.send(
            views,
            key=f"node_daily|N01|{day}".encode(),
            value=orjson.dumps(row),
            headers=[(H.TABLE, b"node_daily")],
            partition=i % PARTITIONS,
        )
    producer.flush()
    producer.close()

    def sink(batch_seconds: float = 60) -> SinkConsumer:
        writer = ClickHouseWriter(client, settings.clickhouse_database)
        writer.setup(ROW_TABLES)
        metrics = Metrics()
        metrics.preset([])
        return SinkConsumer(
            settings.model_copy(update={"sink_batch_seconds": batch_seconds}), writer, metrics
        )

    def views_of(run: _Run) -> int:
        return sum(tp.topic == views for tp in run.sink.assignment)

    first = _Run(sink())
    runs = [first]
    try:
        wait_until(
            lambda: first.sink.pending == ROWS,
            "the first sink to read every row",
            TIMEOUT_S,
            interval_s=0.05,
        )
        joined = _Run(sink())
        runs.append(joined)
        # The first gave up its batch and sought back: once the range assignor split the
        # partitions of views, each sink reads its share again, every row once in all.
        wait_until(
            lambda: (
                0 < views_of(first) < PARTITIONS
                and views_of(first) + views_of(joined) == PARTITIONS
                and first.sink.pending + joined.sink.pending == ROWS
            ),
            "both sinks to hold and read their share",
            TIMEOUT_S,
            interval_s=0.05,
        )
    finally:
        for run in runs:
            run.sink.stop()
        for run in runs:
            run.stop()
    assert [run.error for run in runs] == [None, None]

    # Whatever a last rebalance (the first sink leaving) left unwritten is written by
    # the next sink of the group: every row, every offset committed.
    group = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=sink_group(settings))
    partitions = [TopicPartition(views, p) for p in range(PARTITIONS)]
    end_offsets = group.end_offsets(partitions)
    last = _Run(sink(batch_seconds=0.05))
    try:
        wait_until(
            lambda: {tp: group.committed(tp) for tp in partitions} == end_offsets,
            "every offset committed",
            TIMEOUT_S,
            interval_s=0.05,
        )
    finally:
        last.stop()
        group.close()
    assert last.error is None, repr(last.error)
    written = client.query(
        f"SELECT count(), uniqExact(day) FROM {settings.clickhouse_database}.node_daily FINAL"
    ).result_rows
    assert written == [(ROWS, ROWS)]
    client.close()
