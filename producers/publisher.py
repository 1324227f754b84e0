"""The site's publisher: validate each event, spool it, send it to Kafka.

What callers may assume (the delivery guarantee):

- :meth:`Publisher.publish` validates the event against the contracts and
  returns the outcome. A rejected event is never sent and never spooled.
- Within one publisher's life (one ``exnet publish`` run: all its files and
  standard input), an ``event_id`` it already accepted with other content
  (another canonical event: SPEC §2) is rejected as ``conflicting_duplicate``,
  naming the FILE:LINE (``where``) of the first copy, as the platform would
  reject it, whether that copy was sent or spooled; an identical re-send,
  however formatted, is accepted and sent (the platform drops it as a
  duplicate). Events of earlier runs (resent from the spool) are not compared.
- An accepted event is first buffered in memory, then written to the spool
  (``<var_dir>/spool``, fsynced) *before* it is handed to Kafka, in groups of
  :data:`COMMIT_EVENTS` events or :data:`COMMIT_BYTES` bytes. From that moment
  it is durable: it is acknowledged by Kafka or waits in the spool, whatever
  happens to the process (``kill -9`` included).
- :meth:`Publisher.flush` and :meth:`Publisher.close` commit the buffer and
  wait (at most about :data:`DELIVERY_TIMEOUT_MS`) for Kafka's
  acknowledgements. After ``close`` every accepted event is either
  acknowledged (``sent``) or in the spool (``spooled``); none is in between.
  Events buffered but not yet committed when the process dies are lost like
  any unsent work: ``close`` (or leaving the ``with`` block) is the commit point.
- Spooled events are sent by :func:`flush_spool` (``exnet spool flush``, and
  the start of every ``exnet publish``), each once; a segment is locked while
  one process sends it. An event is sent twice only when Kafka stored it but
  the spool never recorded the acknowledgement (the process died, or the
  acknowledgement timed out, in between); downstream deduplication by
  ``event_id`` drops such copies. Spooled events go to the physical topic
  they were meant for when spooled (the topic prefix of that run).
- A broker that cannot be reached is noticed within seconds
  (:data:`CONNECT_TIMEOUT_MS`, :data:`DELIVERY_TIMEOUT_MS`): from then on the
  publisher only spools, for the rest of its life, and never blocks for minutes.

Messages go out with the original bytes as value (nothing is re-serialised),
the ``participant_id`` as key, to the physical topic of the event's type.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import struct
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self

import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAuthorizationFailedError
from kafka.partitioner.default import murmur2

from contracts import (
    INPUT_TOPICS,
    Accepted,
    FieldIssue,
    Reason,
    Rejected,
    Topic,
    Validator,
    load_registry,
    topic_name,
)
from contracts.errors import ConfigError
from contracts.validation import Outcome
from contracts.wire import uuid_bytes
from exnet.settings import KafkaRefusals, Settings
from producers.spool import (
    ClaimedSegment,
    SegmentWriter,
    Spool,
    SpooledEvent,
    SpoolWriteError,
    seq_ranges,
)

__all__ = [
    "COMMIT_BYTES",
    "COMMIT_EVENTS",
    "CONNECT_TIMEOUT_MS",
    "DELIVERY_TIMEOUT_MS",
    "Checker",
    "FlushSummary",
    "PublishSummary",
    "Publisher",
    "SetAside",
    "connect_producer",
    "flush_spool",
    "missing_input_topics",
    "producer_config",
    "require_input_topics",
    "spool_of",
]

log = logging.getLogger(__name__)

# --- producer settings (shared by the publisher, the simulator and the bench) ----
#: How long to try reaching a broker at start: a site's run learns within seconds
#: that Kafka is down, and spools.
CONNECT_TIMEOUT_MS: Final = 5_000
#: One produce request's wait for the broker's answer before it is retried.
REQUEST_TIMEOUT_MS: Final = 5_000
#: The longest an event waits for acknowledgement (retries included) before it
#: counts as not delivered and stays spooled. Must exceed linger + request timeout.
DELIVERY_TIMEOUT_MS: Final = 15_000
#: The longest ``send`` blocks for a topic's metadata (an unknown topic, a lost broker).
MAX_BLOCK_MS: Final = 5_000
#: Batching: wait up to this long for a batch to fill; bounds the latency added.
LINGER_MS: Final = 20
#: Batching: bytes per partition batch (about 800 events of ~300 bytes).
BATCH_BYTES: Final = 256 * 1024
#: Compression: none. kafka-python compresses gzip at level 9 in Python's
#: sender thread: measured on this 2-core host, +20% CPU per event and ~25%
#: lower publish throughput, for loopback traffic that gains nothing from it.
#: lz4/zstd would need ``cramjam`` in the aiokafka (Faust) consumers, which the
#: project does not install. A topic's ``compression.type`` can still
#: compress at rest, broker-side.
COMPRESSION: Final[str | None] = None
#: Longest wait in flush/close for outstanding acknowledgements (delivery timeout
#: plus slack), so a dead broker never holds a run for minutes.
FLUSH_TIMEOUT_S: Final = DELIVERY_TIMEOUT_MS / 1000 + 5

# --- spool commit groups ---------------------------------------------------
#: Events written (and fsynced) to the spool together before they are sent:
#: one fsync (1-4 ms here) per group keeps the journal's cost a few per cent,
#: and sending a group sorted by partition fills fewer, fuller batches. A
#: process killed at the wrong moment resends at most the groups in flight.
COMMIT_EVENTS: Final = 2_000
#: ... or fewer events when they reach this many bytes.
COMMIT_BYTES: Final = 1024 * 1024
#: Groups awaiting acknowledgement before ``publish`` waits for the oldest
#: (bounds memory when the broker slows down or vanishes mid-run).
MAX_INFLIGHT_GROUPS: Final = 50
#: How long ``exnet spool flush`` waits for a flush already running elsewhere.
FLUSH_LOCK_WAIT_S: Final = 600.0
#: Keys whose partition hash is remembered before the memo starts over (bounds memory).
_KEY_HASH_CACHE: Final = 100_000
#: A live publisher's segment is retired (a new one started) past this size, so
#: a long-running site process never grows one file without bound.
SEGMENT_ROTATE_BYTES: Final = 64 * 1024 * 1024


# --- conflicting duplicates within one run ---------------------------------------
#: Events one run remembers at most for the check (about 150 bytes each: 38 MB), so
#: that a long-running feed (``tail -F export.jsonl | exnet publish -``) stays bounded.
REMEMBERED_EVENTS: Final = 250_000
#: What is remembered of each accepted event: the 16 bytes of its fingerprint, the
#: index of the input that sent it, and the line number there.
_SENT = struct.Struct("<16sIQ")
#: The input index of an event published without a ``where``.
_NO_SOURCE: Final = 0xFFFF_FFFF


class _SentEvents:
    """event_id -> content fingerprint and FILE:LINE of every event one publisher accepted.

    So that a later line reusing an event_id with other content is rejected before
    it is sent, as the platform would reject it (``conflicting_duplicate``): only the
    first accepted copy is remembered, as the platform's deduplication does. Content
    is compared as the platform compares it: the fingerprint of the canonical event
    (:meth:`~contracts.validation.Accepted.fingerprint`), so key order, time-zone and
    number spelling, and the event_id's case do not make two copies differ.

    Cost per accepted event, for the whole run: a dict entry keyed by the event_id's
    16 UUID bytes with a 28-byte value (fingerprint, input index, line), about
    150 bytes with the dict's own share (measured: 152 MB for a million events),
    for the first :data:`REMEMBERED_EVENTS` events (later ones are checked against
    those, not remembered), freed by :meth:`Publisher.close`; and about
    5 us of CPU, mostly the canonical JSON and its digest (the publisher's work per
    event without Kafka went from about 15 to about 20 us, measured on a busy 2-core
    host).
    """

    __slots__ = ("_full", "_index", "_seen", "_sources", "repeats")

    def __init__(self) -> None:
        self._seen: dict[bytes, bytes] = {}
        #: Events that repeated a remembered one exactly (sent: the platform drops them).
        self.repeats = 0
        self._full = False
        #: Input names (files, ``<stdin>``), by their index in the remembered values.
        self._sources: list[str] = []
        self._index: dict[str, int] = {}

    def check(self, accepted: Accepted, where: tuple[str, int] | None) -> Rejected | None:
        """The rejection of ``accepted`` when its event_id came earlier with other
        content; else None, and the event is remembered if it is the first copy."""
        event_id = accepted.event_id  # lower-case: the model stores it so
        key = uuid_bytes(event_id)
        digest = bytes.fromhex(accepted.fingerprint())
        prior = self._seen.get(key)
        if prior is None:
            if len(self._seen) < REMEMBERED_EVENTS:
                self._seen[key] = _SENT.pack(digest, *self._where(where))
            elif not self._full:
                self._full = True
                log.warning(
                    "%d events published in this run: later ones are not compared with each "
                    "other for conflicting duplicates (the platform still rejects those)",
                    REMEMBERED_EVENTS,
                )
            return None
        first_digest, source, line = _SENT.unpack(prior)
        if first_digest == digest:
            self.repeats += 1
            return None  # the same event again: sent, the platform counts it a duplicate
        earlier = f" at {self._sources[source]}:{line}" if source != _NO_SOURCE else ""
        issue = FieldIssue(
            "event_id",
            f"event {event_id} came earlier in this run{earlier} with other content; "
            "send a new event_id",
            Reason.CONFLICTING_DUPLICATE.value,
        )
        return Rejected(Reason.CONFLICTING_DUPLICATE, (issue,), None, event_id)

    def _where(self, where: tuple[str, int] | None) -> tuple[int, int]:
        if where is None:
            return _NO_SOURCE, 0
        name, line = where
        index = self._index.get(name)
        if index is None:
            index = self._index[name] = len(self._sources)
            self._sources.append(name)
        return index, line

    def clear(self) -> None:
        self._seen.clear()


def producer_config(settings: Settings, client_id: str = "exnet-publisher") -> dict[str, Any]:
    """kafka-python ``KafkaProducer`` settings: durable (acks=all, idempotent), batched."""
    return {
        **settings.kafka_client_config(),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": LINGER_MS,
        "batch_size": BATCH_BYTES,
        "compression_type": COMPRESSION,
        "bootstrap_timeout_ms": CONNECT_TIMEOUT_MS,
        "request_timeout_ms": REQUEST_TIMEOUT_MS,
        "delivery_timeout_ms": DELIVERY_TIMEOUT_MS,
        "max_block_ms": MAX_BLOCK_MS,
        "reconnect_backoff_max_ms": 1_000,
    }


def connect_producer(
    settings: Settings, client_id: str = "exnet-publisher", why: list[str] | None = None
) -> KafkaProducer | None:
    """A connected producer, or None when no broker answers within seconds; then
    ``why`` (when given) receives one line saying why (a refused login or TLS
    certificate, or Kafka unreachable)."""
    with KafkaRefusals(settings) as refusals:
        try:
            return KafkaProducer(**producer_config(settings, client_id))
        except KafkaError as exc:
            refused = refusals.reason()
            reason = refused or f"Kafka at {settings.kafka_bootstrap} is unreachable"
            log.info("%s (%s)", reason, exc)
        except ValueError as exc:  # a malformed bootstrap address
            raise ConfigError(
                f"EXNET_KAFKA_BOOTSTRAP {settings.kafka_bootstrap!r}: {exc}"
            ) from None
    if why is not None:
        why.append(reason)
    return None


def existing_topics(settings: Settings) -> set[str]:
    """The topics Kafka at the settings' bootstrap holds that this login may describe
    (a login allowed to write a topic may describe it). Raises ``KafkaError`` when no
    broker answers in :data:`CONNECT_TIMEOUT_MS`."""
    with _admin(settings) as admin:
        return set(admin.list_topics())


@contextlib.contextmanager
def _admin(settings: Settings) -> Iterator[KafkaAdminClient]:
    """A Kafka admin client of the publisher's, closed on leaving. Raises ``KafkaError``
    when no broker answers in :data:`CONNECT_TIMEOUT_MS`."""
    admin = KafkaAdminClient(
        **settings.kafka_client_config(),
        client_id="exnet-publisher",
        bootstrap_timeout_ms=CONNECT_TIMEOUT_MS,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    try:
        yield admin
    finally:
        admin.close()


def missing_input_topics(settings: Settings, existing: set[str] | None = None) -> list[str]:
    """The input topics (SPEC §2, under ``EXNET_TOPIC_PREFIX``) that Kafka at the
    settings' bootstrap does not hold: not in ``existing`` when given, else not in
    :func:`existing_topics` (which raises as it does).

    Why ask: a producer sending to a topic that does not exist waits for its
    metadata and times out exactly as when Kafka is down, and the events would
    be spooled for a Kafka that is up (a wrong prefix, or `exnet init` never run).
    """
    existing = existing_topics(settings) if existing is None else existing
    wanted = [topic_name(topic, settings.topic_prefix) for topic in INPUT_TOPICS]
    return [name for name in wanted if name not in existing]


def _topics_if_known(settings: Settings) -> set[str] | None:
    """:func:`existing_topics`, or None when Kafka does not answer (the sends find out)."""
    try:
        return existing_topics(settings)
    except KafkaError:
        return None


def require_input_topics(settings: Settings, producer: KafkaProducer) -> set[str] | None:
    """Close ``producer`` (connected to Kafka) and raise :class:`ConfigError`, naming
    them, when Kafka lacks input topics (:func:`missing_input_topics`); a Kafka gone
    since the producer connected is left for the producer's sends to find out.
    Returns Kafka's topics, as listed for the check (None: Kafka did not answer)."""
    existing = _topics_if_known(settings)
    if existing is None:
        return None
    missing = missing_input_topics(settings, existing)
    if missing:
        producer.close(timeout=0)
        hidden = _not_authorized(settings, missing)
        if hidden:  # they may well exist: Kafka hides a topic a login may not describe
            who = f"the login {settings.kafka_username!r}" if settings.kafka_username else "us"
            raise ConfigError(
                f"Kafka at {settings.kafka_bootstrap} does not let {who} write "
                f"{', '.join(hidden)}: publish with the "
                "login of the site whose events these are (its env file, EXNET_ENV_FILE), "
                "or ask the platform's operator to grant it (`exnet broker "
                "sync-principals` gives each site in the registry its login); check "
                f"EXNET_TOPIC_PREFIX too ({settings.topic_prefix!r} now)"
            )
        raise ConfigError(
            f"Kafka at {settings.kafka_bootstrap} has no topic {', '.join(missing)}: run "
            f"`exnet init` against it, or check EXNET_TOPIC_PREFIX ({settings.topic_prefix!r} now)"
        )
    return existing


