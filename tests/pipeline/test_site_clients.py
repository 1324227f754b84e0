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
import hashlib
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from contracts import headers as H
from contracts.topics import Topic
from contracts.wire import DEADLETTER_MAX_ORIGINAL
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


def _transactional_producer(pipeline: Pipeline, name: str) -> KafkaProducer:
    """A site's own transactional producer (kafka-python), its transactions initialised."""
    producer = KafkaProducer(
        bootstrap_servers=pipeline.settings.kafka_bootstrap,
        transactional_id=f"{pipeline.settings.topic_prefix}{name}",
        enable_idempotence=True,
    )
    try:
        producer.init_transactions()
    except BaseException:
        producer.close()
        raise
    return producer


def test_a_transaction_the_site_aborted_is_not_read(pipeline: Pipeline) -> None:
    pipeline.init()
    make = EventMaker(seed=12)
    producer = _transactional_producer(pipeline, "site-tx")
    topic = pipeline.topic(Topic.SESSION)
    committed: list[str] = []
    aborted: list[str] = []
    try:
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


def test_a_drain_ends_when_a_partition_ends_in_an_aborted_transaction(pipeline: Pipeline) -> None:
    # Nothing but an aborted record and its marker: the worker, new to the partition,
    # skips both and commits past them; before, it never committed a partition it had
    # delivered nothing from, and `--drain` waited on it for good.
    pipeline.init()
    make = EventMaker(seed=14)
    producer = _transactional_producer(pipeline, "site-abort")
    try:
        producer.begin_transaction()
        event = make.assessment("P-ab0a000001", "N01-S01", "PHQ9", 20, 0)
        producer.send(
            pipeline.topic(Topic.ASSESSMENT),
            orjson.dumps(event),
            key=b"P-ab0a000001",
            partition=1,
        )
        producer.flush()
        producer.abort_transaction()
    finally:
        producer.close()
    pipeline.drain(timeout=90)
    assert pipeline.scalar("SELECT count() FROM assessment_events") == 0
    assert pipeline.scalar("SELECT count() FROM rejected_events") == 0


def test_a_compressed_message_larger_than_the_dead_letter_topic_takes_is_rejected(
    pipeline: Pipeline,
) -> None:
    # Compressed, 3 MB of one letter is a few hundred bytes: the broker takes it under
    # the input topic's 1 MiB limit. Sent whole to exnet.deadletter (2 MiB), every
    # delivery failed and the stream worker stopped, at every start, on this message.
    pipeline.init()
    event = EventMaker(seed=13).session("P-b1b1000001", "N01-S01", 1, day=1)
    original = orjson.dumps({**event, "note": "a" * 3_000_000})

    async def publish() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=pipeline.settings.kafka_bootstrap,
            compression_type="zstd",
            max_request_size=8 * 1024 * 1024,
            acks="all",
        )
        await producer.start()
        try:
            topic = pipeline.topic(Topic.SESSION)
            await producer.send_and_wait(topic, original, key=b"P-b1b1000001")
        finally:
            await producer.stop()

    asyncio.run(publish())
    pipeline.drain()
    (row,) = pipeline.rows("SELECT reason, payload_sha256 FROM rejected_events FINAL")
    assert row == {"reason": "too_large", "payload_sha256": hashlib.sha256(original).hexdigest()}
    (dead,) = _read_all(pipeline, Topic.DEADLETTER)
    headers = dict(dead.headers)
    assert dead.value == original[:DEADLETTER_MAX_ORIGINAL]
    assert headers[H.ORIGINAL_LENGTH] == str(len(original)).encode()
    assert headers[H.REASON] == b"too_large"


def _read_all(pipeline: Pipeline, topic: Topic) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=pipeline.settings.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    try:
        name = pipeline.topic(topic)
        partitions = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        records: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
