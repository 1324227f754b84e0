"""What a site's own Kafka client may do that `exnet publish` never does.

A site may publish with any client (SPEC §1 fixes the message, not the client):
the Java client, librdkafka and the Go clients compress batches with gzip,
snappy, lz4 or zstd, and may write in transactions, committed or aborted. The
broker keeps a topic's batches as the producer wrote them.

- The stream worker read no codec but gzip until aiokafka's codec library
  (cramjam) came with the platform: one lz4 batch stopped it with
  ``UnsupportedCodecError``.
- It read uncommitted: the events of an aborted transaction, which the site
  took back, were accepted.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer

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


def test_a_transaction_the_site_aborted_is_not_read(pipeline: Pipeline) -> None:
    pipeline.init()
    make = EventMaker(seed=12)
    producer = KafkaProducer(
        bootstrap_servers=pipeline.settings.kafka_bootstrap,
        transactional_id=f"{pipeline.settings.topic_prefix}site-tx",
        enable_idempotence=True,
    )
    topic = pipeline.topic(Topic.SESSION)
    committed: list[str] = []
    aborted: list[str] = []
    try:
        producer.init_transactions()
        for outcome, kept in (("commit", committed), ("abort", aborted), ("commit", committed)):
            producer.begin_transaction()
            for n in range(PER_CODEC):
                event = make.session(f"P-7a{len(kept):03d}{n:05d}", "N01-S01", 1, day=n % 7)
                producer.send(topic, orjson.dumps(event), key=str(event["participant_id"]).encode())
                kept.append(event["event_id"])
            producer.flush()  # in the log: an abort must take back records Kafka holds
            if outcome == "commit":
                producer.commit_transaction()
            else:
                producer.abort_transaction()
    finally:
        producer.close()
    pipeline.drain()
    stored = {row["event_id"] for row in pipeline.rows("SELECT event_id FROM session_events FINAL")}
    assert {str(e) for e in stored} == set(committed)
    assert pipeline.scalar("SELECT count() FROM rejected_events") == 0