def _not_authorized(settings: Settings, topics: list[str]) -> list[str]:
    """Those of ``topics`` that Kafka says this login may not describe (whether they
    exist, Kafka does not tell it); [] on a plaintext listener, or when Kafka does not
    answer the question."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return []
    try:
        with _admin(settings) as admin:
            described = admin.describe_topics(topics)
    except KafkaError:
        return []
    refused = TopicAuthorizationFailedError.errno
    return [t["name"] for t in described if t.get("error_code") == refused]


def spool_of(settings: Settings) -> Spool:
    """The spool directory of these settings: ``<var_dir>/spool``, made absolute (the
    default ``var_dir`` is relative to the working directory: a path printed for a
    site to find its waiting events again must not be)."""
    return Spool(settings.var_dir.resolve() / "spool")


# --- delivery: hand spooled events to Kafka, record acknowledgements ------------


class _AckTarget(Protocol):
    """Where a group's result goes: the segment that holds its events."""

    def settled(self, acked: list[tuple[int, int]], failed: int) -> None: ...


@dataclass(slots=True)
class _Group:
    target: _AckTarget
    first_seq: int
    count: int
    #: One future per event, None for an event never handed to Kafka.
    futures: list[Any]

    def done(self) -> bool:
        return all(future is None or future.is_done for future in self.futures)


