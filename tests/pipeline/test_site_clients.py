"""A site's own Kafka client may compress its batches with any codec Kafka knows.

exnet's producers compress nothing, but nothing makes a site's client do the
same: the Java client, librdkafka and the Go clients offer gzip, snappy, lz4
and zstd, and the broker keeps a topic's batches as the producer compressed
them. The stream worker read none but gzip until aiokafka's codec library
(cramjam) came with the platform: one lz4 batch stopped it with
``UnsupportedCodecError``.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from contracts.topics import Topic
from tests.pipeline.events import EventMaker
from tests.pipeline.harness import Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

#: Every codec Kafka's record batches may carry.
CODECS = ("gzip", "snappy", "lz4", "zstd")
#: Events per codec, all in one batch per partition.
PER_CODEC = 40


async def _publish(pipeline: Pipeline, codec: str, events: list[dict[str, object]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=pipeline.settings.kafka_bootstrap,
        compression_type=codec,
        linger_ms=50,
        acks="all",
    )
    await producer.start()
    try:
        sent = [
            await producer.send(
                pipeline.topic(Topic.SESSION),
                orjson.dumps(event),
                key=str(event["participant_id"]).encode(),
            )
            for event in events
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def test_batches_compressed_with_every_codec_are_all_accepted(pipeline: Pipeline) -> None:
    pipeline.init()
    make = EventMaker(seed=11)
    for codec in CODECS:
        events = [
            make.session(f"P-c0dec{n:05d}", "N01-S01", 1, day=n % 7) for n in range(PER_CODEC)
        ]
        asyncio.run(_publish(pipeline, codec, events))
    log = pipeline.drain()
    assert "UnsupportedCodecError" not in log
    assert pipeline.scalar("SELECT count() FROM session_events FINAL") == len(CODECS) * PER_CODEC
    assert pipeline.scalar("SELECT count() FROM rejected_events") == 0
