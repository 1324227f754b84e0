"""The sink rides out a Kafka outage: kafka-python 3.0.12's ``poll`` raises a connection
error when its group coordinator's lookup finds no broker (every broker of a 3-node
cluster stopped: about 170 s in, 2026-12-05), which stopped the writer process and
with it `exnet up`. A real broker and consumer; only ``poll``'s failures are injected,
the error kafka-python raised then."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError
from kafka.structs import TopicPartition

from contracts.topics import Topic, topic_name
from exnet.metrics import Metrics
from sinks import consumer as sink_module
from sinks.consumer import SinkConsumer
from tests.conftest import SettingsFactory, TopicFactory, wait_until

pytestmark = [pytest.mark.kafka]

TIMEOUT_S = 60.0


class _Writer:
    """Rows written, by table (the sink's only use of ClickHouse)."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def write(self, table: str, columns: Any, rows: Any, token: str) -> None:
        self.rows[table] = self.rows.get(table, 0) + len(rows)

    def write_json(self, table: str, rows: Any, token: str, *, ingested_at: bool = True) -> None:
        self.rows[table] = self.rows.get(table, 0) + len(rows)


def _failing_polls(monkeypatch: pytest.MonkeyPatch, errors: list[Exception]) -> None:
    """The sink's consumer raises ``errors`` from its first polls, then polls Kafka."""

    class Consumer(KafkaConsumer):  # type: ignore[misc]  # untyped library base
        def poll(self, *args: Any, **kwargs: Any) -> Any:
            if errors:
                raise errors.pop(0)
            return super().poll(*args, **kwargs)

    monkeypatch.setattr(sink_module, "KafkaConsumer", Consumer)


def _sink(settings_factory: SettingsFactory, topic_factory: TopicFactory) -> SinkConsumer:
    settings = settings_factory(sink_batch_seconds=0.1)
    for topic in (Topic.ACCEPTED, Topic.DEADLETTER, Topic.VIEWS):
        topic_factory(topic_name(topic, settings.topic_prefix))
    metrics = Metrics()
    metrics.preset([])
    return SinkConsumer(settings, _Writer(), metrics)


def test_the_sink_polls_again_while_no_broker_answers_and_then_commits(
    settings_factory: SettingsFactory,
    topic_factory: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[Exception] = [KafkaConnectionError("111 ECONNREFUSED") for _ in range(3)]
    _failing_polls(monkeypatch, errors)
    sink = _sink(settings_factory, topic_factory)
    settings = sink._settings
    views = topic_name(Topic.VIEWS, settings.topic_prefix)
    caplog.set_level(logging.INFO, logger="sinks.consumer")
    failed: list[BaseException] = []

    def run() -> None:
        try:
            sink.run()
        except BaseException as exc:  # noqa: BLE001  # the test's finding
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        # A message no view table takes: skipped, and its offset committed with the batch.
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        producer.send(views, value=b"{}", partition=0).get(timeout=10)
        producer.close()
        wait_until(sink.flushed.is_set, "the sink's first commit", TIMEOUT_S)
    finally:
        sink.stop()
        thread.join(TIMEOUT_S)
    assert not failed
    assert not errors  # every injected failure was met
    checker = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=sink_module.sink_group(settings)
    )
    try:
        assert checker.committed(TopicPartition(views, 0)) == 1
    finally:
        checker.close()
    outage = [r.getMessage() for r in caplog.records if "answer" in r.getMessage()]
    assert len(outage) == 2, outage  # its start, once, and its end
    assert outage[0].startswith("Kafka does not answer the sink")
    assert "after" in outage[1] and "3 failed polls" in outage[1]


def test_a_refused_login_still_stops_the_sink(
    settings_factory: SettingsFactory,
    topic_factory: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _failing_polls(monkeypatch, [SaslAuthenticationFailedError("refused")])
    sink = _sink(settings_factory, topic_factory)
    with pytest.raises(SaslAuthenticationFailedError):
        sink.run()  # exnet.runner says why and exits: its supervisor starts it again