class _Delivery:
    """Sends groups of spooled events and reports each group's outcome to its segment.

    Goes offline for good at the first failure: the remaining events are only
    spooled, so a dead broker costs one timeout, not one per event.
    """

    def __init__(self, producer: KafkaProducer | None) -> None:
        self.producer = producer
        self.online = producer is not None
        self.problem: str | None = None if producer is not None else "Kafka is unreachable"
        self.sent = 0
        self.failed = 0
        self._groups: deque[_Group] = deque()
        #: murmur2 of each key seen (a participant sends many events; the hash
        #: is pure Python).
        self._key_hashes: dict[bytes, int] = {}

    @property
    def in_flight(self) -> int:
        return sum(group.count for group in self._groups)

    def _go_offline(self, problem: str) -> None:
        if self.online:
            log.warning("Kafka stopped acknowledging (%s): the rest goes to the spool", problem)
            self.online = False
            self.problem = problem

    def send(self, target: _AckTarget, first_seq: int, events: Sequence[SpooledEvent]) -> None:
        """Hand ``events`` (already durable in ``target``) to Kafka, or leave them spooled.

        The events go out grouped by partition, by a stable sort: each
        partition keeps its order, so a participant's events of one type reach
        Kafka in the order given (Kafka orders nothing across topics). One
        batch per partition fills at a time, which spares kafka-python most
        of its wake-ups and makes fewer, fuller batches.
        Partitions are the default partitioner's (murmur2 of the key), so a
        key lands where any Kafka client would put it.
        """
        futures: list[Any] = [None] * len(events)
        if self.online and self.producer is not None:
            try:
                self._send_by_partition(events, futures)
            except KafkaError as exc:
                self._go_offline(_described(exc))
        self._groups.append(_Group(target, first_seq, len(events), futures))
        self.settle()
        if len(self._groups) > MAX_INFLIGHT_GROUPS:
            self._wait_oldest()

    def _send_by_partition(self, events: Sequence[SpooledEvent], futures: list[Any]) -> None:
        producer = self.producer
        assert producer is not None  # noqa: S101  (checked by the caller)
        partitions: dict[str, list[int]] = {}
        hashes = self._key_hashes
        if len(hashes) > _KEY_HASH_CACHE:
            hashes.clear()
        placed: list[tuple[str, int]] = []
        for topic, key, _value in events:
            candidates = partitions.get(topic)
            if candidates is None:  # known metadata: a dict look-up; else waits max_block_ms
                candidates = partitions[topic] = sorted(producer.partitions_for(topic))
            hashed = hashes.get(key)
            if hashed is None:
                hashed = hashes[key] = murmur2(key) & 0x7FFFFFFF
            placed.append((topic, candidates[hashed % len(candidates)]))
        send = producer.send
        for index in sorted(range(len(events)), key=placed.__getitem__):
            topic, key, value = events[index]
            futures[index] = send(topic, value=value, key=key, partition=placed[index][1])

    def _wait_oldest(self) -> None:
        """Wait for the oldest group's acknowledgements, :data:`FLUSH_TIMEOUT_S` for the
        whole group; past that, Kafka counts as gone: the producer is aborted, which
        fails what it holds, and the rest of the run is only spooled.

        Why one deadline, and the abort: kafka-python 3.0.12 stopped expiring batches
        once its idempotent producer had lost its producer id to a dead broker (its
        sender skips the expiry while it has none), so after a broker's kill -9
        futures never completed, and waiting for each in turn, 20 s apiece, held
        `exnet publish` for hours (an outside check: 14 minutes with no output,
        the broker back for 2 of them)."""
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        oldest = self._groups[0]
        for future in oldest.futures:
            if future is not None and not future.is_done:
                # A failure (or the wait's own timeout) is read in settle().
                with contextlib.suppress(KafkaError):
                    future.get(timeout=max(0.0, deadline - time.monotonic()))
        if not oldest.done() and self.producer is not None:
            self._go_offline(f"no acknowledgement from Kafka in {FLUSH_TIMEOUT_S:g} s")
            _abort(self.producer)
            self.producer = None
        self.settle()

    def settle(self) -> None:
        """Record the outcome of every finished group, oldest first."""
        groups = self._groups
        while groups and groups[0].done():
            group = groups.popleft()
            first = group.first_seq
            acked = [
                first + i
                for i, f in enumerate(group.futures)
                if f is not None and f.exception is None
            ]
            failed = group.count - len(acked)
            if failed:
                problem = next((f.exception for f in group.futures if f and f.exception), None)
                self._go_offline(_described(problem) if problem else "not sent")
            self.sent += len(acked)
            self.failed += failed
            group.target.settled(seq_ranges(acked), failed)

    def drain(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait (bounded) for every outstanding acknowledgement."""
        if self.producer is not None and self._groups:
            try:
                self.producer.flush(timeout=timeout_s)
            except KafkaError as exc:
                self._go_offline(_described(exc))
        self.settle()

    def close(self, *, wait: bool = True) -> None:
        """Drain (unless not ``wait``), then close the producer; what is still
        unacknowledged stays spooled (a signal during the drain aborts it too)."""
        try:
            if wait:
                self.drain()
            else:
                self.settle()
        finally:
            if self.producer is not None:
                if self._groups:  # what the flush above could not deliver: abort it
                    _abort(self.producer)
                else:
                    self.producer.close(timeout=5)
                self.producer = None
            self.online = False
            self.settle()
            for group in self._groups:  # never completed (should not happen after close)
                group.target.settled([], group.count)
                self.failed += group.count
            self._groups.clear()


def _described(error: BaseException) -> str:
    """``KafkaTimeoutError: Timeout waiting for future``, once: kafka-python's errors
    name their class themselves (a site read it twice in a row, an outside check)."""
    name, text = type(error).__name__, str(error)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def _abort(producer: KafkaProducer) -> None:
    """Close ``producer`` at once: what Kafka has not acknowledged fails (its events
    are then counted as spooled).

    kafka-python's ``close(timeout=0)`` flushes first, and that flush raises
    KafkaTimeoutError while anything is unacknowledged, before the close can abort
    it (kafka-python 3.0; seen with two brokers of three down, where the brokers
    left answer but refuse writes: `exnet publish` ended in a traceback, exit 1,
    and the producer's ``__del__`` raised again). So on that error this does what
    the close does after a timed-out wait: force the sender to stop, which fails
    the unfinished batches; then nothing is pending and the close goes through.
    """
    try:
        producer.close(timeout=0)
    except KafkaTimeoutError:
        sender = producer._sender  # noqa: SLF001  # see above
        sender.force_close()
        sender.join(ABORT_WAIT_S)
        producer.close(timeout=0)


#: Seconds to wait for a forced producer's sender thread to stop (it stops at its
#: next wake-up; it aborts the unfinished batches on its way out).
ABORT_WAIT_S: Final = 10.0


# --- the publisher's own segments ---------------------------------------------


class _LiveSegment:
    """A segment this publisher writes: numbering, and when it may be deleted."""

    def __init__(self, writer: SegmentWriter) -> None:
        self.writer = writer
        self.next_seq = 0
        self.groups_out = 0
        self.unacked = 0
        self.acked = 0
        self.failed = 0
        self.retired = False

    def settled(self, acked: list[tuple[int, int]], failed: int) -> None:
        self.writer.append_acks(acked)
        count = sum(last - first + 1 for first, last in acked)
        self.acked += count
        self.failed += failed
        self.unacked -= count
        self.groups_out -= 1
        if self.retired and self.groups_out == 0:
            self.finish()

    def finish(self) -> None:
        """Delete the segment when every event was acknowledged, else leave it spooled."""
        if not self.writer.closed:
            self.writer.close(delete=self.unacked == 0)


@dataclass(frozen=True, slots=True)
class SetAside:
    """A damaged segment that a flush set aside, once its readable events were sent."""

    #: Where it is now (``<spool>/damaged/``).
    path: Path
    #: When its publisher created it (its header's ``created_at``), if readable.
    created_at: str | None
    damaged_bytes: int
    #: Byte offset of its first damaged stretch.
    damaged_at: int
    #: The files the run that spooled it read (its header's ``inputs``), if recorded.
    inputs: tuple[str, ...] = ()

    def text(self) -> str:
        """What happened and what to do, in a sentence for a site's data manager."""
        when = (
            f"around {self.created_at}"
            if self.created_at
            else "around the time its name starts with (UTC)"
        )
        what = (
            f"the files that run read ({', '.join(self.inputs)}), published {when}"
            if self.inputs
            else f"the files published {when}"
        )
        return (
            f"the spool file {self.path.name} was damaged on disk: {self.damaged_bytes} bytes "
            f"from byte {self.damaged_at} could not be read, so the events stored in them "
            f"were not sent. Its readable events were sent, and the file was moved to "
            f"{self.path.parent}. Publish again {what}: events Kafka already has are "
            "dropped as duplicates"
        )


@dataclass(frozen=True, slots=True)
class FlushSummary:
    """What one pass over the spool did."""

    sent: int = 0
    #: Events still waiting in the spool (Kafka down, or a segment in use).
    remaining: int = 0
    #: Unacknowledged events in segments other processes hold (running publishers).
    in_flight: int = 0
    segments_done: int = 0
    #: Segments another process holds (a running publisher or flusher).
    segments_busy: int = 0
    problem: str | None = None
    #: Topics that spooled events are for and Kafka does not have (events spooled
    #: under another EXNET_TOPIC_PREFIX, or before `exnet init`): their segments wait,
    #: and the segments after them are sent.
    missing_topics: tuple[str, ...] = ()
    #: Damaged segments set aside in this pass.
    set_aside: tuple[SetAside, ...] = ()


@dataclass(frozen=True, slots=True)
class PublishSummary:
    """A publisher's counts; after ``close`` ``accepted == sent + spooled + unsaved``."""

    accepted: int = 0
    invalid: int = 0
    sent: int = 0
    spooled: int = 0
    #: Accepted events not settled yet (buffered or awaiting acknowledgement).
    pending: int = 0
    invalid_by_reason: dict[Reason, int] = field(default_factory=dict)
    resent: FlushSummary = field(default_factory=FlushSummary)
    problem: str | None = None
    #: Accepted events that repeat, exactly, one accepted earlier in this run (sent
    #: all the same: the platform counts them as duplicates and drops them).
    repeated: int = 0
    #: Accepted events neither sent nor spooled, because the spool could not be
    #: written (``spool_error`` says why, and its ``remedy`` what would put it right;
    #: publishing stopped there).
    unsaved: int = 0
    spool_error: SpoolWriteError | None = None


class _ClaimTarget:
    """Routes a resent group's acknowledgements into the claimed segment."""

    def __init__(self, claimed: ClaimedSegment) -> None:
        self._claimed = claimed
        self.acked = 0

    def settled(self, acked: list[tuple[int, int]], failed: int) -> None:
        self._claimed.acknowledge(acked)
        self.acked += sum(last - first + 1 for first, last in acked)


def _flush_segments(
    spool: Spool, delivery: _Delivery, wait_s: float, existing: set[str] | None
) -> FlushSummary:
    with spool.flushing(wait_s) as holding:
        if not holding:
            state = spool.status()
            problem = "another process is flushing the spool"
            return FlushSummary(
                remaining=state.pending,
                in_flight=state.in_flight,
                problem=problem if state.pending else None,
            )
        return _flush_locked(spool, delivery, existing)


def _flush_locked(spool: Spool, delivery: _Delivery, existing: set[str] | None) -> FlushSummary:
    """Send the spool's segments in order. ``existing``: Kafka's topics (None: not
    known); a segment with events for a topic not among them is left as it is: sent,
    they would time out as if Kafka were down and take every segment after down too."""
    sent = done = busy = 0
    missing: set[str] = set()
    set_aside: list[SetAside] = []
    for path in spool.segment_paths():
        if not delivery.online:
            break
        with spool.claim(path) as claimed:
            if claimed is None:
                busy += 1
                continue
            pending = claimed.contents.pending()
            absent = (
                {event.topic for _, event in pending} - existing if existing is not None else set()
            )
            if absent:
                missing |= absent
                continue
            target = _ClaimTarget(claimed)
            for start in range(0, len(pending), COMMIT_EVENTS):
                group = pending[start : start + COMMIT_EVENTS]
                # A segment's pending events are numbered, not necessarily
                # contiguous: send runs of consecutive numbers as groups.
                for first, run in _consecutive_runs(group):
                    delivery.send(target, first, run)
            delivery.drain()
            sent += target.acked
            if claimed.contents.pending_count == 0:
                done += 1
        if claimed.set_aside_to is not None:  # released: damaged, all else sent
            contents = claimed.contents
            created = contents.header.get("created_at")
            set_aside.append(
                SetAside(
                    claimed.set_aside_to,
                    created if isinstance(created, str) else None,
                    contents.damaged_bytes,
                    contents.damaged[0][0],
                    contents.inputs,
                )
            )
    state = spool.status()
    remaining = state.pending
    problem = delivery.problem if remaining else None
    if missing:
        problem = (
            f"spooled events wait for {', '.join(sorted(missing))}, which Kafka does not have "
            "(spooled under another EXNET_TOPIC_PREFIX, or before `exnet init`): create the "
            "topics (`exnet init` with that prefix), or move their segments aside "
            "(`exnet spool status --json` names them)" + (f"; {problem}" if problem else "")
        )
    return FlushSummary(
        sent=sent,
        remaining=remaining,
        in_flight=state.in_flight,
        segments_done=done,
        segments_busy=busy,
        problem=problem,
        missing_topics=tuple(sorted(missing)),
        set_aside=tuple(set_aside),
    )


def _consecutive_runs(
    numbered: Sequence[tuple[int, SpooledEvent]],
) -> Iterable[tuple[int, list[SpooledEvent]]]:
    run: list[SpooledEvent] = []
    first = previous = -2
    for seq, event in numbered:
        if seq != previous + 1 and run:
            yield first, run
            run = []
        if not run:
            first = seq
        run.append(event)
        previous = seq
    if run:
        yield first, run


def flush_spool(settings: Settings, producer: KafkaProducer | None = None) -> FlushSummary:
    """Send every spooled event that no other process holds, oldest segment first.

    One flusher runs at a time (a lock file; a second waits up to
    :data:`FLUSH_LOCK_WAIT_S`, then finds the work done). Each event Kafka
    acknowledges is recorded in its segment at once, and a segment is deleted
    when all of its events are acknowledged; so an interrupted flush resumes
    where it stopped. Returns what remains.
    """
    spool = spool_of(settings)
    if not spool.segment_paths():
        return FlushSummary()
    own = producer is None
    why: list[str] = []
    if producer is None:
        producer = connect_producer(settings, "exnet-spool-flush", why)
    delivery = _Delivery(producer)
    if why:
        delivery.problem = why[0]
    existing = _topics_if_known(settings) if delivery.online else None
    try:
        return _flush_segments(spool, delivery, FLUSH_LOCK_WAIT_S, existing)
    finally:
        if own:
            delivery.close()


class Checker:
    """What :meth:`Publisher.publish` decides about each event, with nothing sent,
    spooled or connected: the contracts, the registry when ``EXNET_REGISTRY`` names
    one, and conflicting duplicates within the run (``exnet publish --check``).
    """

    def __init__(self, settings: Settings, validator: Validator | None = None) -> None:
        if validator is None:
            registry = load_registry(settings.registry) if settings.registry is not None else None
            validator = Validator(registry, settings.topic_prefix)
        self._validator = validator
        self._sent_events = _SentEvents()
        self.valid = 0
        #: reason -> invalid events.
        self.invalid_by_reason: Counter[Reason] = Counter()

    def publish(self, value: bytes, where: tuple[str, int] | None = None) -> Outcome:
        """The outcome :meth:`Publisher.publish` would give ``value`` at this point of
        the run (an accepted event is remembered, as a published one is)."""
        outcome = self._validator.validate_record(value)
        if isinstance(outcome, Accepted):
            conflict = self._sent_events.check(outcome, where)
            if conflict is not None:
                outcome = conflict
        if isinstance(outcome, Rejected):
            self.invalid_by_reason[outcome.reason] += 1
        else:
            self.valid += 1
        return outcome

    @property
    def invalid(self) -> int:
        return sum(self.invalid_by_reason.values())

    @property
    def repeated(self) -> int:
        """Valid events that repeat, exactly, one earlier in the run."""
        return self._sent_events.repeats

    def forget(self) -> None:
        """Free the run's memory of the events it accepted."""
        self._sent_events.clear()


class Publisher:
    """Validates events and delivers them to Kafka through the durable spool.

    Use it as a context manager (or call :meth:`close`); see the module
    docstring for what it guarantees. Not thread-safe: one thread publishes.
    """

    def __init__(
        self,
        settings: Settings,
        validator: Validator | None = None,
        *,
        connect: bool = True,
        inputs: Sequence[str] = (),
    ) -> None:
        """``connect=False`` never contacts Kafka: every accepted event is spooled.
        ``inputs``: the names of the files the events come from (absolute paths, ``-``
        for standard input), recorded in each spool segment this publisher writes."""
        self._settings = settings
        self._inputs = tuple(inputs)
        self._checker = Checker(settings, validator)
        self._spool = spool_of(settings)
        self._topics: dict[Topic, str] = {
            topic: topic_name(topic, settings.topic_prefix) for topic in INPUT_TOPICS
        }
        self._connect = connect
        self._delivery: _Delivery | None = None
        self._segment: _LiveSegment | None = None
        self._segments: list[_LiveSegment] = []
        self._buffer: list[SpooledEvent] = []
        self._buffer_bytes = 0
        self._resent = FlushSummary()
        #: Kafka's topics, listed once at the start (None: not known).
        self._kafka_topics: set[str] | None = None
        self._closed = False
        #: Why the spool refused a write; publishing stops (the buffer stays unsaved).
        self._spool_error: SpoolWriteError | None = None

    # -- life cycle ---------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Interrupted (a second Ctrl-C or SIGTERM: stop at once): what was read is
        # spooled, and what Kafka has not acknowledged yet is not waited for.
        self.close(wait=exc_type is not KeyboardInterrupt)

    def _start(self) -> _Delivery:
        """Connect to Kafka, once, when there is something to send (or :attr:`online`
        is asked). Raises :class:`ConfigError` when Kafka answers but lacks an input
        topic: events for it would wait in the spool for good."""
        if self._delivery is None:
            if self._closed:
                raise ValueError("the publisher is closed")
            why: list[str] = []
            producer = connect_producer(self._settings, why=why) if self._connect else None
            if producer is not None:
                self._kafka_topics = require_input_topics(self._settings, producer)
            self._delivery = _Delivery(producer)
            if not self._connect:
                self._delivery.problem = "not connecting to Kafka (spool only)"
            elif producer is None:
                self._delivery.problem = why[0] if why else "Kafka is unreachable"
        return self._delivery

    @property
    def online(self) -> bool:
        """Whether events are still being handed to Kafka (False once it failed)."""
        return self._start().online

    def resend_spool(self) -> FlushSummary:
        """Send what earlier runs left in the spool, through this publisher's producer.

        Call it before publishing (``exnet publish`` does), so older events go first.
        """
        if not self._spool.segment_paths():
            return self._resent
        delivery = self._start()
        if delivery.online:
            # Not waiting: if another process flushes, it sends these anyway.
            self._resent = _flush_segments(
                self._spool, delivery, wait_s=0, existing=self._kafka_topics
            )
        else:
            state = self._spool.status()
            self._resent = FlushSummary(
                remaining=state.pending, in_flight=state.in_flight, problem=delivery.problem
            )
        return self._resent

    # -- publishing ----------------------------------------------------------
    def publish(
        self, value: bytes | dict[str, Any], where: tuple[str, int] | None = None
    ) -> Outcome:
        """Validate one event and, when it is valid, queue it for delivery.

        ``value`` is the message as sent (bytes are sent as they are; a dict
        is serialised once with orjson). ``where``: the input's name and line
        number, named when a later event reuses this one's event_id with other
        content. Returns the validation outcome; a :class:`~contracts.Rejected`
        event (a ``conflicting_duplicate`` of an event accepted earlier by this
        publisher included) is dropped here.
        """
        if self._closed:
            raise ValueError("the publisher is closed")
        if not isinstance(value, bytes):
            value = orjson.dumps(value)
        outcome = self._checker.publish(value, where)
        if isinstance(outcome, Rejected):
            return outcome
        self._buffer.append(
            SpooledEvent(self._topics[outcome.topic], outcome.event.participant_id.encode(), value)
        )
        self._buffer_bytes += len(value)
        if len(self._buffer) >= COMMIT_EVENTS or self._buffer_bytes >= COMMIT_BYTES:
            self._commit()
        return outcome

    def _live_segment(self) -> _LiveSegment:
        segment = self._segment
        if segment is None or segment.writer.size >= SEGMENT_ROTATE_BYTES:
            if segment is not None:
                segment.retired = True
                if segment.groups_out == 0:
                    segment.finish()
            segment = _LiveSegment(self._spool.create_writer(self._inputs))
            self._segment = segment
            self._segments.append(segment)
        return segment

    def _commit(self) -> None:
        """Write the buffer to the spool (durably), then hand it to Kafka."""
        if not self._buffer:
            return
        if self._spool_error is not None:  # a copy: raising the stored one again grows it
            raise copy.copy(self._spool_error)
        delivery = self._start()
        events = self._buffer
        try:
            segment = self._live_segment()
            first = segment.next_seq
            segment.writer.append_events(first, events)  # write-ahead: durable before sending
        except SpoolWriteError as exc:  # neither spooled nor sent: see PublishSummary.unsaved
            self._spool_error = exc
            raise
        segment.next_seq += len(events)
        segment.unacked += len(events)
        self._buffer, self._buffer_bytes = [], 0  # only now: a failed write keeps them
        segment.groups_out += 1
        delivery.send(segment, first, events)

    def flush(self) -> PublishSummary:
        """Commit buffered events and wait (bounded) for Kafka's acknowledgements."""
        self._commit()
        if self._delivery is not None:
            self._delivery.drain()
        return self.summary()

    def close(self, *, wait: bool = True) -> PublishSummary:
        """Flush, stop the producer, and leave what Kafka did not acknowledge spooled;
        with ``wait`` False, without waiting for acknowledgements first."""
        if self._closed:
            return self.summary()
        try:
            if self._spool_error is None:
                self._commit()
        finally:
            self._closed = True
            self._checker.forget()  # frees the run's memory of what it sent
            try:
                if self._delivery is not None:
                    self._delivery.close(wait=wait)
            finally:  # a segment with events unacknowledged stays, for a flush
                for segment in self._segments:
                    segment.retired = True
                    segment.finish()
        return self.summary()

    def summary(self) -> PublishSummary:
        """The counts so far (final after :meth:`close`)."""
        sent = sum(segment.acked for segment in self._segments)
        spooled = sum(segment.failed for segment in self._segments)
        delivery = self._delivery
        checker = self._checker
        unsaved = len(self._buffer) if self._spool_error is not None else 0
        return PublishSummary(
            accepted=checker.valid,
            invalid=checker.invalid,
            sent=sent,
            spooled=spooled,
            pending=checker.valid - sent - spooled - unsaved,
            unsaved=unsaved,
            # A copy (no traceback): raised by a caller, the stored one would grow its own.
            spool_error=copy.copy(self._spool_error),
            invalid_by_reason=dict(checker.invalid_by_reason),
            resent=self._resent,
            problem=delivery.problem if delivery is not None and spooled else None,
            repeated=self._checker.repeated,
        )
