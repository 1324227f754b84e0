"""The lag monitor's view of Kafka, which `/readyz` and `exnet_ready` include."""

from __future__ import annotations

import pytest

from exnet.metrics import Metrics
from exnet.monitor import LagMonitor
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
