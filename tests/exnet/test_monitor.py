"""The lag monitor's view of Kafka, which `/readyz` and `exnet_ready` include."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import NotCoordinatorError

import exnet.monitor
from exnet.metrics import Metrics
from exnet.monitor import LagMonitor, PartitionLag
from exnet.runner import initialize
from tests.conftest import SettingsFactory, wait_until

#: Nothing listens there.
CLOSED_BOOTSTRAP = "127.0.0.1:1"
#: Seconds to wait for the monitor's reads (a failed one takes about 30 s).
TIMEOUT_S = 60.0


def test_a_kafka_that_does_not_answer_is_told(settings_factory: SettingsFactory) -> None:
    """An operator stopped the broker under `exnet up`: its readiness said "ready"."""
    monitor = LagMonitor(
        settings_factory(kafka_bootstrap=CLOSED_BOOTSTRAP), Metrics(), interval=0.1
    )
    assert not monitor.kafka_unreachable  # not known before a read failed
    monitor.start()
    try:
        wait_until(lambda: monitor.kafka_unreachable, "the failed reads told", TIMEOUT_S, 0.05)
    finally:
        monitor.stop()
        monitor.join(timeout=60)


@pytest.mark.kafka
def test_a_kafka_that_answers_again_is_told(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    initialize(settings, clickhouse=False)  # the topics whose lag it reads
    monitor = LagMonitor(settings, Metrics(), interval=0.1)
    monitor.kafka_unreachable = True  # as after the broker's restart
    monitor.start()
    try:
        wait_until(
            lambda: not monitor.kafka_unreachable, "a read that worked told", TIMEOUT_S, 0.05
        )
    finally:
        monitor.stop()
        monitor.join(timeout=60)


def test_reads_after_a_failed_one_use_new_clients(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a broker's loss moved the streams group, kafka-python's admin client kept
    asking its old coordinator (NotCoordinatorError) for good: `/readyz` said 503 and
    `exnet up --drain` never ended, while every event was written."""
    made: list[Any] = []

    class Progress:
        def __init__(self, settings: Any) -> None:
            self.stale = not made  # the first clients hold the old coordinator
            self.closed = False
            made.append(self)

        def lag(self) -> list[PartitionLag]:
            if self.stale:
                raise NotCoordinatorError("OffsetFetchResponse failed")
            return [PartitionLag("g", "t", 0, 5, 5)]

        def drained(self) -> bool:
            return True

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(exnet.monitor, "PipelineProgress", Progress)
    drained: list[bool] = []
    monitor = LagMonitor(
        settings_factory(), Metrics(), interval=0.05, on_drained=lambda: drained.append(True)
    )
    monitor.start()
    try:
        wait_until(lambda: bool(drained), "the drain seen with new clients", TIMEOUT_S, 0.05)
    finally:
        monitor.stop()
        monitor.join(timeout=60)
    assert made[0].closed and not monitor.kafka_unreachable
