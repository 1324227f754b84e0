"""The sink joins its group once, with every partition of its topics, when it starts after
`exnet init` (a real broker, real chDB)."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from kafka import KafkaConsumer

from contracts.topics import Topic, topic_name
from exnet.metrics import Metrics
from sinks.client import connect
from sinks.consumer import ROW_TABLES, SinkConsumer, _await_subscribed_metadata
from sinks.migrate import apply_migrations
from sinks.writer import ClickHouseWriter
from tests.conftest import SettingsFactory, TopicFactory, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

PARTITIONS = 3
TIMEOUT_S = 30.0


def test_the_sink_joins_once_with_its_topics_metadata(
    settings_factory: SettingsFactory,
    topic_factory: TopicFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_factory()
    for topic in (Topic.ACCEPTED, Topic.DEADLETTER, Topic.VIEWS):
        topic_factory(topic_name(topic, settings.topic_prefix), partitions=PARTITIONS)
    # The embedded database is the process's one: closed at the end, for the next test's.
    client = connect(settings, create_database=True)
    try:
        apply_migrations(client, settings.clickhouse_database)
        writer = ClickHouseWriter(client, settings.clickhouse_database)
        writer.setup(ROW_TABLES)
        metrics = Metrics()
        metrics.preset([])
        sink = SinkConsumer(settings, writer, metrics)
        caplog.set_level(logging.INFO, logger="kafka")

        thread = threading.Thread(target=sink.run, daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: len(sink.assignment) == 3 * PARTITIONS,
                "the sink to hold every partition",
                TIMEOUT_S,
                interval_s=0.05,
            )
            time.sleep(1.0)  # a second join would follow the metadata's arrival at once
        finally:
            sink.stop()
            thread.join(timeout=TIMEOUT_S)
        assert not thread.is_alive()
    finally:
        client.close()

    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "No partition metadata" in m]
    joins = [m for m in messages if m.startswith("Successfully joined group")]
    assert len(joins) == 1, joins


def test_the_wait_for_metadata_ends_when_the_sink_is_asked_to_stop() -> None:
    # No broker listens on port 1: the metadata never comes. (A known api_version: the
    # constructor does not wait for a broker to ask it.)
    consumer = KafkaConsumer(
        bootstrap_servers="127.0.0.1:1", group_id="exnet-test-join", api_version=(3, 0)
    )
    try:
        consumer.subscribe(["exnet.accepted"])
        stop = threading.Event()
        timer = threading.Timer(0.5, stop.set)
        timer.start()
        started = time.monotonic()
        _await_subscribed_metadata(consumer, stop)
        assert 0.5 <= time.monotonic() - started < 2.0
    finally:
        consumer.close()
