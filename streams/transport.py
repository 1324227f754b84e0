"""Where exnet bends Faust, and why: a topic's records of one fetch are one message.

Faust pays about 200 µs for every message it consumes (tasks and an
``asyncio.wait`` per message in ``Consumer._drain_messages``, flow control, a
conductor lock, sensors, acknowledgement bookkeeping): twenty times what
validating an event costs. No supported hook hands an agent a fetched batch,
so this transport (selected by the broker URL scheme ``exnet-kafka://``) does:

* **Batches in.** :meth:`Consumer.getmany` yields, for each stream topic in a
  fetch, one :class:`TopicBatch` holding a :class:`BatchMessage` per
  partition, every record fetched for it. Faust's per-message machinery then
  runs once per topic of a fetch. Changelog topics (table recovery) come one
  :class:`BatchMessage` per partition.
* **Offsets.** A partition's batches (:class:`BatchMessage`) form a chain in
  fetch order, restarted at every seek (rebalance). A batch is *done* once Kafka has acknowledged
  everything it produced, its table writes included (:meth:`Producer.deliver`);
  the consumer commits the end of the longest done prefix of each chain,
  never past a batch that is not done. A fetch answered before a seek is not
  delivered after it (:meth:`Consumer._in_sequence`), and a batch Faust drops
  on the way (it relies on a rebalance's seek to read such messages again)
  is read again when no seek follows (:meth:`Consumer._read_lost_again`).
  Partitions with no committed offset are sought to their beginning at every
  seek (aiokafka's ``seek_to_committed`` leaves them where they were, past
  any message skipped during the rebalance). docs/architecture.md gives each
  piece's reason.
* **Batches out.** :meth:`Producer.deliver` hands each partition's messages to
  aiokafka as one record batch (``send`` costs tens of microseconds a
  message); its future completes once all are acknowledged, and only then
  is the batch done, while the agent goes on with the next one.
* **Table writes.** :class:`BatchTable` is a Faust table whose ``table[key] =
  value`` queues the changelog record on the current partition batch instead of
  Faust's per-record ``send_soon`` buffer (about 100 µs a record, and input
  stalls while it drains); the agent delivers them with the batch's outputs.
  Its ``get`` reads the store directly.
* **Table recovery in batches.** Changelog partitions are read as batches
  too, and :meth:`BatchTable.apply_changelog_batch` unpacks them for
  Faust's store: Faust's recovery then pays its per-message cost (about
  200 µs) once a fetched batch, not once a record.
* **Starting and stopping.** :class:`TableManager` starts the tables at once
  and :class:`Worker` closes a stopped worker's loop at once, each without
  the fixed second Faust (mode) sleeps first; :meth:`ConsumerThread.subscribe`
  joins the group only once its topics' metadata has come.

Everything else is Faust's: agents, tables and their recovery from the
changelog, consumer groups and rebalancing, commits every
``broker_commit_interval``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict, deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from signal import Signals
from typing import Any, Final, NamedTuple, cast

import faust
from aiokafka.partitioner import murmur2
from faust.stores.memory import Store as MemoryStore
from faust.tables import TableManager as FaustTableManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT
from faust.types.tuples import ConsumerMessage
from mode.utils.imports import FactoryMapping

from contracts.wire import Outgoing
from exnet.settings import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES

__all__ = [
    "SCHEME",
    "BatchMessage",
    "BatchTable",
    "Consumer",
    "Producer",
    "TableManager",
    "TopicBatch",
    "Transport",
    "Worker",
    "commit_end",
    "current_batch",
    "register",
]

log = logging.getLogger(__name__)
#: The logger of Faust's own lines from the services subclassed here ("[^--Consumer]:
#: Starting...", "Creating topic ..."): mode names a service's logger after the
#: module of its class, which put Faust's chatter under this module, at exnet's
#: level, where the operators' guide says Faust's loggers only warn. This module's
#: own lines keep ``log``.
_FAUST_LOG = logging.getLogger(f"faust.{__name__}")

#: The broker URL scheme that selects this transport: ``exnet-kafka://host:port``.
SCHEME = "exnet-kafka"
#: Seconds a partition's commits may wait on a batch an agent took but did not finish
#: before it is logged (and again every as many seconds).
STUCK_WARNING_S = 30.0
#: Seconds after which a batch fetched but not taken by a stream is read again. A batch
#: waits in a stream's buffer for a few batches' processing at most (well under a second).
LOST_AFTER_S = 10.0
#: Seconds between checks that no partition's fetch position ran past what was delivered.
POSITION_CHECK_S = 2.0
#: Seconds a stopping app waits, in all, for Kafka to acknowledge what it produced: its
#: streams' last commit, its producer's flush, its producer's close (:class:`_StopWait`).
STOP_WAIT_S = 10.0
#: Seconds the consumer waits for its topics' metadata before it joins its group
#: without some of them, and seconds between the requests for it meanwhile.
METADATA_WAIT_S = 30.0
METADATA_RETRY_S = 0.1
#: Seconds a topic declaration Kafka fails with a retriable error is asked again
#: (:meth:`Transport._create_topic`), as long as exnet's own start requests are.
DECLARE_RETRY_S = 120.0


def _envelope(
    tp: TP, offset: int, timestamp: float, timestamp_type: int, generation_id: int | None
) -> dict[str, Any]:
    """:class:`ConsumerMessage`'s fields for a message that stands for records, not
    one: Faust reads its partition, offset and time (routing, read offsets, sensors);
    its key, value, headers and sizes stay empty."""
    return {
        "topic": tp.topic,
        "partition": tp.partition,
        "offset": offset,
        "timestamp": timestamp,
        "timestamp_type": timestamp_type,
        "headers": None,
        "key": None,
        "value": b"",
        "checksum": None,
        "serialized_key_size": 0,
        "serialized_value_size": 0,
        "tp": tp,
        "generation_id": generation_id,
    }


class BatchMessage(ConsumerMessage):
    """Every record fetched for one partition in one fetch, handed to an agent as one message.

    ``offset`` is the last record's, so that Faust's own bookkeeping (read
    offsets, lag) sees the batch where it ends. The agent reads ``records``
    (aiokafka ``ConsumerRecord``: ``offset``, ``timestamp`` in ms, ``key``,
    ``value``, ``headers``), delivers what they produced and sets ``done``.
    """

    __slots__ = (
        "changelog",
        "done",
        "fetched_at",
        "first_offset",
        "records",
        "taken",
        "warnings",
    )

    def __init__(self, tp: TP, records: Sequence[Any], generation_id: int) -> None:
        last = records[-1]
        timestamp = last.timestamp / 1000 if last.timestamp is not None else None
        super().__init__(
            **_envelope(tp, last.offset, cast(float, timestamp), last.timestamp_type, generation_id)
        )
        self.records: Sequence[Any] = records
        self.first_offset: int = records[0].offset
        #: Table writes of this batch: (changelog topic, partition, key, value).
        self.changelog: list[Outgoing] = []
        self.done = False
        #: Admitted to its agent (:meth:`Consumer.admit`).
        self.taken = False
        self.fetched_at = time.monotonic()
        #: How often a wait for this batch was logged.
        self.warnings = 0


class TopicBatch(ConsumerMessage):
    """A fetch's partition batches of one stream topic, handed to an agent as one message.

    Faust pays its per-message cost (a task and an ``asyncio.wait`` in its fetch
    loop, a channel, sensors, an acknowledgement) once for all of them. Each of
    ``batches`` stays a :class:`BatchMessage` in its own partition's chain: the
    agent admits, processes and settles them one by one, and sets ``current``
    to the one it processes (its table writes go with that one). ``tp`` and
    ``offset`` are the first batch's, for Faust's routing and sensors only.
    """

    __slots__ = ("batches", "current")

    def __init__(self, batches: Sequence[BatchMessage]) -> None:
        first = batches[0]
        super().__init__(
            **_envelope(
                first.tp, first.offset, first.timestamp, first.timestamp_type, first.generation_id
            )
        )
        self.batches: Sequence[BatchMessage] = batches
        #: The batch the agent is processing, set by :meth:`processing`.
        self.current: BatchMessage | None = None

    def processing(self, batches: Iterable[BatchMessage]) -> Iterator[BatchMessage]:
        """``batches`` (admitted ones of this message) in turn, each ``current`` while
        the agent works on it."""
        try:
            for batch in batches:
                self.current = batch
                yield batch
        finally:
            self.current = None


def current_batch() -> BatchMessage:
    """The partition batch the calling agent is processing: Faust's current event's
    message, or the one of its :class:`TopicBatch` the agent set ``current``."""
    event = faust.current_event()
    message = event.message if event is not None else None
    if isinstance(message, TopicBatch) and message.current is not None:
        return message.current
    if not isinstance(message, BatchMessage):
        raise RuntimeError("not inside an agent that reads batches from the exnet transport")
    return message


def commit_end(chain: deque[Any]) -> int | None:
    """The offset to commit for a partition: one past the longest done prefix of its
    chain of batches (fetch order), which it removes; None when the first is not done."""
    end: int | None = None
    while chain and chain[0].done:
        end = chain.popleft().offset + 1
    return end


class _ReadOffsets(defaultdict[TP, int | None]):
    """Faust's read offsets (per partition, the offset of the last message its fetch
    loop handed over), as that loop reads them: a stream partition has none.

    Faust's loop drops a message below its partition's read offset, and sets
    that offset only after awaiting the message's hand-over. A seek back that
    lands during the await (a rebalance's seek to the committed offsets, on the
    recovery's task; an agent's :meth:`Consumer.admit`) resets the offset, and
    the loop then overwrites it: the batch read again, ending below the one
    handed over, was dropped with a debug line (one way a soak of the SIGTERM
    test saw batches lost on their way, 2026-12-04; :meth:`Consumer.admit` caught
    them). A stream partition's sequence is :meth:`Consumer._in_sequence`'s,
    which drops what was delivered since the last seek on its own. Changelog
    partitions keep Faust's check.
    """

    def __init__(self, is_changelog: Callable[[TP], bool]) -> None:
        super().__init__(lambda: None)
        self._is_changelog = is_changelog

    def __getitem__(self, tp: TP) -> int | None:
        return super().__getitem__(tp) if self._is_changelog(tp) else None


class _StopWait:
    """What a stopping app waits on Kafka for, :data:`STOP_WAIT_S` in all, counted from
    its first wait.

    The last commit waits for Kafka to acknowledge what its batches produced, the
    producer's flush and close for what they hold, and aiokafka's close has no end:
    with no broker answering, a SIGTERM left `exnet up` running until a broker came
    back (9 minutes in an outside check; the writer had long stopped). Not waiting
    longer is safe: what Kafka did not acknowledge was never committed, so it is
    read again by the next worker, and read again is made exact downstream.
    """

    def __init__(self) -> None:
        self._deadline: float | None = None
        self._told = False

    async def wait(self, what: str, call: Awaitable[Any]) -> None:
        """``call``, for what is left of the stop's time; past that, one warning and
        ``call`` is left running (the loop's shutdown cancels it: Faust's commit in
        flight sets a future of its own when it ends, which a cancellation here
        would break)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + STOP_WAIT_S
        task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, self._deadline - time.monotonic()))
        if task in done:
            task.result()  # its error, if any, as before
            return
        log.log(
            logging.DEBUG if self._told else logging.WARNING,  # once is news enough
            "%s did not end within %g s of the stop (Kafka did not acknowledge what the "
            "stream worker produced); stopping without it: what was not committed is "
            "read again by the next worker",
            what,
            STOP_WAIT_S,
        )
        self._told = True


