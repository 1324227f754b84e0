"""Consumer lag of every exnet stage, for the ``exnet_consumer_lag`` gauge and ``up --drain``.

The pipeline is drained when, stage by stage in the order data flows, every
partition's committed offset has reached its end offset: the stream group on
the input topics, then on ``exnet.validated``, then the sink group on
``exnet.accepted`` and ``exnet.deadletter``. Each stage's end offsets are read
after the previous stage was seen drained, so nothing it produced is missed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError, SaslAuthenticationFailedError
from kafka.structs import TopicPartition

from contracts.topics import INPUT_TOPICS, Topic, topic_name
from exnet.admin import topic_configs
from exnet.metrics import Metrics
from exnet.settings import Settings
from sinks.consumer import sink_group
from streams.names import streams_group

__all__ = [
    "Backlog",
    "LagMonitor",
    "PartitionLag",
    "PipelineProgress",
    "wait_until_caught_up",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# kafka-python's describe_groups warns for each member of the stream workers' group,
# "Unable to decode member_metadata for ...": Faust's assignor writes its own metadata
# ("faust" protocol), which PipelineProgress.members does not read (`exnet verify`
# printed it during a flow of events, 2026-12-05).
logging.getLogger("kafka.admin._groups").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


class PipelineProgress:
    """Reads committed and end offsets of every stage (kafka-python, no group membership)."""

    def __init__(self, settings: Settings) -> None:
        def name(topic: Topic) -> str:
            return topic_name(topic, settings.topic_prefix)

        self.stages: list[tuple[str, list[str]]] = [
            (streams_group(settings), [name(t) for t in INPUT_TOPICS]),
            (streams_group(settings), [name(Topic.VALIDATED)]),
            (sink_group(settings), [name(Topic.ACCEPTED), name(Topic.DEADLETTER)]),
            (streams_group(settings), [name(Topic.ACCEPTED)]),
            (streams_group(settings), [name(Topic.CONTRIBUTIONS)]),
            (sink_group(settings), [name(Topic.VIEWS)]),
        ]
        #: Every topic ``exnet init`` creates, the tables' changelogs included.
        self._topics = list(topic_configs(settings))
        connection = settings.kafka_client_config()
        self._admin = KafkaAdminClient(**connection, client_id="exnet-monitor")
        self._offsets = KafkaConsumer(
            **connection, client_id="exnet-monitor", enable_auto_commit=False
        )

    def close(self) -> None:
        self._admin.close()
        self._offsets.close()

    def members(self, group: str) -> list[str]:
        """The live members of consumer ``group``, as ``client_id@host`` (empty: nobody
        consumes: no such process runs)."""
        described = self._admin.describe_groups([group]).get(group, {})
        return sorted(
            f"{member.get('client_id', '?')}@{str(member.get('client_host', '?')).lstrip('/')}"
            for member in described.get("members", [])
        )

    def stage_lag(self, group: str, topics: list[str]) -> list[PartitionLag]:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(self._offsets.partitions_for_topic(topic) or ())
        ]
        ends = self._offsets.end_offsets(partitions) if partitions else {}
        committed = (
            self._admin.list_group_offsets({group: partitions}).get(group, {}) if partitions else {}
        )
        result = []
        for tp in partitions:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            result.append(PartitionLag(group, tp.topic, tp.partition, done, ends.get(tp, 0)))
        return result

    def under_replicated(self) -> int:
        """Partitions of exnet's topics with a replica out of its in-sync set: a broker
        down (fenced about 9 s after it stopped answering) or behind. 0 on one broker.
        Raises :class:`KafkaError` when Kafka does not answer."""
        return sum(
            bool(set(partition["replica_nodes"]) - set(partition["isr_nodes"]))
            for topic in self._admin.describe_topics(self._topics)
            if topic.get("error_code", 0) == 0  # a topic not created (yet) has none
            for partition in topic["partitions"]
        )

    def lag(self) -> list[PartitionLag]:
        """Every partition of every stage."""
        return [row for group, topics in self.stages for row in self.stage_lag(group, topics)]

    def drained(self) -> bool:
        """True when every stage, checked in flow order, has committed up to its end."""
        return all(
            all(row.lag == 0 for row in self.stage_lag(group, topics))
            for group, topics in self.stages
        )


#: Seconds :func:`wait_until_caught_up` gives a broker to answer its first request.
CATCH_UP_PROBE_S = 3.0


def wait_until_caught_up(
    settings: Settings, seconds: float, on_wait: Callable[[int], None] | None = None
) -> str | None:
    """Wait up to ``seconds`` for the pipeline to catch up with what it held when asked:
    stage by stage, in the order data flows, until each has committed up to the end its
    input had once the stage before it caught up (as ``up --drain`` reads them). None
    when it has and nothing came in meanwhile; else what is left, what came in, or why
    the lag could not be read (no broker answers, a login without the consumer groups'
    rights). ``on_wait(messages)`` is called once, if the pipeline is behind at first.

    Under a steady flow of events the pipeline is never empty at one instant; catching
    up with a snapshot takes about its latency, not ``seconds``."""
    from exnet.broker import broker_answers

    connection = settings.kafka_client_config()
    if not broker_answers(settings.kafka_bootstrap, CATCH_UP_PROBE_S, connection):
        return f"its lag is unknown: no Kafka broker answers at {settings.kafka_bootstrap}"
    deadline = time.monotonic() + seconds
    progress: PipelineProgress | None = None

    def read(what: Callable[[], _T]) -> _T:
        # A fresh cluster answers "coordinator not available" while it makes its
        # offsets topic: retried, as the Kafka clients do, until the deadline.
        while True:
            try:
                return what()
            except KafkaError as exc:
                if not exc.retriable or time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    try:
        progress = PipelineProgress(settings)
        rows = read(progress.lag)
        behind = sum(row.lag for row in rows)
        if not behind:
            return None
        if not any(read(partial(progress.members, group)) for group in _groups(rows)):
            return f"{behind} message(s) behind, and no exnet up consumes them"
        if on_wait is not None:
            on_wait(behind)
        for group, topics in progress.stages:
            stage = partial(progress.stage_lag, group, topics)
            target = {(r.topic, r.partition): r.end for r in read(stage)}
            while not all(
                r.committed >= target.get((r.topic, r.partition), 0) for r in read(stage)
            ):
                if time.monotonic() >= deadline:
                    rows = read(progress.lag)
                    left = sum(row.lag for row in rows)
                    return f"{left} message(s) behind: {_describe(rows)}"
                time.sleep(0.5)
        arrived = sum(row.lag for row in read(progress.lag))
        return f"{arrived} message(s) came in meanwhile" if arrived else None
    except KafkaError as exc:
        return f"its lag is unknown: {exc!r}"
    finally:
        _close_quietly(progress)


def _groups(rows: list[PartitionLag]) -> list[str]:
    """The consumer groups of the stages that lag."""
    return sorted({row.group for row in rows if row.lag})


class Backlog:
    """Messages the pipeline has yet to consume, summed over its stages, when called;
    None when Kafka cannot tell (logged). Connects on first use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._progress: PipelineProgress | None = None

    def __call__(self) -> int | None:
        try:
            if self._progress is None:
                self._progress = PipelineProgress(self._settings)
            return sum(row.lag for row in self._progress.lag())
        except KafkaError as exc:
            log.warning("could not read consumer lag: %s", exc)
            _close_quietly(self._progress)  # new clients next time (see LagMonitor.run)
            self._progress = None
            return None

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()


