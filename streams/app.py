"""The Faust application: built by :func:`create_app`, agents registered explicitly.

Two stages, each a Faust agent over batches (``take_events``):

1. ``validate`` reads the four input topics (keyed by participant_id), runs
   every message through the contracts' :class:`~contracts.Validator`
   and sends the event, re-keyed by ``event_id``, to ``exnet.validated`` — or
   the original bytes to ``exnet.deadletter``.
2. ``deduplicate`` reads ``exnet.validated``; all copies of an event_id meet
   in one partition, where a table remembers each accepted event's content
   digest and origin. New events and replays go on to ``exnet.accepted``;
   exact duplicates are counted and dropped; conflicting ones are rejected.

Offsets: Faust commits an input offset only after the batch was processed and
the producer flushed (Faust flushes before every commit), so everything a batch
produced is in Kafka before its input is committed: at-least-once, made exact
downstream by the dedup table's replay rule and the sink's idempotent writes.
The app's transport (``streams/transport.py``) keeps Faust from committing past
a message it skipped during a rebalance on a partition with nothing committed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import faust
import orjson
from faust.transport.drivers import TRANSPORTS

from contracts.registry import load_registry
from contracts.topics import INPUT_TOPICS, Topic, topic_name
from contracts.validation import Accepted, Origin, Validator
from contracts.wire import (
    OutMessage,
    ValidatedRecord,
    conflict_message,
    deadletter_message,
    pack_accepted,
    pack_validated,
    packed_headers,
    unpack_validated,
    validated_record,
)
from exnet.metrics import Metrics
from exnet.settings import Settings
from streams.dedup import Decision, Seen, decide
from streams.fatal import EXIT_INVALID_RATIO, die
from streams.guard import InvalidRatioExceeded, InvalidRatioGuard
from streams.sender import BatchSender, Outgoing
from streams.transport import SCHEME, register

__all__ = ["DEDUP_TABLE", "create_app", "streams_group"]

log = logging.getLogger(__name__)

#: Name of the dedup table; its changelog topic is ``<app id>-dedup-changelog``.
DEDUP_TABLE = "dedup"
#: Seconds between Faust's offset commits: bounds replay after a crash and drain latency.
COMMIT_INTERVAL_S = 1.0
#: Bytes of records per packed internal message (well under the topics' 2 MiB message limit
#: and the producer's batch size).
PACK_MAX_BYTES = 256 * 1024
#: Bytes a record adds to a packed message beyond its event and original (ids, origin).
PACK_OVERHEAD_BYTES = 160
#: Bytes per producer batch (per partition): large batches amortise each round trip.
PRODUCER_BATCH_BYTES = 512 * 1024
#: Seconds without a heartbeat before the group drops a worker (Kafka's minimum is 6).
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_S = 1.0


def streams_group(settings: Settings) -> str:
    """The stream workers' consumer group (also the Faust app id)."""
    return f"{settings.topic_prefix}{settings.consumer_group}-streams"


def changelog_topic(settings: Settings) -> str:
    return f"{streams_group(settings)}-{DEDUP_TABLE}-changelog"


