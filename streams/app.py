"""The Faust application: built by :func:`create_app`, agents registered explicitly, in flow order.

Four stages, each a Faust agent that reads *batches* (one message per topic of a
fetch, holding each partition's batch, :mod:`streams.transport`):

1. ``validate`` reads the four input topics (keyed by participant_id) and runs
   every message through :class:`~streams.validate.ValidateStage`: valid events
   go to ``exnet.validated`` keyed by ``event_id``, rejections (original bytes)
   to ``exnet.deadletter``.
2. ``deduplicate`` reads ``exnet.validated``; every copy of an event_id meets in
   one partition, where the ``dedup`` table remembers each accepted event's
   content digest and origin (:class:`~streams.dedup.DeduplicateStage`). New
   events and replays go on to ``exnet.accepted`` keyed by participant_id;
   exact duplicates are counted and dropped; conflicting ones are rejected.
3. ``aggregate`` reads ``exnet.accepted``; the ``participants`` table keeps each
   participant's events as the views see them, and every participant a batch
   names gets their whole, versioned contribution to the views sent to the one
   partition of ``exnet.contributions`` (:class:`~streams.aggregate.AggregateStage`).
4. ``rollup`` reads ``exnet.contributions``; the ``contributions`` table keeps
   each participant's latest, and the rows of the views they change go to
   ``exnet.views`` (:class:`~streams.rollup.RollupStage`), which the sink writes.

Aggregate and rollup gather their batches in a window of ``VIEWS_WINDOW_S`` and
send what the window changed once: a participant's contribution, a row.

Offsets: a batch is done only once Kafka acknowledged everything it produced,
table changelog records included (the agent goes on meanwhile); the transport
commits only done batches. So a crash anywhere replays unfinished batches: at-least-once, made
exact downstream by the dedup table's replay rule and idempotent writes.

An exception in an agent is a bug: its crashing supervisor stops the worker,
and the failing batch, never done, is not committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import faust
from faust.transport.drivers import TRANSPORTS
from mode import CrashingSupervisor

from contracts.registry import load_registry
from contracts.topics import INPUT_TOPICS, Topic, topic_name
from contracts.validation import Validator
from contracts.wire import read_validated
from exnet.metrics import Metrics
from exnet.settings import Settings
from streams.aggregate import AggregateStage
from streams.dedup import Deduplicated, DeduplicateStage
from streams.guard import InvalidRatioGuard, SiteCounts
from streams.names import (
    CONTRIBUTIONS_TABLE,
    DEDUP_TABLE,
    PARTICIPANTS_TABLE,
    changelog_topic,
    changelog_topics,
    streams_group,
)
from streams.rollup import LiveViews, RollupStage
from streams.transport import (
    SCHEME,
    BatchMessage,
    BatchTable,
    Consumer,
    Producer,
    TableManager,
    TopicBatch,
    register,
)
from streams.validate import Validated, ValidateStage

__all__ = [
    "CONTRIBUTIONS_TABLE",
    "DEDUP_TABLE",
    "PARTICIPANTS_TABLE",
    "WorkerFailed",
    "changelog_topic",
    "changelog_topics",
    "create_app",
    "streams_group",
]

log = logging.getLogger(__name__)

#: Seconds between Faust's offset commits: bounds replay after a crash and drain latency.
COMMIT_INTERVAL_S = 0.5
#: Bytes per producer batch (per partition): large batches amortise each round trip.
PRODUCER_BATCH_BYTES = 1024 * 1024
#: Seconds without a heartbeat before the group drops a worker (Kafka's minimum is 6).
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_S = 1.0
#: Seconds between checks whether the summaries' rows are to be sent, or the live
#: views filled, from the rollup's table (once a generation).
FILL_VIEWS_S = 1.0
#: Seconds the aggregate and rollup agents gather batches before they send what the
#: batches changed, once (a participant's contribution, a view's row), and settle them.
VIEWS_WINDOW_S = 0.5
#: Messages a stream may hold in its buffer: each is a topic's share of a fetch already
#: (EXNET_STREAM_BATCH_MAX records at most), and a full buffer holds the fetch loop back.
#: With 2 here, the latency at 5,000 events/s was no better (docs/performance.md).
BATCHES_BUFFERED = 4


class WorkerFailed(Exception):
    """An agent failed; the worker stopped without committing the failing batch."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def create_app(
    settings: Settings,
    metrics: Metrics,
    on_failure: Callable[[WorkerFailed], None] = lambda failure: None,
    live: LiveViews | None = None,
    on_summaries: Callable[[], None] = lambda: None,
) -> faust.App:
    """Build the stream processors' Faust app from ``settings`` (nothing global).

    ``on_failure`` hears of an agent's failure before the worker crashes;
    ``live`` gets the views' rows whenever this worker's rollup computes them;
    ``on_summaries`` hears, once the tables are recovered, that the summaries' rows
    are in Kafka (this worker holds the contributions partition) or are not this
    worker's to send.
    """
    names = {topic: topic_name(topic, settings.topic_prefix) for topic in Topic}
    register(TRANSPORTS)
    datadir = settings.var_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        streams_group(settings),
        # Our transport: batches in, batches out (streams/transport.py).
        broker=[f"{SCHEME}://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",
        Table=BatchTable,
        TableManager=TableManager,
        datadir=str(datadir),  # not the working directory
        autodiscover=False,
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor or 1,
        topic_allow_declare=True,  # the dedup changelog; `exnet init` creates the rest
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=COMMIT_INTERVAL_S,
        table_standby_replicas=0,  # recovery from the changelog is fast; spare the CPU
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        producer_max_request_size=4 * PRODUCER_BATCH_BYTES,
        stream_buffer_maxsize=BATCHES_BUFFERED,
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

    registry = load_registry(settings.registry_path)
    validator = Validator(registry, settings.topic_prefix)
    guard = InvalidRatioGuard(
        settings.dlq_max_ratio, settings.dlq_window, sites_required=min(2, len(registry.sites()))
    )
    #: The metrics' labels of a site a message names: its node and itself when
    #: registered, else empty (unbounded names must not become label values).
    site_labels = {site.id: (node_id, site.id) for node_id, site in registry.sites()}
    metrics.preset_sites(site_labels.values())
    inputs = app.topic(*(names[topic] for topic in INPUT_TOPICS))
    validated = app.topic(names[Topic.VALIDATED])

    def table(name: str, partitions: int) -> Any:
        """A table co-partitioned with its agent's input, its changelog compacted."""
        changelog = app.topic(
            changelog_topic(settings, name), partitions=partitions, compacting=True
        )
        return app.Table(
            name,
            default=None,
            partitions=partitions,
            changelog_topic=changelog,
            # Changelog messages recovery buffers before applying them: each is a
            # fetched batch (streams.transport), so two at most. Not one: with a
            # buffer of 1, Faust goes on reading the changelog after recovery
            # (faust/tables/recovery.py, "recovery_buffer=1") and would apply this
            # worker's own writes again, late, over newer ones (the fault test's
            # views came out short).
            recovery_buffer_size=2,
        )

    seen = table(DEDUP_TABLE, settings.partitions)
    deduplicate = DeduplicateStage(
        names[Topic.ACCEPTED], names[Topic.DEADLETTER], settings.topic_prefix
    )
    accepted = app.topic(names[Topic.ACCEPTED])
    participants = table(PARTICIPANTS_TABLE, settings.partitions)
    aggregate = AggregateStage(names[Topic.CONTRIBUTIONS], registry.primary_endpoint)
    contributions = app.topic(names[Topic.CONTRIBUTIONS], partitions=1)
    latest = table(CONTRIBUTIONS_TABLE, 1)  # exnet.contributions has one partition
    rollup = RollupStage(names[Topic.VIEWS], {node.id: node.name for node in registry.nodes}, live)
    if live is not None:

        def forget_views(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
            # Another worker's rollup holds the views now: serve none rather than stale ones.
            if not any(tp.topic == names[Topic.CONTRIBUTIONS] for tp in assigned):
                live.clear()

        cast(Any, app.on_partitions_assigned).connect(forget_views)

    summaries_sent: list[int] = []  # the generation whose summary rows were sent

    async def fill_views() -> None:
        # Once a generation, by the worker holding the contributions partition: send
        # the summaries' rows (every registered node's, zeros included), which no batch
        # may come to send (an empty network, a node just registered), and fill the
        # live views from the recovered table if no batch has yet.
        if app.in_recovery or app.rebalancing:
            return
        generation = app.consumer_generation_id
        consumer = cast(Consumer, app.consumer)
        partition = next(
            (tp for tp in consumer.assignment() if tp.topic == names[Topic.CONTRIBUTIONS]), None
        )
        if partition is None:
            on_summaries()  # another worker's rollup sends them
            return
        if live is not None and live.empty:
            rollup.refresh(latest, datetime.now(UTC), generation)
        started = consumer.started_at(partition, generation)
        if started is None or generation in summaries_sent:
            return
        try:
            rows = rollup.summaries(latest, datetime.now(UTC), generation, started)
            await (await cast(Producer, app.producer).deliver(rows))
        except Exception as exc:  # a failed delivery: as in an agent, stop the worker
            on_failure(WorkerFailed(exc))
            await app.crash(exc)
            return
        summaries_sent[:] = [generation]
        on_summaries()

    app.timer(FILL_VIEWS_S, name="exnet-fill-views")(fill_views)

    def settle(batches: list[BatchMessage], delivered: asyncio.Future[Any]) -> None:
        """The batches are done (their offsets may be committed) once Kafka has all they
        produced (``delivered``); a failed delivery stops the worker, none done."""
        # Their records and changelog are processed and handed over: each batch stays in
        # its partition's chain until committed (its offsets are all that is read).
        for batch in batches:
            batch.records = ()
            batch.changelog = []

        def on_delivered(future: asyncio.Future[Any]) -> None:
            # Cancelled (directly, or one of the gathered acknowledgements): the worker
            # is stopping; the batches stay not done and are read again next time.
            if future.cancelled():
                return
            error = future.exception()
            if isinstance(error, asyncio.CancelledError):
                return
            if error is None:
                for batch in batches:
                    batch.done = True
                return
            log.critical("delivering the output of %s failed: %r", batches, error)
            on_failure(WorkerFailed(error))
            crashing = asyncio.ensure_future(app.crash(error))
            _background.add(crashing)
            crashing.add_done_callback(_background.discard)

        delivered.add_done_callback(on_delivered)

    def reporting(body: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """The agent ``body``, telling ``on_failure`` of an exception before it raises."""

        async def agent(stream: Any) -> None:
            try:
                await body(stream)
            except Exception as exc:
                on_failure(WorkerFailed(exc))
                raise

        return agent

    async def admitted(
        stream: Any,
    ) -> AsyncIterator[tuple[Any, TopicBatch, list[BatchMessage]]]:
        """The stream's events, each a topic's batches of one fetch, with the batches the
        consumer admits, in each partition's fetch order: a batch it does not admit
        (one before it was dropped on its way, and is read again) is skipped, and an
        event with none is acknowledged and skipped."""
        consumer = cast(Consumer, app.consumer)
        async for event in stream.noack().events():
            unit = cast(TopicBatch, event.message)
            batches = [batch for batch in unit.batches if await consumer.admit(batch)]
            if batches:
                yield event, unit, batches
            else:
                await stream.ack(event)

    async def _validate(stream: Any) -> None:
        producer = cast(Producer, app.producer)
        stage = ValidateStage(
            validator,
            names[Topic.VALIDATED],
            names[Topic.DEADLETTER],
            await producer.partitions(names[Topic.VALIDATED]),
        )
        async for event, unit, batches in admitted(stream):
            started = time.perf_counter()
            now = datetime.now(UTC)
            results = [stage(b.topic, b.partition, b.records, now) for b in batches]
            by_sites = [result.by_site() for result in results]
            for by_site in by_sites:
                guard.observe(by_site)
            delivered = await producer.deliver(
                [message for result in results for message in result.outgoing]
            )
            settle(batches, delivered)
            await stream.ack(event)
            for result, by_site in zip(results, by_sites, strict=True):
                _count_validated(metrics, unit.topic, result, by_site, site_labels)
            metrics.stream_batch_seconds.labels(stage="validate").observe(
                time.perf_counter() - started
            )

    async def _deduplicate(stream: Any) -> None:
        producer = cast(Producer, app.producer)
        site_last_event: dict[tuple[str, str], float] = {}  # the gauge's values, to keep the newest
        async for event, unit, batches in admitted(stream):
            started = time.perf_counter()
            now = datetime.now(UTC)
            results = []
            for batch in unit.processing(batches):  # the dedup table's writes: its changelog
                records = [read_validated(r.key, r.value, r.headers) for r in batch.records]
                results.append(deduplicate(records, seen, now))
            delivered = await producer.deliver(
                [
                    *(message for result in results for message in result.outgoing),
                    *(record for batch in batches for record in batch.changelog),
                ]
            )
            settle(batches, delivered)
            await stream.ack(event)
            for result in results:
                _count_deduplicated(metrics, result, site_last_event)
            metrics.stream_batch_seconds.labels(stage="deduplicate").observe(
                time.perf_counter() - started
            )

    # The views' two agents gather their batches in a window: a participant named by
    # many batches in it is sent once, a row changed by many is sent once.
    touched: dict[bytes, set[str]] = {}  # the aggregate window's participants
    aggregated, rolled = _Window(), _Window()

    async def send_contributions() -> None:
        async with aggregated.lock:
            batches = aggregated.take()
            if not batches:
                return
            outgoing = aggregate.contributions(touched, participants)
            touched.clear()
            delivered = await cast(Producer, app.producer).deliver(
                [*outgoing, *(record for batch in batches for record in batch.changelog)]
            )
            settle(batches, delivered)

    async def send_rows() -> None:
        async with rolled.lock:
            batches = rolled.take()
            if not batches:
                return
            producer = cast(Producer, app.producer)
            result = rollup.flush(datetime.now(UTC))
            # Rows first, the table's changelog once they are in Kafka: a crash between
            # the two cannot leave pieces in the table whose rows (an emptied arm's
            # deletion, say) no rebuild would send.
            if result.outgoing:
                await (await producer.deliver(result.outgoing))
            delivered = await producer.deliver(
                [record for batch in batches for record in batch.changelog]
            )
            settle(batches, delivered)

    async def _aggregate(stream: Any) -> None:
        async for event, unit, batches in admitted(stream):
            started = time.perf_counter()
            for batch in unit.processing(batches):  # the table's writes: its changelog
                result = aggregate(batch.records, participants, send=False)  # skipped: logged
                for participant, pieces in result.touched.items():
                    touched.setdefault(participant, set()).update(pieces)
                aggregated.add(batch)
            await stream.ack(event)
            metrics.stream_batch_seconds.labels(stage="aggregate").observe(
                time.perf_counter() - started
            )
            if aggregated.due():
                await send_contributions()

    async def _rollup(stream: Any) -> None:
        async for event, unit, batches in admitted(stream):
            started = time.perf_counter()
            for batch in unit.processing(batches):  # the table's writes: its changelog
                # The rows' version: the batch's end offset in the one contributions
                # partition.
                rollup(
                    batch.records,
                    latest,
                    batch.generation_id or 0,
                    batch.offset + 1,
                    datetime.now(UTC),
                    send=False,
                )
                rolled.add(batch)
            await stream.ack(event)
            metrics.stream_batch_seconds.labels(stage="rollup").observe(
                time.perf_counter() - started
            )
            if rolled.due():
                await send_rows()

    async def send_due_windows() -> None:
        try:
            if aggregated.due():
                await send_contributions()
            if rolled.due():
                await send_rows()
        except Exception as exc:  # a failed delivery: as in an agent, stop the worker
            on_failure(WorkerFailed(exc))
            await app.crash(exc)

    sending: list[asyncio.Future[None]] = []  # the timer's current sending, if any

    async def send_due() -> None:
        # A window whose agent has no new batch to close it. The timer only starts the
        # sending, which takes a produce round trip or two: longer than its interval.
        if sending and not sending[0].done():
            return
        sending.clear()
        if aggregated.due() or rolled.due():
            sending.append(asyncio.ensure_future(send_due_windows()))

    app.timer(VIEWS_WINDOW_S / 4, name="exnet-views-window")(send_due)

    async def send_before_revoke(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # The tables already hold the windows' batches; their partitions may stay here
        # after the rebalance, where recovery lays the changelog over them: it must
        # be in Kafka by then, or the tables lose those batches' writes (which, done
        # once acknowledged, are not read again).
        await send_contributions()
        await send_rows()
        await cast(Producer, app.producer).flush()

    cast(Any, app.on_partitions_revoked).connect(send_before_revoke)

    # An agent that raises is a bug: crash the worker (never restart the agent
    # past the failing batch, which is not done and so not committed).
    for source, name, body in (
        (inputs, "validate", _validate),
        (validated, "deduplicate", _deduplicate),
        (accepted, "aggregate", _aggregate),
        (contributions, "rollup", _rollup),
    ):
        app.agent(source, name=name, supervisor_strategy=CrashingSupervisor)(reporting(body))
    return app


class _Window:
    """Batches an agent applied whose outputs and table changelog wait to be sent
    together; they are not done (so not committed) until then."""

    def __init__(self, seconds: float = VIEWS_WINDOW_S) -> None:
        self.seconds = seconds
        self.lock = asyncio.Lock()
        self._batches: list[BatchMessage] = []
        self._opened = 0.0

    def add(self, batch: BatchMessage) -> None:
        if not self._batches:
            self._opened = time.monotonic()
        self._batches.append(batch)

    def due(self) -> bool:
        """The window holds batches and is ``seconds`` old."""
        return bool(self._batches) and time.monotonic() - self._opened >= self.seconds

    def take(self) -> list[BatchMessage]:
        batches, self._batches = self._batches, []
        return batches


def _credentials(settings: Settings) -> faust.SASLCredentials | None:
    """The SCRAM login over TLS of a ``SASL_SSL`` deployment (SPEC §5); None for plaintext."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    connection = settings.kafka_client_config()  # checks the username and password are set
    return faust.SASLCredentials(
        username=connection["sasl_plain_username"],
        password=connection["sasl_plain_password"],
        ssl_context=connection["ssl_context"],
        mechanism=settings.kafka_sasl_mechanism,
    )


#: Tasks started from callbacks, kept referenced until they finish.
_background: set[asyncio.Future[Any]] = set()


def _count_validated(
    metrics: Metrics,
    topic: str,
    result: Validated,
    by_site: SiteCounts,
    site_labels: Mapping[str, tuple[str, str]],
) -> None:
    metrics.events_received.labels(topic=topic).inc(result.received)
    for reason, count in result.rejected.items():
        metrics.events_rejected.labels(reason=reason).inc(count)
    for site, (received, _) in by_site.items():
        node_id, site_id = site_labels.get(site or "", ("", ""))
        metrics.site_events_received.labels(node_id=node_id, site_id=site_id).inc(received)
    for (site, reason), count in result.rejected_by_site.items():
        node_id, site_id = site_labels.get(site or "", ("", ""))
        metrics.site_events_rejected.labels(node_id=node_id, site_id=site_id, reason=reason).inc(
            count
        )


def _count_deduplicated(
    metrics: Metrics,
    result: Deduplicated,
    site_last_event: dict[tuple[str, str], float],
) -> None:
    for event_type, count in result.accepted.items():
        metrics.events_accepted.labels(type=event_type).inc(count)
    for event_type, count in result.duplicates.items():
        metrics.events_duplicate.labels(type=event_type).inc(count)
    reason = "conflicting_duplicate"
    for (node_id, site_id), count in result.conflicts.items():
        metrics.events_rejected.labels(reason=reason).inc(count)
        metrics.site_events_rejected.labels(node_id=node_id, site_id=site_id, reason=reason).inc(
            count
        )
    wall = time.time()
    for (node_id, site_id), count in result.per_site.items():
        metrics.site_events_accepted.labels(node_id=node_id, site_id=site_id).inc(count)
        metrics.site_last_received.labels(node_id=node_id, site_id=site_id).set(wall)
    for site, occurred in result.newest.items():
        if occurred > site_last_event.get(site, 0.0):
            site_last_event[site] = occurred
            metrics.site_last_event.labels(node_id=site[0], site_id=site[1]).set(occurred)
