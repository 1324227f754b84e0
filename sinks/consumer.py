"""The sink: accepted events, rejections and the stream-written views' rows from Kafka,
in batches, into ClickHouse.

A plain kafka-python consumer with manual commits (not Faust) so that the one
guarantee that matters is explicit: an offset is committed only after
ClickHouse acknowledged every row before it.

    poll -> rows (pure, ``rows.py``) -> batch (size and time bounds)
         -> write each table (token = group:table:partition ranges; retried with backoff)
         -> commit offsets

Crash anywhere: the uncommitted messages are read again and written again;
ReplacingMergeTree keyed on ``event_id`` (facts), on the source offset
(rejections) or on the row's key and version (views) keeps one row of each,
and an identical replayed batch is dropped by its insert deduplication token.

A message of ``exnet.views`` whose ``exnet-table`` header names no view table,
or whose value is not a row of that table (:func:`~sinks.rows.view_row`), is a
bug of its producer: it is logged at ERROR, counted
(``exnet_sink_view_rows_refused_total{reason}``) and skipped, its offset
committed with the batch. Written anyway it would fail its insert, which is
retried forever, and stop every table's writes; written elsewhere it would
corrupt a table. The stream sends every row again after a rebalance, and
``exnet verify`` (and ``exnet_view_rows_differing``) shows a row that stays
missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential,
)

from contracts.errors import ExnetError
from contracts.topics import Topic, topic_name
from contracts.wire import read_route
from exnet.metrics import Metrics
from exnet.settings import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES, Settings
from sinks.errors import ClickHouseUnavailable
from sinks.rows import (
    FACT_COLUMNS,
    FACT_TABLES,
    REJECTED_COLUMNS,
    REJECTED_TABLE,
    VIEW_COLUMNS,
    RefusedViewRow,
    rejected_row,
    view_row,
)
from sinks.writer import BatchWriter

__all__ = ["ROW_TABLES", "SINK_TABLES", "SinkConsumer", "SinkStopped", "sink_group"]

log = logging.getLogger(__name__)

#: Every table the sink writes, with its insert columns.
SINK_TABLES: dict[str, Sequence[str]] = {
    **{FACT_TABLES[t]: columns for t, columns in FACT_COLUMNS.items()},
    REJECTED_TABLE: REJECTED_COLUMNS,
    **VIEW_COLUMNS,
}
#: The tables written as rows of values (:meth:`BatchWriter.write`); the fact tables
#: take the accepted messages' JSON (:meth:`BatchWriter.write_json`).
ROW_TABLES: dict[str, Sequence[str]] = {REJECTED_TABLE: REJECTED_COLUMNS}
#: Longest wait between ClickHouse retries, seconds.
MAX_BACKOFF_S = 30.0
#: Group session of the sink (ms): how long a dead sink holds its partitions.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_MS = 1_000
#: Longest wait between polls while no Kafka broker answers the sink, seconds.
OUTAGE_BACKOFF_MAX_S = 5.0
#: How long one poll waits for messages, ms: bounds the reaction to a stop request.
POLL_TIMEOUT_MS = 100
#: How often the sink refreshes topic metadata, ms: a topic created after it
#: subscribed (``exnet init`` racing ``exnet up``) is assigned within this time
#: (kafka-python's default is five minutes).
METADATA_MAX_AGE_MS = 2_000


def sink_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}{settings.consumer_group}-sink"


class SinkStopped(ExnetError):
    """Asked to stop while ClickHouse was failing: the batch stays uncommitted in Kafka."""


@dataclass
class _Batch:
    #: Rejections: table -> rows of values.
    rows: dict[str, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    #: Facts: table -> rows as JSON objects (the accepted messages' values).
    json_rows: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    #: Views: table -> rows as JSON objects, every column (the view messages' values).
    view_rows: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    #: Refused view messages: reason -> their count, and the first one's place and detail.
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: partition -> (first offset, last offset) in this batch.
    ranges: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    #: source Kafka timestamps (ms) of the accepted events, for the latency histogram.
    source_ms: list[int] = field(default_factory=list)
    #: Messages in the batch (written or refused): what the size bound counts.
    size: int = 0
    started: float = 0.0

    def add(self, table: str, row: list[Any] | bytes, tp: TopicPartition, offset: int) -> None:
        if isinstance(row, bytes):
            self.json_rows[table].append(row)
        else:
            self.rows[table].append(row)
        self.consumed(tp, offset)

    def add_view(self, table: str, row: bytes, tp: TopicPartition, offset: int) -> None:
        self.view_rows[table].append(row)
        self.consumed(tp, offset)

    def refuse(self, refusal: RefusedViewRow, tp: TopicPartition, offset: int) -> None:
        """A message not to write, whose offset is committed with the batch."""
        count, first = self.refused.get(refusal.reason, (0, ""))
        where = f"{tp.topic}/{tp.partition} offset {offset}: {refusal.detail}"
        self.refused[refusal.reason] = (count + 1, first or where)
        self.consumed(tp, offset)

    def consumed(self, tp: TopicPartition, offset: int) -> None:
        if self.size == 0:
            self.started = time.monotonic()
        first, _ = self.ranges.get(tp, (offset, offset))
        self.ranges[tp] = (first, offset)
        self.size += 1

    def token(self, group: str, table: str) -> str:
        spans = ",".join(
            f"{tp.topic}/{tp.partition}/{first}-{last}"
            for tp, (first, last) in sorted(self.ranges.items())
        )
        return f"{group}:{table}:{spans}"


class SinkConsumer:
    """Consumes ``exnet.accepted``, ``exnet.deadletter`` and ``exnet.views`` and writes
    them in batches.

    Run it in its own thread (:meth:`run`); :meth:`stop` asks it to flush what
    it consumed, commit, and return.
    """

    def __init__(self, settings: Settings, writer: BatchWriter, metrics: Metrics) -> None:
        self._settings = settings
        self._writer = writer
        self._metrics = metrics
        for table in SINK_TABLES:  # every table's series from the start, at 0
            metrics.sink_rows_written.labels(table=table)
            metrics.sink_write_errors.labels(table=table)
        self._group = sink_group(settings)
        self._accepted = topic_name(Topic.ACCEPTED, settings.topic_prefix)
        self._deadletter = topic_name(Topic.DEADLETTER, settings.topic_prefix)
        self._views = topic_name(Topic.VIEWS, settings.topic_prefix)
        self._stop = threading.Event()
        self._batch = _Batch()
        self._consumer: KafkaConsumer | None = None
        self.flushed = threading.Event()  # set after each successful commit (tests, drain)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Consume until stopped; flush and commit before returning."""
        consumer = KafkaConsumer(
            **self._settings.kafka_client_config(),
            group_id=self._group,
            client_id=f"{self._group}-{threading.get_ident()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._settings.sink_batch_rows,
            # What one fetch may bring (decoded records stay in memory until polled):
            # 64 MB fetches lifted the peak resident set of `exnet up` by ~100 MB.
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # A sink killed with -9 holds its partitions until its session expires;
            # kafka-python's 45 s default also outlasts its own 30 s JoinGroup timeout.
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            fetch_min_bytes=FETCH_MIN_BYTES,
        )
        self._consumer = consumer
        consumer.subscribe(
            [self._accepted, self._deadletter, self._views], listener=_RewindOnRevoke(self)
        )
        _await_subscribed_metadata(consumer, self._stop)
        max_rows = self._settings.sink_batch_rows
        max_age = self._settings.sink_batch_seconds
        outage = _Outage(self._stop)
        try:
            while not self._stop.is_set():
                try:
                    polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=max_rows)
                except KafkaError as exc:
                    # Kafka away for now (no broker answers, a coordinator lost), not this
                    # process refused (a login: SaslAuthenticationFailedError).
                    if not exc.retriable:
                        raise
                    outage.wait(exc)  # the batch waits too; a rebalance meanwhile rewinds it
                    continue
                if outage.ongoing and _coordinator_known(consumer):
                    outage.over()
                _finish_lost_join(consumer)
                for tp, records in polled.items():
                    self._add(tp, records)
                batch = self._batch
                if batch.size and (
                    batch.size >= max_rows or time.monotonic() - batch.started >= max_age
                ):
                    self.flush()
            self.flush()
        finally:
            consumer.close(autocommit=False)
            self._consumer = None

    def _add(self, tp: TopicPartition, records: Iterable[Any]) -> None:
        ingested_at = datetime.now(UTC)
        batch = self._batch
        for record in records:
            if tp.topic == self._deadletter:
                batch.add(
                    REJECTED_TABLE,
                    rejected_row(record.value, dict(record.headers or ()), ingested_at),
                    tp,
                    record.offset,
                )
                continue
            if tp.topic == self._views:
                checked = view_row(dict(record.headers or ()), record.value)
                if isinstance(checked, RefusedViewRow):
                    batch.refuse(checked, tp, record.offset)
                else:
                    batch.add_view(checked.table, checked.value, tp, record.offset)
                continue
            route = read_route(record.headers)
            batch.add(FACT_TABLES[route.event_type], record.value, tp, record.offset)
            if route.timestamp_ms:
                batch.source_ms.append(route.timestamp_ms)

    def flush(self) -> None:
        """Write the batch to ClickHouse (retrying), then commit its offsets."""
        batch = self._batch
        if not batch.ranges:
            return
        started = time.perf_counter()
        for table, json_rows in batch.json_rows.items():
            token = batch.token(self._group, table)
            self._write_with_retries(
                table, partial(self._writer.write_json, table, json_rows, token)
            )
        for table, view_rows in batch.view_rows.items():
            token = batch.token(self._group, table)
            write = partial(self._writer.write_json, table, view_rows, token, ingested_at=False)
            self._write_with_retries(table, write)
        for table, rows in batch.rows.items():
            token = batch.token(self._group, table)
            write = partial(self._writer.write, table, SINK_TABLES[table], rows, token)
            self._write_with_retries(table, write)
        written = time.time()
        self._commit({tp: last + 1 for tp, (_, last) in batch.ranges.items()})
        rows_written = 0
        for tables in (batch.json_rows, batch.view_rows, batch.rows):
            for table, written_rows in tables.items():
                self._metrics.sink_rows_written.labels(table=table).inc(len(written_rows))
                rows_written += len(written_rows)
        for reason, (count, first) in batch.refused.items():
            self._metrics.sink_view_rows_refused.labels(reason=reason).inc(count)
            log.error(
                "refused %d message(s) of %s (%s), a bug of the stream that wrote them; "
                "skipped and committed, the first at %s",
                count,
                self._views,
                reason,
                first,
            )
        for source_ms in batch.source_ms:
            self._metrics.end_to_end_seconds.observe(max(0.0, written - source_ms / 1000))
        self._metrics.sink_batch_rows.observe(rows_written)
        self._metrics.sink_batch_seconds.observe(time.perf_counter() - started)
        self._metrics.sink_last_write.set(written)
        self._batch = _Batch()
        self.flushed.set()

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this sink holds now (none before it joined its group)."""
        consumer = self._consumer
        return set(consumer.assignment()) if consumer is not None else set()

    @property
    def pending(self) -> int:
        """Messages read but not yet written and committed."""
        return self._batch.size

    def rewind(self) -> None:
        """Drop the unwritten batch and seek back, so that its messages are read again."""
        consumer = self._consumer
        assigned = consumer.assignment() if consumer is not None else set()
        for tp, (first, _) in self._batch.ranges.items():
            if consumer is not None and tp in assigned:
                consumer.seek(tp, first)
        self._batch = _Batch()

    def _write_with_retries(self, table: str, write: Callable[[], None]) -> None:
        def log_retry(state: RetryCallState) -> None:
            self._metrics.sink_write_errors.labels(table=table).inc()
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            log.warning(
                "ClickHouse write to %s failed (attempt %d), retrying: %s",
                table,
                state.attempt_number,
                error,
            )

        retrying = Retrying(
            retry=retry_if_exception_type(ClickHouseUnavailable),
            wait=wait_exponential(multiplier=0.2, max=MAX_BACKOFF_S),
            stop=stop_when_event_set(self._stop),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            retrying(write)
        except ClickHouseUnavailable as exc:
            raise SinkStopped(
                f"stopped while ClickHouse kept failing; the rows of {table} stay "
                f"uncommitted in Kafka and will be written on the next start: {exc}"
            ) from exc

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None  # noqa: S101  # only called while running
        try:
            consumer.commit(
                {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
            )
        except (CommitFailedError, KafkaError) as exc:
            # The rows are written; after the rebalance they are read and written
            # again, and the tables keep one row per key.
            log.warning("offset commit failed after a successful write (will replay): %s", exc)


class _Outage:
    """The sink's wait while no Kafka broker answers its polls.

    kafka-python 3.0.12 raises a connection error out of ``poll`` when the group
    coordinator's lookup needs metadata and no broker answers: with every broker of
    a 3-node cluster stopped, about 170 s into the outage (2026-12-05; an outside
    check saw 50-80 s), which stopped the writer process and with it `exnet up`.
    The stream worker's aiokafka retries on its own. Here the sink waits and polls
    again (backing off to :data:`OUTAGE_BACKOFF_MAX_S`, a stop cutting the wait
    short), logging the outage's start and end once each: Kafka's clients already
    log every failed connection.
    """

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._since: float | None = None
        self._tries = 0

    def wait(self, exc: KafkaError) -> None:
        if self._since is None:
            self._since = time.monotonic()
            log.warning(
                "Kafka does not answer the sink (%r): polling again until it does; "
                "what is not written yet waits in Kafka",
                exc,
            )
        self._tries += 1
        self._stop.wait(min(OUTAGE_BACKOFF_MAX_S, 0.5 * 2 ** min(self._tries, 8)))

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def over(self) -> None:
        if self._since is not None:
            log.info(
                "Kafka answers the sink again, after %.0f s and %d failed polls",
                time.monotonic() - self._since,
                self._tries,
            )
            self._since = None
            self._tries = 0


def _coordinator_known(consumer: KafkaConsumer) -> bool:
    """Whether the sink's group coordinator is known and connected: Kafka answers. A poll
    that raised nothing does not say so (with no broker it waits out its time and returns
    nothing). Relies on kafka-python's internals, as :func:`_finish_lost_join`."""
    return not consumer._coordinator.coordinator_unknown()  # noqa: SLF001