def _close_quietly(progress: PipelineProgress | None) -> None:
    """Close ``progress``'s clients after a failed read (their own errors only logged)."""
    if progress is None:
        return
    try:
        progress.close()
    except Exception as exc:  # noqa: BLE001  # closing what failed: nothing more to do
        log.debug("closing the lag reader's Kafka clients: %r", exc)


#: Seconds between "draining: ..." log lines that say what is left.
DRAIN_REPORT_S = 10.0

#: Seconds the lag monitor's reads must have failed, two at least in a row, before it
#: calls Kafka unreachable (``/readyz`` 503). One broker of a cluster stopping, even
#: cleanly, failed one or two reads over about 4 s while the others served the
#: pipeline (3 nodes, 2026-12-05): readiness dropped for 5 s at each.
UNREACHABLE_AFTER_S = 15.0


def _describe(rows: list[PartitionLag]) -> str:
    """What is left, per group and topic, with the partitions that lag."""
    left: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row.lag:
            left.setdefault((row.group, row.topic), []).append(f"{row.partition}:{row.lag}")
    if not left:
        return "nothing left to consume; waiting for a second confirmation"
    return "; ".join(
        f"{group} on {topic} lags (partition:messages) {' '.join(parts)}"
        for (group, topic), parts in left.items()
    )


class _LoginRefusals(logging.Handler):
    """Notes that a Kafka client of this process, in any thread, logged a refused login.

    A new kafka-python client that cannot log in fails with "Unable to bootstrap",
    as if no broker were there; only its log says why (as
    :class:`~exnet.settings.KafkaRefusals` reads at start). Attached to the ``kafka``
    and ``aiokafka`` loggers while the monitor runs; it only observes.
    """

    LOGGERS = ("kafka", "aiokafka")

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self._seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "SaslAuthenticationFailed" in record.getMessage():
            self._seen.set()

    def take(self) -> bool:
        """Whether a refusal was logged since the last call."""
        seen = self._seen.is_set()
        self._seen.clear()
        return seen

    @contextmanager
    def watching(self) -> Iterator[None]:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        try:
            yield
        finally:
            for name in self.LOGGERS:
                logging.getLogger(name).removeHandler(self)