def _stop_wait(transport: Any) -> _StopWait:
    """The :class:`_StopWait` of ``transport`` (this module's :class:`Transport`)."""
    wait: _StopWait = transport.stop_wait
    return wait


#: See :attr:`ConsumerThread.shutdown_timeout`.
CONSUMER_STOP_TIMEOUT_S: Final = 10.0


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's thread running the aiokafka consumer, with a short fetch wait that
    gathers records (FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES)."""

    logger = _FAUST_LOG
    #: Seconds a stop waits for the aiokafka consumer to close (mode's default: 60).
    #: Its close leaves the group through the group's coordinator; with that broker
    #: just dead, it waited the whole minute for it, and a SIGTERM took 60 s to end
    #: `exnet up` (an outside tester's find on a 3-broker cluster; a supervisor
    #: kills a process that takes 30 s). Nothing is lost by not waiting: what was
    #: not committed is read again, and read again is made exact downstream.
    shutdown_timeout = CONSUMER_STOP_TIMEOUT_S

    async def stop(self) -> None:
        """mode's stop, but a consumer that did not close within
        :attr:`shutdown_timeout` is one warning line, not mode's ERROR and traceback
        ("Error while stopping child"): the stop goes on as it did."""
        try:
            await super().stop()
        except TimeoutError:
            log.warning(
                "the Kafka consumer did not close within %g s (its group's coordinator "
                "did not answer); stopping without it: what it had not committed is "
                "read again by the next worker",
                self.shutdown_timeout,
            )

    async def on_thread_stop(self) -> None:
        """Faust's, but an aiokafka consumer whose close fails (a fetch to a dead broker,
        cancelled as it waited to retry: ``CancelledError``) is one warning line, and
        the thread's stop goes on.

        Raised, it ended the thread with "Exception in thread" and a traceback, before
        the thread reported its shutdown: with the broker down, a SIGTERM then waited
        out :attr:`shutdown_timeout` (an outside tester's find, 2026-12-03).
        """
        try:
            await super().on_thread_stop()
        except (asyncio.CancelledError, Exception) as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this task itself is cancelled
                raise
            log.warning("the Kafka consumer's close failed (%r); stopping without it", exc)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes the broker's fetch wait at 1.5 s (no setting reaches it), and
        # aiokafka keeps one fetch in flight per broker: measured at a steady 5,000
        # events/s, records waited a median 0.82 s (p99 2.1 s) to be handed to the
        # validate agent with it, 0.12 s (p99 0.28 s) with FETCH_MAX_WAIT_MS. Nor does
        # any setting reach the fetch's minimum size (FETCH_MIN_BYTES says why). The
        # attributes are the ones aiokafka's constructor keeps the arguments in, read
        # when the consumer starts.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001  # see above
        consumer._fetch_min_bytes = FETCH_MIN_BYTES  # noqa: SLF001  # see above
        # A site's own client may write in transactions: what it aborted it took back.
        # Faust reads committed only when it produces in transactions itself.
        consumer._isolation_level = "read_committed"  # noqa: SLF001  # see above
        return consumer

    async def subscribe(self, topics: Iterable[str]) -> None:
        """Subscribe to ``topics`` once the consumer's metadata has their partitions (or
        after METADATA_WAIT_S, or when the thread stops).

        Faust subscribes after the consumer started, and aiokafka's join does not wait
        for the metadata ``subscribe`` asks for (its own wait is at ``start``, for a
        consumer subscribed before). Just after ``exnet init`` the broker may still
        answer "unknown topic" for the topics it created: Faust's assignor then logs
        "Ignoring missing topic" for each, assigns the worker nothing, and aiokafka
        asks for metadata again only when it is ``metadata_max_age_ms`` old (5
        minutes). Seen on a broker started 19 s before: the sink wrote within 4 s,
        the stream worker held no partition after 10 s.
        """
        wanted = set(topics)
        await self.call_thread(self._await_metadata, wanted)
        await super().subscribe(wanted)

    async def _await_metadata(self, topics: set[str]) -> None:
        client = self._ensure_consumer()._client  # noqa: SLF001  # see subscribe
        for topic in topics:
            client.add_topic(topic)
        deadline = time.monotonic() + METADATA_WAIT_S
        while not self.should_stop:
            missing = sorted(t for t in topics if not client.cluster.partitions_for_topic(t))
            if not missing:
                return
            if time.monotonic() > deadline:
                log.warning("joining without metadata for %d topics: %s", len(missing), missing)
                return
            await client.force_metadata_update()
            if any(not client.cluster.partitions_for_topic(t) for t in missing):
                await asyncio.sleep(METADATA_RETRY_S)

    async def commit(self, offsets: Mapping[TP, int]) -> bool:
        """Commit ``offsets`` (TP -> next offset) in the consumer's thread; False,
        committing nothing, when that thread has stopped or stops meanwhile.

        An agent's crash stops this thread at once (mode crashes every child service)
        while the app, stopping, still commits the batches it had done: a call the
        stopped thread never takes was awaited for ever. ``exnet up`` hung so after
        the invalid-ratio guard stopped it, in about one run in six on a loaded
        machine. Not committing is safe: what is not committed is read again, and
        read again is made exact downstream.
        """
        if self.should_stop:
            log.warning("not committing %d offsets: the consumer has stopped", len(offsets))
            return False
        answered, committed = await self._unless_stopped(super().commit(offsets))
        if answered:
            return bool(committed)
        log.warning("not committing %d offsets: the consumer stopped", len(offsets))
        return False

    async def seek_in_thread(self, partition: TP, offset: int) -> None:
        """aiokafka's seek of ``partition`` to ``offset``, in the consumer's thread;
        nothing when that thread has stopped or stops meanwhile (as :meth:`commit`).

        Faust's seek calls aiokafka's from the app's thread. aiokafka's seek deletes
        the partition's prefetched records, which its ``fetched_records``, running
        in the consumer's thread, reads and then deletes: when the seek came in
        between, the second delete raised ``KeyError`` and the worker crashed (CI,
        a broker of three killed mid-stream while a second worker joined,
        2026-12-03).
        """
        if not self.should_stop:
            consumer = self._ensure_consumer()
            await self._unless_stopped(self.call_thread(consumer.seek, partition, offset))

    async def _unless_stopped(self, call: Awaitable[Any]) -> tuple[bool, Any]:
        """``call`` (a call to this thread): (True, its result), or (False, None) having
        cancelled it when the thread stops first and so would never take it."""
        task = asyncio.ensure_future(call)
        stopped = asyncio.ensure_future(self._shutdown.wait())
        try:
            await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        return False, None

    def verify_event_path(self, now: float, tp: TP) -> None:
        """Faust's check that every assigned partition's stream keeps up (run every 2.5
        commit intervals), for every partition but the tables' changelogs.

        A worker is assigned its tables' changelog partitions, reads them in recovery
        and pauses them; no stream reads them after that, while its own table writes
        move their high water on. Faust's check took that for a stream that never
        started: from 5 minutes (``stream_processing_timeout``) after a start, an
        ERROR of a dozen lines ("Stream has not started processing ...") for each
        changelog partition (13 with 6 partitions a topic) at every check, as long
        as the worker ran.
        Recovery has a check of its own (``verify_recovery_event_path``), kept.
        """
        if tp.topic in cast(Any, self.consumer).app.tables.changelog_topics:
            return None
        return super().verify_event_path(now, tp)

    async def positions(self, partitions: Sequence[TP]) -> dict[TP, int | None]:
        """The fetch positions of ``partitions`` (None: not assigned any more), in one
        call to the consumer's thread (a call per partition held the fetch loop for
        a few hundred milliseconds: the latency's p99)."""
        result: dict[TP, int | None] = await self.call_thread(self._positions, partitions)
        return result

    async def _positions(self, partitions: Sequence[TP]) -> dict[TP, int | None]:
        consumer = self._ensure_consumer()
        positions: dict[TP, int | None] = {}
        for tp in partitions:
            try:
                positions[tp] = await consumer.position(tp)
            except Exception as exc:  # revoked meanwhile: its seek comes
                log.debug("no position for %s: %r", tp, exc)
                positions[tp] = None
        return positions


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering partition batches and committing done ones."""

    logger = _FAUST_LOG

    _thread: ConsumerThread

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = _ReadOffsets(self._is_changelog_tp)
        #: Per partition: the batches delivered since the last seek, oldest first.
        self._chains: dict[TP, deque[BatchMessage]] = defaultdict(deque)
        #: Per partition: the offset the next delivered record must have (the seek
        #: position, then one past the last record delivered).
        self._next: dict[TP, int] = {}
        #: Per partition: a first offset past ``_next`` that was read again to tell
        #: a stale fetch from offsets Kafka skips (transaction markers, compaction).
        self._skips: dict[TP, int] = {}
        #: Per partition: the ``_next`` it was sought back to because its fetch
        #: position ran past it with nothing delivered (see _read_skipped_again).
        self._tail_checks: dict[TP, int] = {}
        #: Partitions whose fetched records were dropped here since their last seek.
        self._dropped: set[TP] = set()
        #: Per partition: the end of offsets Kafka skipped after its last record (a
        #: transaction's marker), to commit once every batch before it is done.
        self._gap_ends: dict[TP, int] = {}
        self._positions_checked = 0.0
        #: The consumer group generation of the last seek, and where it started each
        #: partition (its committed offset, or its beginning).
        self._generation_start: tuple[int, dict[TP, int]] | None = None
        #: Per partition: the consumer group generation and the offset of the last
        #: commit this process decided on (its batches before it all done), landed
        #: in Kafka or still on its way.
        self._released: dict[TP, tuple[int, int]] = {}

    async def wait_empty(self) -> None:
        """Faust's wait for the batches taken to be done and committed; when the app
        stops, as long as :class:`_StopWait` allows. A rebalance still waits for as
        long as it takes (the partitions' next owner would otherwise read again what
        this worker may yet commit)."""
        if self.app.should_stop:
            await _stop_wait(self.transport).wait("the last commit", super().wait_empty())
        else:
            await super().wait_empty()

    async def _seek(self, partition: TP, offset: int) -> None:
        await self._thread.seek_in_thread(partition, offset)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        await self._read_lost_again()
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            # As Faust does: records fetched while flow is suspended are dropped,
            # and the seek back to the committed offsets reads them again. A seek
            # a rebalance overtakes (a partition revoked meanwhile) only warns, as
            # in Faust: that rebalance's own seek follows.
            try:
                await self.perform_seek()
            except Exception as exc:
                log.warning("the seek to the committed offsets failed: %r", exc)
            return
        by_topic: dict[str, list[BatchMessage]] = {}
        for tp, fetched in records.items():
            if not fetched:
                continue
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                self._dropped.update(records)  # until that seek, no gap is Kafka's
                break  # a rebalance began: its seek reads the rest again
            if not (
                active_partitions is None
                or tp in active_partitions
                or tp in self._buffered_partitions
            ):
                self._dropped.add(tp)  # _read_skipped_again reads them again
                continue
            changelog = self._is_changelog_tp(tp)
            if not changelog and not self._sought_in(generation_id):
                # Before this generation's seek (Faust resumes the stream partitions
                # during its recovery, then seeks them): a batch delivered now starts
                # wherever the fetch stood, and nothing says it continues what was
                # committed. Read again after the seek.
                self._dropped.add(tp)
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if changelog:
                # Table recovery: one message per fetched batch here too, which
                # BatchTable.apply_changelog_batch unpacks. Never committed: no chain.
                yield tp, BatchMessage(tp, fetched, generation_id)
                continue
            fresh = await self._in_sequence(tp, fetched)
            if fresh:
                batch = BatchMessage(tp, fresh, generation_id)
                self._chains[tp].append(batch)
                by_topic.setdefault(tp.topic, []).append(batch)
        # Each topic's batches as one message, after the round's sequence checks. A
        # batch in its chain but not handed over (a rebalance began meanwhile) is read
        # again by that rebalance's seek, or by _read_lost_again.
        for batches in by_topic.values():
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                return
            yield batches[0].tp, TopicBatch(batches)

    def _sought_in(self, generation: int) -> bool:
        """Whether the stream partitions were sought to the committed offsets in consumer
        group ``generation``: their sequences (``_next``) start there."""
        return self._generation_start is not None and self._generation_start[0] == generation

    async def _in_sequence(self, tp: TP, fetched: Sequence[Any]) -> Sequence[Any]:
        """The records of ``fetched`` that continue ``tp``'s sequence since the last seek.

        A fetch that was answered before a seek can reach this loop after it
        (fetching runs on the consumer's own thread): its records start past
        the position sought, and delivering them would let a commit jump the
        records in between. Such a batch is dropped and the partition read
        again from where its sequence stands; if the records then start at the
        same offset, Kafka skipped the offsets in between (transaction markers,
        compaction) and they are delivered.
        """
        expected = self._next.get(tp)
        if expected is not None:
            if fetched[-1].offset < expected:
                return ()  # delivered already since the last seek
            first = fetched[0].offset
            if first < expected:
                fetched = [record for record in fetched if record.offset >= expected]
            elif first > expected and self._skips.get(tp) != first:
                self._skips[tp] = first
                log.info(
                    "%s: a fetch began at offset %d, past %d, the next one to deliver (an "
                    "answer to a fetch from before a seek, or offsets that hold no record "
                    "to read, such as transaction markers); reading again from %d, so that "
                    "nothing is skipped or read out of order",
                    tp,
                    first,
                    expected,
                    expected,
                )
                await self.seek(tp, expected)
                return ()
        self._skips.pop(tp, None)
        self._tail_checks.pop(tp, None)
        self._next[tp] = fetched[-1].offset + 1
        return fetched

    async def _read_lost_again(self) -> None:
        """Seek back to a batch that was fetched but that no stream took.

        A stream marks a message ``tracked`` when it takes it from its buffer
        for its agent. Faust drops messages on the way in places meant to be
        followed by a rebalance's seek: its fetch loop cancels a hand-over
        when flow is suspended (``wait_first(callback, suspend_flow.wait())``),
        a rebalance clears the streams' buffers, and a stream skips (and
        acknowledges, untracked) a message of an older generation or read
        while flow control is off. A batch so dropped with no seek after it
        would hold its partition's commits, and its records, forever: after
        :data:`LOST_AFTER_S` untaken, it is read again (a batch taken late is
        no longer in the chain: :meth:`admit` skips it).
        """
        if not (self.flow_active and self.app.flow_control.is_active()):
            return
        now = time.monotonic()
        if now - self._positions_checked >= POSITION_CHECK_S:
            self._positions_checked = now
            await self._read_skipped_again()
        # A copy: the seeks below await, and a rebalance's seek may clear the chains.
        for tp, chain in list(self._chains.items()):
            head = chain[0] if chain else None
            if head is None or head.done or head.taken or head.tracked:
                continue
            if now - head.fetched_at < LOST_AFTER_S:
                continue
            if self._chains.get(tp) is not chain or tp not in self.assignment():
                continue  # revoked, or sought again, since the copy: nothing to read here
            log.warning(
                "%s: offsets %d-%d were fetched but no stream took them; reading them again",
                tp,
                head.first_offset,
                head.offset,
            )
            await self._read_again_from(tp, head)

    async def admit(self, batch: BatchMessage) -> bool:
        """Whether an agent may process ``batch``: every batch of its partition fetched
        before it was taken by an agent already. Otherwise the agent skips it.

        The tables' and the views' stages count a partition's records in offset
        order (the aggregate takes a record behind a piece's newest offset for
        counted; a rollup row's version is its batch's end offset), so a batch
        may not overtake one that Faust dropped on its way (see
        :meth:`_read_lost_again`): the partition is read again from the one
        dropped, and this batch, no longer in the chain, comes again after it.
        A batch not in its partition's chain (read again since it was fetched)
        is skipped likewise.
        """
        chain = self._chains.get(batch.tp)
        for earlier in chain or ():
            if earlier is batch:
                batch.taken = True
                # Faust commits only the partitions it has an acknowledgement list for,
                # and acknowledges a TopicBatch under its first batch's partition. Its
                # check that each partition's stream keeps up (verify_event_path) reads
                # when a stream last took that partition's event, which the stream
                # records for the first batch's partition too: without this, a catch-up
                # longer than stream_processing_timeout would log every other partition
                # as "not processing", again at every check.
                self._acked.setdefault(batch.tp, [])
                monitor = self.app.monitor
                if monitor is not None:
                    monitor.stream_inbound_time[batch.tp] = time.monotonic()
                return True
            if not earlier.taken:
                log.warning(
                    "%s: offsets %d-%d were fetched but no agent took them before "
                    "offsets %d-%d; reading them again",
                    batch.tp,
                    earlier.first_offset,
                    earlier.offset,
                    batch.first_offset,
                    batch.offset,
                )
                await self._read_again_from(batch.tp, earlier)
                return False
        return False

    async def _read_again_from(self, tp: TP, batch: BatchMessage) -> None:
        """Forget ``tp``'s chain and read the partition again from ``batch`` on."""
        self._chains[tp].clear()
        self._gap_ends.pop(tp, None)  # it lies past the batch read again
        self._tail_checks.pop(tp, None)
        self._next[tp] = batch.first_offset
        await self.seek(tp, batch.first_offset)

    async def _read_skipped_again(self) -> None:
        """Seek back a partition whose fetch position ran past what was delivered; commit
        past the offsets if Kafka itself skipped them.

        Between two fetch rounds every record fetched was either delivered (and
        ``_next`` moved past it) or dropped on purpose with a seek; a position
        beyond ``_next`` means either records were taken from the client and
        dropped without one (Faust's loop skips records of a partition that left
        its active set meanwhile), or offsets that hold no record for a reader:
        a transaction's commit or abort marker, an aborted transaction's records,
        offsets compacted away. With no new record after them, nothing else would
        ever reveal the gap (seen: a drain waiting on two partitions for good; a
        site's transactional producer left a marker after its last record, and
        the partition's commit stopped before it for good). So the partition is
        read again from ``_next``; if that delivers nothing, drops nothing here,
        and the position passes ``_next`` again, the offsets are Kafka's own: the
        sequence moves past them and they are committed once every batch before
        them is done.
        """
        checked = [tp for tp in self.assignment() if tp in self._next]
        positions = await self._thread.positions(checked) if checked else {}
        for tp, position in positions.items():
            expected = self._next.get(tp)
            if position is None or expected is None or position <= expected:
                continue
            if self._tail_checks.get(tp) == expected and tp not in self._dropped:
                log.debug("%s: offsets %d-%d hold no record to read", tp, expected, position - 1)
                del self._tail_checks[tp]
                self._next[tp] = position
                self._gap_ends[tp] = position
                # Faust commits only partitions with an acknowledgement list: one that
                # never delivered a message in this process (a restart, and nothing
                # but an aborted transaction since) would keep its commit, and a
                # drain wait on it, for good.
                self._acked.setdefault(tp, [])
                continue
            log.info(
                "%s: offsets %d-%d were fetched but not delivered; reading them again",
                tp,
                expected,
                position - 1,
            )
            self._tail_checks[tp] = expected
            self._dropped.discard(tp)
            await self.seek(tp, expected)

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets; everything delivered after them is read
        again, except what this generation delivered in sequence from them.

        Once a new assignment's tables are recovered, Faust resumes the stream
        partitions and only then seeks them to their committed offsets. Until a
        generation's first seek, :meth:`getmany` delivers no stream batch: one
        fetched meanwhile starts wherever the fetch stood, and one that started
        past the committed offset was processed before the records the seek
        then read (out of order: see :meth:`admit`). A seek of the generation may precede the
        recovery's (a fetch while flow was suspended): batches delivered in
        sequence from it were processed, and read again would count twice
        (measured before 2026-12-03: every input of a start with a backlog
        counted twice in ``exnet_events_received_total``, each rejection put on
        ``exnet.deadletter`` twice). So a partition keeps its batches when they
        are all of the current generation and begin at its committed offset, or
        its beginning if it has none; it reads on after them, and its commits
        follow them as ever. Faust reads the committed offsets from Kafka: a
        commit of done batches sent before and landing after is not in them, so
        a partition resumes past the last commit this generation sent
        (``_released``) when it is further on (a start with a backlog on a
        3-broker TLS cluster counted up to a third of its inputs twice,
        2026-12-03).
        """
        generation = self.app.consumer_generation_id
        await super().perform_seek()
        assigned = [tp for tp in self.assignment() if not self._is_changelog_tp(tp)]
        committed = {tp: self._committed_offset[tp] for tp in assigned}
        starts = {tp: offset for tp, offset in committed.items() if offset}
        uncommitted = [tp for tp in assigned if tp not in starts]
        beginnings: Mapping[TP, int] = (
            await self.earliest_offsets(*uncommitted) if uncommitted else {}
        )
        starts.update(beginnings)
        # Nothing awaits from here until the sequences are set: no fetch is delivered
        # in between (one answered later from the start is dropped by _in_sequence).
        # Not the seek of a fetch while flow is suspended, nor one a rebalance overtook.
        keeping = self.flow_active and self.app.consumer_generation_id == generation
        # This generation's batches that are done and whose commit was sent but had
        # not landed when Faust read the committed offsets: not read again.
        released = {
            tp: end
            for tp, (released_in, end) in (self._released.items() if keeping else ())
            if released_in == generation and tp in starts and end > starts[tp]
        }
        resume = {**starts, **released}
        kept = {
            tp: (chain, self._next[tp])
            for tp, chain in (self._chains.items() if keeping else ())
            if chain
            and tp in self._next
            and chain[0].first_offset == resume.get(tp)
            and all(batch.generation_id == generation for batch in chain)
        }
        self._chains.clear()  # everything after the committed offsets is read again
        self._skips.clear()
        self._tail_checks.clear()
        self._dropped.clear()
        self._gap_ends.clear()
        self._next = dict(resume)
        for tp, (chain, after) in kept.items():
            self._chains[tp] = chain
            self._next[tp] = after
        # Under the generation whose committed offsets these are: a rebalance that
        # overtook the awaits above has a seek of its own to come.
        self._generation_start = (generation, dict(starts))
        unkept = {tp: offset for tp, offset in {**beginnings, **released}.items() if tp not in kept}
        if unkept:
            await self.seek_wait(unkept)  # also resets Faust's read offsets
        for tp, (_, after) in kept.items():
            await self.seek(tp, after)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust's revoke (which waits for the streams, commits what is done, and sends
        the app's revoke signal), then forget the revoked partitions' sequences: a
        partition that moved to another worker must not be sought, nor its batches
        read again, here."""
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._chains.pop(tp, None)
            self._next.pop(tp, None)
            self._skips.pop(tp, None)
            self._tail_checks.pop(tp, None)
            self._gap_ends.pop(tp, None)
            self._released.pop(tp, None)
            self._dropped.discard(tp)

    def started_at(self, tp: TP, generation: int) -> int | None:
        """The offset the consumer group ``generation`` started reading ``tp`` at (its
        committed offset, or its beginning); None before that generation's seek, or
        if ``tp`` is not one of its stream partitions."""
        if self._generation_start is None or self._generation_start[0] != generation:
            return None
        return self._generation_start[1].get(tp)

    def on_buffer_full(self, tp: TP) -> None:
        # Faust takes a partition whose stream buffer is under pressure out of the
        # fetch set, and only a pressure-drop callback of mode's queue puts it back:
        # one more way for a partition to sit unfetched. A full buffer already
        # blocks the fetch loop (the conductor awaits the put), which bounds
        # memory: no partition is ever taken out.
        return

    def on_buffer_drop(self, tp: TP) -> None:
        return

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # A batch spans many offsets by design; the chains below decide what is
        # committed, so Faust's gap tree would only grow. Changelog partitions are
        # read for recovery only, and never committed.
        return

    def _new_offset(self, tp: TP) -> int | None:
        if self._is_changelog_tp(tp):
            offset: int | None = super()._new_offset(tp)
            return offset
        self._acked[tp].clear()  # Faust's per-message record; the chain is ours
        self._acked_index[tp].clear()
        chain = self._chains.get(tp)
        # The generation that delivered the last batch released: an earlier one's
        # batches, done late, may be missing from what the recovery read.
        released_in = self.app.consumer_generation_id
        for batch in chain or ():
            if not batch.done:
                break
            released_in = batch.generation_id or 0
        end = commit_end(chain) if chain else None
        gap_end = self._gap_ends.get(tp)
        if gap_end is not None and not chain:  # every batch before the gap is done
            end = max(end or 0, gap_end)
        if gap_end is not None and end is not None and end >= gap_end:
            del self._gap_ends[tp]
        if end is not None:
            self._released[tp] = (released_in, end)
        head = chain[0] if chain else None
        waited = time.monotonic() - head.fetched_at if head is not None else 0.0
        if head is not None and waited > STUCK_WARNING_S * (head.warnings + 1):
            head.warnings += 1
            log.warning(
                "%s: offsets %d-%d taken but not done for %.0f s; commits wait for them",
                tp,
                head.first_offset,
                head.offset,
                waited,
            )
        return end