class _RewindOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped library base
    """Before partitions move, seek back to the unwritten batch's first offsets and drop it.

    kafka-python 3.0 calls this on its IO thread, where a blocking call into the
    consumer (``commit``) raises ``RuntimeError``, so the batch cannot be written
    and committed here. Partitions kept across the rebalance keep their position,
    hence the seek; partitions that move are read by their new owner from the
    last commit. Either way its messages are read and written again after the
    rebalance (the tables keep one row of each).
    """

    def __init__(self, sink: SinkConsumer) -> None:
        self._sink = sink

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked and self._sink.pending:
            log.info("rebalance: %d unwritten messages will be read again", self._sink.pending)
            self._sink.rewind()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("sink assigned %d partitions", len(assigned))


def _await_subscribed_metadata(consumer: KafkaConsumer, stop: threading.Event) -> None:
    """Wait until the consumer holds the subscribed topics' metadata, or ``stop`` is set,
    or the request failed (then the polls go on as kafka-python would).

    Without it, the first poll joins the group before the metadata that
    :meth:`KafkaConsumer.subscribe` asked for arrives: the range assignor logs "No
    partition metadata for topic ..." for each topic, assigns nothing, and the
    metadata's arrival makes the sink join a second time, the join
    :func:`_finish_lost_join` must sometimes rescue. Measured after ``exnet init``:
    three warnings and two joins at every ``exnet up`` before, one join and no
    warning after, the wait about 0.1 s. kafka-python's own wait for it
    (``KafkaConsumer.topics``) has no time limit, and would leave a sink asked to
    stop while Kafka is away deaf to it; this one checks ``stop`` every poll
    timeout. Relies on kafka-python's internals, as the function below.
    """
    cluster = consumer._cluster  # noqa: SLF001  # see the docstring
    update = cluster.request_update()  # the update subscribe() asked for, while pending
    while not stop.is_set():
        try:
            consumer._net.run(consumer._manager.wait_for, update, POLL_TIMEOUT_MS)  # noqa: SLF001
        except KafkaTimeoutError:
            continue
        except KafkaError as exc:
            log.info("joining without the topics' metadata: %r", exc)
        return


def _finish_lost_join(consumer: KafkaConsumer) -> None:
    """Work around a group join that kafka-python 3.0.12 can lose, leaving the sink
    with no partitions for good.

    When a poll's time runs out during a rejoin that a metadata change asked for
    (typically just after the first join, made before the subscribed topics'
    metadata arrived), the join goes on in the background and, as group leader,
    records the new metadata as assigned. The next poll then sees nothing to
    rejoin and never applies the assignment the join brought back: the member
    stays in a rebalance with heartbeats off. Seen in about 1 run in 20 of
    ``exnet up`` right after ``exnet init`` on a loaded machine. Asking for a
    rejoin makes the next poll await the join still in flight, or start a new
    one (one more rebalance of the group). Relies on kafka-python's internals:
    the dependency is pinned to the version read.
    """
    coordinator = consumer._coordinator  # noqa: SLF001  # see the docstring
    if coordinator.rejoining and not coordinator.need_rejoin():
        log.info("finishing a group join that kafka-python left unfinished")
        coordinator.request_rejoin()