def create_app(settings: Settings, metrics: Metrics) -> faust.App:
    """Build the stream processors' Faust app from ``settings`` (nothing global)."""
    names = {topic: topic_name(topic, settings.topic_prefix) for topic in Topic}
    register(TRANSPORTS)
    app = faust.App(
        streams_group(settings),
        # Our transport: Faust's aiokafka one, safe on partitions with no committed offset.
        broker=[f"{SCHEME}://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        store="memory://",
        datadir=str(settings.var_dir / "faust"),  # not the working directory
        autodiscover=False,
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,  # the dedup changelog; `exnet init` creates the rest
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=COMMIT_INTERVAL_S,
        table_standby_replicas=0,  # recovery from the changelog is fast; spare the CPU
        producer_acks=-1,
        producer_linger_ms=5,
        # Packed internal messages are up to PACK_MAX_BYTES; aiokafka's 16 KiB default
        # batch could not hold one.
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        producer_max_request_size=4 * PRODUCER_BATCH_BYTES,
        stream_buffer_maxsize=4 * settings.stream_batch_max,
        broker_max_poll_records=settings.stream_batch_max,
        processing_guarantee="at_least_once",
        # Bytes in, bytes out everywhere: table recovery decodes the changelog with
        # the app's default codecs, whatever the table's own schema says.
        key_serializer="raw",
        value_serializer="raw",
        # A worker killed with -9 holds its partitions until the session times out:
        # keep that short so the group moves on within seconds.
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=HEARTBEAT_S,
    )
    validator = Validator(
        load_registry(settings.registry_path),
        settings.topic_prefix,
    )
    guard = InvalidRatioGuard(settings.dlq_max_ratio, settings.dlq_window)
    inputs = app.topic(
        *(names[topic] for topic in INPUT_TOPICS), key_serializer="raw", value_serializer="raw"
    )
    validated = app.topic(names[Topic.VALIDATED], key_serializer="raw", value_serializer="raw")
    seen = app.Table(
        DEDUP_TABLE,
        default=None,
        partitions=settings.partitions,
        # Named and typed explicitly: Faust would derive JSON codecs from `bytes`.
        changelog_topic=app.topic(
            changelog_topic(settings),
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            compacting=True,
        ),
    )
    changelog = changelog_topic(settings)
    batch_max, batch_s = settings.stream_batch_max, settings.stream_batch_seconds
    site_last_event: dict[tuple[str, str], float] = {}  # the gauge's values, to keep the newest

    sender: BatchSender | None = None

    def producer() -> BatchSender:
        # The transport's aiokafka producer directly: no Faust serialisation, no
        # attachments; Faust flushes it before committing the input offsets.
        nonlocal sender
        if sender is None:
            # Faust's own aiokafka producer (its transport keeps it private).
            sender = BatchSender(cast(Any, app.producer)._ensure_producer())  # noqa: SLF001
        return sender

    async def send(messages: list[OutMessage], more: Sequence[Outgoing] = ()) -> None:
        await producer().send_all(
            [*((names[m.topic], None, m.key, m.value, m.headers) for m in messages), *more]
        )

    async def validate_batch(events: Sequence[Any]) -> None:
        started = time.perf_counter()
        now = datetime.now(UTC)
        received: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        dead_letters: list[OutMessage] = []
        # Every copy of an event_id goes to one partition of exnet.validated.
        by_partition: dict[int, list[ValidatedRecord]] = defaultdict(list)
        validated_topic = names[Topic.VALIDATED]
        for event in events:
            message = event.message
            received[message.topic] += 1
            origin = Origin(message.topic, message.partition, message.offset)
            outcome = validator.validate_message(message.value, message.key, origin, now)
            timestamp_ms = _timestamp_ms(message.timestamp)
            if isinstance(outcome, Accepted):
                record = validated_record(outcome, message.value, timestamp_ms)
                partition = await producer().partition_for(validated_topic, record.event_id)
                by_partition[partition].append(record)
            else:
                rejected[outcome.reason.value] += 1
                dead_letters.append(
                    deadletter_message(outcome, message.value, message.key, now, timestamp_ms)
                )
        guard.observe(len(events), sum(rejected.values()))
        await send(dead_letters, _packed(validated_topic, by_partition, pack_validated))
        for topic, count in received.items():
            metrics.events_received.labels(topic=topic).inc(count)
        for reason, count in rejected.items():
            metrics.events_rejected.labels(reason=reason).inc(count)
        metrics.stream_batch_seconds.labels(stage="validate").observe(time.perf_counter() - started)

    async def deduplicate_batch(events: Sequence[Any]) -> None:
        started = time.perf_counter()
        now = datetime.now(UTC)
        accepted: Counter[str] = Counter()
        duplicates: Counter[str] = Counter()
        per_site: Counter[tuple[str, str]] = Counter()
        newest: dict[tuple[str, str], float] = {}
        conflicts: list[OutMessage] = []
        table_writes: list[Outgoing] = []
        onward: dict[int, list[ValidatedRecord]] = defaultdict(list)
        for event in events:
            message = event.message
            for record in unpack_validated(message.value):
                key = record.event_id.encode()
                incoming = Seen(record.fingerprint, record.source)
                prior_value = seen.data.get(key)
                prior = Seen.decode(prior_value) if prior_value is not None else None
                decision = decide(prior, incoming)
                if decision is Decision.NEW:
                    encoded = incoming.encode()
                    # Into the store, and into the changelog partition of *this* message
                    # (Faust's `table[key] = ...` would use the batch's last event and
                    # its send_soon buffer, which stalls all input while it drains).
                    seen.data[key] = encoded
                    table_writes.append((changelog, message.partition, key, encoded, []))
                if decision in (Decision.NEW, Decision.REPLAY):
                    accepted[record.event_type] += 1
                    onward[message.partition].append(record)
                    site, occurred = _site_and_time(record.event)
                    per_site[site] += 1
                    if occurred > newest.get(site, 0.0):
                        newest[site] = occurred
                elif decision is Decision.DUPLICATE:
                    duplicates[record.event_type] += 1
                else:
                    assert prior is not None  # noqa: S101  # a conflict has a prior by definition
                    conflicts.append(conflict_message(record, prior.origin, now))
        await send(
            conflicts,
            [*table_writes, *_packed(names[Topic.ACCEPTED], onward, pack_accepted)],
        )
        for event_type, count in accepted.items():
            metrics.events_accepted.labels(type=event_type).inc(count)
        for event_type, count in duplicates.items():
            metrics.events_duplicate.labels(type=event_type).inc(count)
        if conflicts:
            metrics.events_rejected.labels(reason="conflicting_duplicate").inc(len(conflicts))
        wall = time.time()
        for (node_id, site_id), count in per_site.items():
            metrics.site_events_accepted.labels(node_id=node_id, site_id=site_id).inc(count)
            metrics.site_last_received.labels(node_id=node_id, site_id=site_id).set(wall)
        for site, occurred in newest.items():
            if occurred > site_last_event.get(site, 0.0):
                site_last_event[site] = occurred
                metrics.site_last_event.labels(node_id=site[0], site_id=site[1]).set(occurred)
        metrics.stream_batch_seconds.labels(stage="deduplicate").observe(
            time.perf_counter() - started
        )

    async def validate_agent(stream: Any) -> None:
        async for events in stream.take_events(batch_max, batch_s):
            try:
                await validate_batch(events)
            except InvalidRatioExceeded as exc:
                die(exc, EXIT_INVALID_RATIO)
            except Exception as exc:  # a bug: stop before the batch is acknowledged
                die(exc)

    async def deduplicate_agent(stream: Any) -> None:
        async for events in stream.take_events(batch_max, batch_s):
            try:
                await deduplicate_batch(events)
            except Exception as exc:  # a bug: stop before the batch is acknowledged
                die(exc)

    app.agent(inputs, name="validate")(validate_agent)
    app.agent(validated, name="deduplicate")(deduplicate_agent)
    return app


def _packed(
    topic: str,
    by_partition: dict[int, list[ValidatedRecord]],
    pack: Callable[[Sequence[ValidatedRecord]], bytes],
) -> list[Outgoing]:
    """Packed messages for ``topic``: each partition's records, in order, in bounded chunks."""
    messages: list[Outgoing] = []
    for partition, records in by_partition.items():
        chunk: list[ValidatedRecord] = []
        size = 0
        for record in records:
            chunk.append(record)
            size += len(record.event) + len(record.original) + PACK_OVERHEAD_BYTES
            if size >= PACK_MAX_BYTES:
                messages.append((topic, partition, None, pack(chunk), packed_headers()))
                chunk, size = [], 0
        if chunk:
            messages.append((topic, partition, None, pack(chunk), packed_headers()))
    return messages


def _site_and_time(canonical: str) -> tuple[tuple[str, str], float]:
    """(node_id, site_id) and occurred_at (unix seconds) of an accepted event's canonical JSON."""
    event = orjson.loads(canonical)
    return (event["node_id"], event["site_id"]), datetime.fromisoformat(
        event["occurred_at"]
    ).timestamp()


def _timestamp_ms(timestamp: float | None) -> int | None:
    """Faust gives the Kafka timestamp in seconds (float); headers carry milliseconds."""
    return round(timestamp * 1000) if timestamp else None