class _OpenBatch:
    """Messages for one partition not yet handed to aiokafka, and their acknowledgement."""

    __slots__ = ("acked", "builder", "handed")

    def __init__(self, builder: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.builder = builder
        #: Completes once Kafka acknowledged the batch (or fails with the producer's error).
        self.acked: asyncio.Future[Any] = loop.create_future()
        #: Set once aiokafka took the batch: nothing more may be appended to it.
        self.handed = asyncio.Event()


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer, with one call that delivers a batch's messages."""

    logger = _FAUST_LOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._partition_counts: dict[str, int] = {}
        #: Per (topic, partition): the batch taking messages until aiokafka takes it.
        self._open: dict[tuple[str, int], _OpenBatch] = {}
        self._handing: set[asyncio.Future[Any]] = set()

    def _settings_extra(self) -> Mapping[str, Any]:
        # Idempotent as well as acks=all (Faust sets both only inside transactions): a
        # retried send after a broker fails over is not written twice.
        return {"acks": "all", "enable_idempotence": True}

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (looked up once)."""
        count = self._partition_counts.get(topic)
        if count is None:
            count = len(await self._ensure_producer().partitions_for(topic))
            self._partition_counts[topic] = count
        return count

    async def deliver(self, messages: Iterable[Outgoing]) -> asyncio.Future[Any]:
        """Hand ``messages`` to Kafka; the returned future completes once Kafka
        acknowledged every one (acks=all), or fails with the producer's error.

        Each partition's messages are appended, in order, to that partition's
        open record batch, which aiokafka takes as soon as it has sent the
        partition's previous one. aiokafka queues one batch per partition and
        sends one request per broker at a time: handing it each agent batch's
        messages and waiting for it to take them (as ``send_batch`` does) would
        hold the agent for a produce round trip per batch, which at a few
        thousand events a second (small batches) was most of the pipeline's
        latency. A message with no partition goes where Kafka's default
        partitioner puts its key. Returns once the messages are appended
        (waiting only when a partition's open batch is full).
        """
        groups: dict[tuple[str, int], list[Outgoing]] = defaultdict(list)
        for message in messages:
            topic, partition, key, _, _, _ = message
            if partition is None:
                partition = default_partition(key or b"", await self.partitions(topic))
            groups[(topic, partition)].append(message)
        pending: list[asyncio.Future[Any]] = []
        for (topic, partition), group in groups.items():
            await self._append(topic, partition, group, pending)
        return asyncio.gather(*pending)

    async def _append(
        self, topic: str, partition: int, group: list[Outgoing], pending: list[asyncio.Future[Any]]
    ) -> None:
        """Append ``group`` to the partition's open batches; their futures go to ``pending``."""
        batch = self._open.get((topic, partition))
        for _, _, key, value, headers, timestamp in group:
            while True:
                if batch is None:
                    batch = self._open_batch(topic, partition)
                appended = batch.builder.append(
                    timestamp=timestamp, key=key, value=value, headers=headers
                )
                if appended is not None:
                    break
                if batch.builder.record_count() == 0:
                    size = len(value) if value is not None else 0
                    raise ValueError(
                        f"a {size}-byte message for {topic} exceeds the producer's batch size"
                    )
                pending.append(batch.acked)  # full: wait until aiokafka takes it
                await batch.handed.wait()
                batch = self._open.get((topic, partition))
        if batch is not None:
            pending.append(batch.acked)

    def _open_batch(self, topic: str, partition: int) -> _OpenBatch:
        producer = self._ensure_producer()
        batch = _OpenBatch(producer.create_batch(), asyncio.get_running_loop())
        self._open[(topic, partition)] = batch
        task = asyncio.ensure_future(self._hand_over(topic, partition, batch))
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)
        return batch

    async def _hand_over(self, topic: str, partition: int, batch: _OpenBatch) -> None:
        """Give ``batch`` to aiokafka once it sent the partition's previous batch."""
        try:
            acked = await self._ensure_producer().send_batch(
                batch.builder, topic, partition=partition
            )
        except asyncio.CancelledError:
            self._close(topic, partition, batch)
            batch.acked.cancel()
            raise
        except Exception as exc:  # the producer's error is the delivery's
            self._close(topic, partition, batch)
            batch.acked.set_exception(exc)
            return
        self._close(topic, partition, batch)  # before anything else can append to it
        acked.add_done_callback(lambda future: _copy_outcome(future, batch.acked))

    async def flush(self) -> None:
        """Wait until Kafka acknowledged (or refused) everything delivered so far,
        including messages still in open batches that aiokafka has not taken.

        Faust flushes before a rebalance's recovery lays the changelogs over the
        tables: a changelog record still on its way would be left out, and the
        table would keep an older value than the batches that are done (so
        never read again) made it.
        """
        if self.app.should_stop:  # the app's last flush: as long as _StopWait allows
            await _stop_wait(self.transport).wait("the producer's flush", self._flush())
        else:
            await self._flush()

    async def _flush(self) -> None:
        await self._handed_over()
        await super().flush()

    def _close(self, topic: str, partition: int, batch: _OpenBatch) -> None:
        if self._open.get((topic, partition)) is batch:
            del self._open[(topic, partition)]
        batch.handed.set()

    async def on_stop(self) -> None:
        # Batches appended but not yet taken by aiokafka: hand them over, so that
        # stopping aiokafka flushes them with the rest.
        stop_wait = _stop_wait(self.transport)
        if self._handing:
            await stop_wait.wait("handing the last batches to aiokafka", self._handed_over())
        if self._open:
            # Never acknowledged, so their batches were not committed: read again next time.
            log.warning("stopping with %d record batches not handed to Kafka", len(self._open))
        # aiokafka's close waits, with no end, for Kafka to acknowledge what it holds.
        await stop_wait.wait("the producer's close", super().on_stop())

    async def _handed_over(self) -> None:
        """Until every open batch appended so far is taken by aiokafka."""
        while self._handing:
            await asyncio.wait(set(self._handing))


def _copy_outcome(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


@functools.lru_cache(maxsize=65_536)
def default_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition for ``key`` (murmur2, as every Kafka client computes it).

    Remembered per key: the keys repeat (participants) and the clients' murmur2
    is pure Python, a cost the profile showed on every accepted event.
    """
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class BatchTable(faust.Table[Any, Any]):
    """A Faust table whose writes are delivered with the batch that made them.

    Reads, recovery from the changelog and standby handling are Faust's. A
    write goes into the store and onto :func:`current_batch`'s changelog list
    (same partition as the batch: the table's keys are co-partitioned with
    the agent's input), which the agent delivers with its outputs.
    """

    logger = _FAUST_LOG
    _store_dict: MutableMapping[Any, Any] | None = None  # see _entries
    _changelog_name_value: str | None = None

    def get(self, key: Any, default: Any = None) -> Any:
        # Straight from the memory store's dict: Faust's (and its store's) Mapping.get
        # raise and catch a KeyError through several layers for every missing key
        # (most keys, for dedup), which cost more than the stage itself.
        return self._entries().get(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        # What Faust's table does (on_key_set, then the store), minus mode's layers:
        # with them, a write cost more than a stage's own work on the key (the
        # aggregate stage spent 47% of its time in the table's layers, 2026-12-02).
        self.on_key_set(key, value)
        self._entries()[key] = value

    def on_key_set(self, key: Any, value: Any) -> None:
        batch = current_batch()
        batch.changelog.append((self._changelog_name(), batch.partition, key, value, [], None))

    def _entries(self) -> MutableMapping[Any, Any]:
        """The memory store's dict (``store="memory://"``), which Faust and the store
        only ever update in place."""
        if self._store_dict is None:
            store = self.data
            if not isinstance(store, MemoryStore):
                raise TypeError(f"exnet's tables are kept in memory, not in {store!r}")
            self._store_dict = store.data
        return self._store_dict

    def _changelog_name(self) -> str:
        if self._changelog_name_value is None:
            self._changelog_name_value = self.changelog_topic.get_topic_name()
        return self._changelog_name_value

    def on_key_del(self, key: Any) -> None:
        raise NotImplementedError("exnet's tables only grow")

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]]) -> None:
        """Recovery: each event's message is a :class:`BatchMessage` of changelog
        records (:meth:`Consumer.getmany`); Faust's store applies their records."""
        records = [
            _ChangelogRecord(record.key, record.value, record)
            for event in batch
            for record in cast(BatchMessage, event.message).records
        ]
        # The store reads only what _ChangelogRecord has of an event.
        super().apply_changelog_batch(cast(list[EventT[Any]], records))


class _ChangelogRecord(NamedTuple):
    """What a Faust store reads of a changelog event (the serializers are raw): its
    ``key``, ``value``, and ``message.value`` and ``message.partition`` (the aiokafka
    record's)."""

    key: bytes | None
    value: bytes | None
    message: Any


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with this module's consumer and producer, and its
    topic declarations retried while Kafka fails them for a broker that died."""

    Consumer = Consumer
    Producer = Producer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The stop's waits on Kafka, shared by the consumer and the producer.
        self.stop_wait = _StopWait()

    async def _create_topic(
        self,
        owner: Any,
        client: Any,
        topic: str,
        partitions: int,
        replication: int,
        **kwargs: Any,
    ) -> None:
        """Faust's declaration of ``topic`` (its leader topic, a table's changelog),
        asked again for up to :data:`DECLARE_RETRY_S` seconds while Kafka fails it
        with a retriable error, the client's metadata refreshed in between; raised
        at once when ``owner`` stops.

        Faust asks the first broker of its client's metadata for the controller and
        sends the request there: a broker of the cluster killed a moment before is
        listed until its peers fence it (9 s), and the worker started then exited 1
        with ``NodeNotReadyError`` (in one of three starts right after a kill,
        2026-12-03). exnet's own start requests are retried the same way
        (``exnet.runner``).
        """
        from aiokafka.errors import KafkaError, KafkaTimeoutError
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

        def retriable(exc: BaseException) -> bool:
            kafka = isinstance(exc, KafkaError) and (
                exc.retriable or isinstance(exc, KafkaTimeoutError)
            )
            return kafka and not owner.should_stop

        async def waiting(state: Any) -> None:
            log.warning(
                "Kafka failed to declare topic %s (%r); asking again in %.1f s",
                topic,
                state.outcome.exception(),
                state.next_action.sleep,
            )
            await client.force_metadata_update()

        retrying = AsyncRetrying(
            retry=retry_if_exception(retriable),
            wait=wait_exponential(multiplier=0.25, max=5),
            stop=stop_after_delay(DECLARE_RETRY_S),
            sleep=owner.sleep,  # returns at once when the worker stops
            before_sleep=waiting,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await super()._create_topic(owner, client, topic, partitions, replication, **kwargs)


def register(transports: FactoryMapping[Any]) -> None:
    """Make :data:`SCHEME` URLs select :class:`Transport` (idempotent)."""
    transports.aliases[SCHEME] = f"{__name__}:Transport"


#: Seconds the stopped worker's loop keeps running for the callbacks its closing
#: connections scheduled, before it is closed.
LOOP_CLOSE_GRACE_S = 0.05


class Worker(faust.Worker):
    """Faust's worker, but its loop is closed 0.05 s after the app stopped, not 1 s.

    mode's ``Worker._shutdown_loop`` runs a last task that sleeps a fixed second
    (``_sentinel_task``) before it closes the loop, whatever is left to do: a
    second of every stop (of ``exnet up --drain``'s 7 s on a small backlog). By
    then every service has stopped and every task was gathered; what can remain
    is the callbacks that closing sockets scheduled, which the loop runs in its
    next iterations.
    """

    logger = _FAUST_LOG
    #: Called with a signal's number when it asks the worker to stop (first time only):
    #: mode's own line for it is INFO on a logger exnet keeps at WARNING, so a stop
    #: from outside left no word in the log (an outside check).
    on_signal: Callable[[int], None] | None = None

    def _schedule_shutdown(self, signal: Signals) -> None:
        if not self._signal_stop_time and self.on_signal is not None:
            self.on_signal(signal.value)
        super()._schedule_shutdown(signal)

    async def _sentinel_task(self) -> None:
        await asyncio.sleep(LOOP_CLOSE_GRACE_S)


class TableManager(FaustTableManager):
    """Faust's table manager, without the second it sleeps before it starts.

    Faust's ``TableManager.on_start`` waits a fixed second before it registers the
    tables' changelog channels and starts recovery (a window in which an app may
    still define tables); the consumer does not subscribe until then. exnet's
    tables are all made in :func:`streams.app.create_app`, before the worker
    starts, so the wait was a second of every start and nothing else. The rest
    is Faust's own start (faust-streaming 0.15's body), in its order.
    """

    logger = _FAUST_LOG

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()