class LagMonitor(threading.Thread):
    """Updates the lag gauge every ``interval`` seconds (and tells ``on_lag`` the total);
    with ``on_drained``, also checks every ``drain_check`` seconds whether the pipeline
    is drained, and calls it once it was seen drained twice in a row while ``settled``
    said so too (the stream worker has sent what no input makes it send).

    The drain's check reads stage by stage and stops at the first that lags (during a
    backlog: the input topics' offsets alone, about 2 ms of CPU); the gauges read every
    stage (about 13 ms). Both every 0.5 s took 3-5% of a core in the stream worker's
    process, beside its event loop, through a drain.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        interval: float,
        on_drained: Callable[[], None] | None = None,
        on_lag: Callable[[int], None] | None = None,
        drain_check: float | None = None,
        settled: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(name="exnet-lag-monitor", daemon=True)
        self._settled = settled
        self._on_lag = on_lag
        self._settings = settings
        self._metrics = metrics
        self._tick = min(interval, drain_check) if drain_check and on_drained else interval
        #: Ticks from one read of every stage to the next.
        self._gauge_ticks = max(1, round(interval / self._tick))
        self._on_drained = on_drained
        self._halt = threading.Event()
        #: Whether the lag's reads have failed for want of Kafka, two at least and for
        #: :data:`UNREACHABLE_AFTER_S` (False until then): the process neither consumes
        #: nor writes meanwhile, so it is not ready.
        self.kafka_unreachable = False
        #: Failed reads in a row, and when the first of them began (monotonic s).
        self._failed_reads = 0
        self._failing_since = 0.0
        #: Whether the last read failed because Kafka refused this process's login: a
        #: running process logs in again whenever a connection is lost (a broker
        #: restarted, an idle connection closed), so a password changed or revoked since
        #: its start shows here first. It sets ``exnet_kafka_login_waiting`` as a
        #: refusal at start does (the ExnetKafkaLoginRefused alert), and clears it.
        self.login_refused = False
        self._refusals = _LoginRefusals()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        with self._refusals.watching():
            self._run()

    def _run(self) -> None:
        progress: PipelineProgress | None = None
        drained_in_a_row = 0
        last_report = time.monotonic()
        ticks = 0
        while not self._halt.wait(self._tick):
            every_stage = ticks % self._gauge_ticks == 0
            ticks += 1
            read_began = time.monotonic()
            try:
                if progress is None:
                    progress = PipelineProgress(self._settings)
                if every_stage:
                    rows = progress.lag()
                    self._report(rows)
                    self._metrics.kafka_under_replicated.set(progress.under_replicated())
                    # lag() reads the stages in flow order too: all zero is drained()
                    drained = all(row.lag == 0 for row in rows)
                    now = time.monotonic()
                    if self._on_drained is not None and now - last_report >= DRAIN_REPORT_S:
                        last_report = now
                        log.info("draining: %s", _describe(rows))
                elif self._on_drained is not None:
                    drained = progress.drained()
                else:
                    continue
                self.kafka_unreachable = False
                self._failed_reads = 0
                self._refusals.take()  # what was refused before this read is past
                if self.login_refused:
                    self.login_refused = False
                    self._metrics.kafka_login_waiting.set(0)
                    log.info("Kafka accepts this process's login again")
                if self._on_drained is not None:
                    drained = drained and self._settled()
                    drained_in_a_row = drained_in_a_row + 1 if drained else 0
                    if drained_in_a_row >= 2:
                        log.info("every input topic is consumed to its end and written")
                        if self._on_lag is not None:
                            self._on_lag(0)  # the last reading may be 2 s old
                        self._on_drained()
                        self._on_drained = None
            except KafkaError as exc:  # the broker is down or moving: try again next round
                if isinstance(exc, SaslAuthenticationFailedError) or self._refusals.take():
                    self.kafka_unreachable = True
                    self._refused()
                else:
                    self._read_failed(read_began)
                    log.warning("could not read consumer lag: %s", exc)
                drained_in_a_row = 0
                # With new clients: kafka-python's admin client keeps asking the group
                # coordinator it found first, and after a broker's loss moved the group
                # it answered NotCoordinatorError for good (readiness never came back,
                # `--drain` never ended).
                _close_quietly(progress)
                progress = None
        if progress is not None:
            progress.close()

    def _read_failed(self, began: float) -> None:
        """A read that began at ``began`` failed, Kafka's login aside: unreachable once
        reads failed twice in a row or more over :data:`UNREACHABLE_AFTER_S`."""
        if self._failed_reads == 0:
            self._failing_since = began
        self._failed_reads += 1
        self.kafka_unreachable = self._failed_reads >= 2 and (  # noqa: PLR2004
            time.monotonic() - self._failing_since >= UNREACHABLE_AFTER_S
        )

    def _refused(self) -> None:
        self._metrics.kafka_login_refused.inc()
        self._metrics.kafka_login_waiting.set(1)
        if not self.login_refused:  # once, not every round
            log.error(
                "%s to this running process (was its password changed or revoked since "
                "it started? EXNET_KAFKA_USERNAME, EXNET_KAFKA_PASSWORD); retrying every "
                "%g s, not ready meanwhile",
                self._settings.refused_login,
                self._tick,
            )
        self.login_refused = True

    def _report(self, rows: list[PartitionLag]) -> None:
        for row in rows:
            self._metrics.consumer_lag.labels(
                group=row.group, topic=row.topic, partition=str(row.partition)
            ).set(row.lag)
        if self._on_lag is not None:
            self._on_lag(sum(row.lag for row in rows))
