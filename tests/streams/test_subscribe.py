"""The stream worker's consumer subscribes only once its topics' metadata has come
(a real broker)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaConsumer

from streams import transport
from streams.transport import ConsumerThread
from tests.conftest import TopicFactory

pytestmark = pytest.mark.kafka

PARTITIONS = 3


class _Thread:
    """What :meth:`ConsumerThread._await_metadata` uses of Faust's consumer thread."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.should_stop = False

    def _ensure_consumer(self) -> AIOKafkaConsumer:
        return self._consumer


async def _await_metadata(thread: _Thread, topics: set[str]) -> None:
    await ConsumerThread._await_metadata(cast(Any, thread), topics)


def test_the_wait_ends_when_a_topic_created_after_it_began_has_partitions(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = f"test-{uuid4().hex}"

    async def run() -> tuple[bool, set[int] | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
        await consumer.start()
        try:
            wait = asyncio.ensure_future(_await_metadata(_Thread(consumer), {topic}))
            await asyncio.sleep(1.0)
            waited = not wait.done()
            await asyncio.to_thread(topic_factory, topic, partitions=PARTITIONS)
            await asyncio.wait_for(wait, timeout=10.0)
            return waited, consumer._client.cluster.partitions_for_topic(topic)
        finally:
            await consumer.stop()

    waited, partitions = asyncio.run(run())
    assert waited  # the topic did not exist: no join yet
    assert partitions == set(range(PARTITIONS))


def test_the_wait_gives_up_with_a_warning_naming_the_missing_topic(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(transport, "METADATA_WAIT_S", 0.5)
    topic = f"test-never-{uuid4().hex}"

    async def run() -> float:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
        await consumer.start()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(_await_metadata(_Thread(consumer), {topic}), timeout=10.0)
            return loop.time() - started
        finally:
            await consumer.stop()

    with caplog.at_level(logging.WARNING, logger="streams.transport"):
        took = asyncio.run(run())
    assert 0.5 <= took < 5.0
    assert any(topic in record.getMessage() for record in caplog.records)


def test_the_wait_ends_when_the_thread_stops(kafka_bootstrap: str) -> None:
    async def run() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
        await consumer.start()
        try:
            thread = _Thread(consumer)
            wait = asyncio.ensure_future(_await_metadata(thread, {f"test-never-{uuid4().hex}"}))
            await asyncio.sleep(0.5)
            assert not wait.done()
            thread.should_stop = True
            await asyncio.wait_for(wait, timeout=2.0)
        finally:
            await consumer.stop()

    asyncio.run(run())
