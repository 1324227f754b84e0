"""The lag monitor's view of Kafka, which `/readyz` and `exnet_ready` include."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka.errors import KafkaConnectionError, NotCoordinatorError

import exnet.monitor
from exnet.metrics import Metrics
from exnet.monitor import LagMonitor, PartitionLag
from exnet.runner import initialize
from tests.conftest import SettingsFactory, wait_until

#: Nothing listens there.
CLOSED_BOOTSTRAP = "127.0.0.1:1"
#: Seconds to wait for the monitor's reads (a failed one takes about 30 s).
TIMEOUT_S = 60.0
#: Seconds to wait for it to call Kafka unreachable: two failed reads.
UNREACHABLE_TIMEOUT_S = 2 * TIMEOUT_S


def test_a_kafka_that_does_not_answer_is_told(settings_factory: SettingsFactory) -> None:
    """An operator stopped the broker under `exnet up`: its readiness said "ready"."""
    monitor = LagMonitor(
        settings_factory(kafka_bootstrap=CLOSED_BOOTSTRAP), Metrics(), interval=0.1
    )
    assert not monitor.kafka_unreachable  # not known before a read failed
    monitor.start()
    try:
        wait_until(
            lambda: monitor.kafka_unreachable,
            "the failed reads told",
            UNREACHABLE_TIMEOUT_S,
            0.05,
        )
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

        def under_replicated(self) -> int:
            return 3

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(exnet.monitor, "PipelineProgress", Progress)
    drained: list[bool] = []
    metrics = Metrics()
    monitor = LagMonitor(
        settings_factory(), metrics, interval=0.05, on_drained=lambda: drained.append(True)
    )
    monitor.start()
    try:
        wait_until(lambda: bool(drained), "the drain seen with new clients", TIMEOUT_S, 0.05)
    finally:
        monitor.stop()
        monitor.join(timeout=60)
    assert made[0].closed and not monitor.kafka_unreachable
    assert metrics.kafka_under_replicated._value.get() == 3  # read with the lag


def _watch(
    settings_factory: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    failing: Callable[[], bool],
    reads: int,
) -> list[tuple[float, bool]]:
    """(time, kafka_unreachable) before each of ``reads`` lag reads, which fail while
    ``failing()`` says so, then after the last."""
    seen: list[tuple[float, bool]] = []
    monitor = LagMonitor(settings_factory(), Metrics(), interval=0.02)

    class Progress:
        def __init__(self, settings: Any) -> None:
            pass

        def lag(self) -> list[PartitionLag]:
            seen.append((time.monotonic(), monitor.kafka_unreachable))
            if failing():
                raise KafkaConnectionError("111 ECONNREFUSED")
            return [PartitionLag("g", "t", 0, 5, 5)]

        def under_replicated(self) -> int:
            return 0

        def close(self) -> None:
            pass

    monkeypatch.setattr(exnet.monitor, "PipelineProgress", Progress)
    monitor.start()
    try:
        wait_until(lambda: len(seen) >= reads, f"{reads} reads", TIMEOUT_S, 0.01)
    finally:
        monitor.stop()
        monitor.join(timeout=60)
    return [*seen, (time.monotonic(), monitor.kafka_unreachable)]


def test_reads_failing_for_moments_leave_the_process_ready(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One broker of three stopping (kill -9 or a clean stop, the other two serving the
    pipeline) failed the monitor's reads twice over about 4 s: `/readyz` said 503 for 5 s
    each time, as a rolling restart of the brokers would say for each broker."""
    monkeypatch.setattr(exnet.monitor, "UNREACHABLE_AFTER_S", 0.5)
    calls = iter(range(1_000))
    # The 3rd to 6th reads fail (about 0.1 s), the rest work.
    seen = _watch(settings_factory, monkeypatch, lambda: 2 <= next(calls) < 6, reads=12)
    assert not any(unreachable for _, unreachable in seen)


def test_reads_failing_for_long_make_the_process_unready_and_ready_again(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exnet.monitor, "UNREACHABLE_AFTER_S", 0.5)
    started = time.monotonic()
    # Failing for the first 1.5 s, then working.
    seen = _watch(
        settings_factory, monkeypatch, lambda: time.monotonic() - started < 1.5, reads=100
    )
    told = [at - started for at, unreachable in seen if unreachable]
    assert told, "never told unreachable"
    assert 0.5 <= told[0] < 1.5 + 0.1  # after the grace, while failing
    assert not seen[-1][1]  # a read that worked told
