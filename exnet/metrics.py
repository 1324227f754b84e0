"""exnet's metrics: a closed, documented set with fixed label names (SPEC §5).

Declared once here; dashboards and alert rules refer only to these names.
Each process builds one :class:`Metrics` and passes it down; tests build
their own, on a fresh registry, and read exact values back.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from contracts.reasons import Reason
from contracts.topics import INPUT_TOPICS
from contracts.views import VIEW_KEYS

__all__ = ["EVENT_TYPES", "VIEW_REFUSALS", "Metrics", "merged_exposition"]

EVENT_TYPES: tuple[str, ...] = tuple(t.event_type or "" for t in INPUT_TOPICS)
#: Why the sink refuses a message of exnet.views (``sinks.rows.view_row``): its header
#: names no view table; its value is not a row of that table.
VIEW_REFUSALS: tuple[str, ...] = ("unknown_table", "invalid_row")

#: Seconds; ClickHouse batch writes take ~15 ms embedded, up to seconds on a busy server.
_BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds from a site's publish to the row being queryable; the target p99 is 1 s.
_LATENCY_BUCKETS = (
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.25,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
    300.0,
)
_ROWS_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000)


class Metrics:
    """Every metric an exnet process exposes at ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # -- validation outcomes (SPEC §2): received = accepted + duplicate + rejected
        #: counter: messages read from a site-facing input topic (physical name).
        self.events_received = Counter(
            "exnet_events_received", "Messages read from an input topic", ["topic"], registry=r
        )
        #: counter: events accepted into their fact table, by event type.
        self.events_accepted = Counter(
            "exnet_events_accepted", "Events accepted, by event type", ["type"], registry=r
        )
        #: counter: messages rejected to the dead-letter topic, by reason code.
        self.events_rejected = Counter(
            "exnet_events_rejected", "Messages rejected, by reason code", ["reason"], registry=r
        )
        #: counter: exact duplicates dropped (same event_id, same content), by event type.
        self.events_duplicate = Counter(
            "exnet_events_duplicate",
            "Exact duplicates dropped, by event type",
            ["type"],
            registry=r,
        )
        # -- the sink
        #: counter: rows the sink wrote to ClickHouse (acknowledged inserts), by table.
        self.sink_rows_written = Counter(
            "exnet_sink_rows_written", "Rows written to ClickHouse, by table", ["table"], registry=r
        )
        #: histogram: seconds per sink batch, from first write to committed offsets.
        self.sink_batch_seconds = Histogram(
            "exnet_sink_batch_seconds",
            "Seconds to write one batch to ClickHouse and commit its offsets",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        #: histogram: rows per sink batch.
        self.sink_batch_rows = Histogram(
            "exnet_sink_batch_rows", "Rows per sink batch", buckets=_ROWS_BUCKETS, registry=r
        )
        #: counter: failed ClickHouse writes (each retried with backoff), by table.
        self.sink_write_errors = Counter(
            "exnet_sink_write_errors",
            "ClickHouse writes that failed and were retried",
            ["table"],
            registry=r,
        )
        #: gauge: unix time of the last successful ClickHouse write.
        self.sink_last_write = Gauge(
            "exnet_sink_last_write_timestamp_seconds",
            "Unix time of the last successful ClickHouse write",
            registry=r,
        )
        #: counter: messages of exnet.views the sink skipped, a bug of the stream that wrote
        #: them (logged at ERROR), by reason (:data:`VIEW_REFUSALS`).
        self.sink_view_rows_refused = Counter(
            "exnet_sink_view_rows_refused",
            "Messages of exnet.views not written: no view table named, or not a row of it",
            ["reason"],
            registry=r,
        )
        # -- the stream-written views against their reference (the sink's periodic check)
        #: gauge: rows of the view that differed from the reference in two consecutive
        #: checks while neither the stream row's figures nor the reference's changed
        #: between them (settled, not a row still on its way).
        self.view_rows_differing = Gauge(
            "exnet_view_rows_differing",
            "Rows of a stream-written view that differ from the reference, settled",
            ["view"],
            registry=r,
        )
        #: gauge: unix time of the last completed check of the views.
        self.view_check_last = Gauge(
            "exnet_view_check_last_timestamp_seconds",
            "Unix time of the last completed comparison of the views with the reference",
            registry=r,
        )
        #: counter: checks of the views that failed (logged; the next runs on schedule).
        self.view_check_errors = Counter(
            "exnet_view_check_errors",
            "Comparisons of the views with the reference that failed",
            registry=r,
        )
        #: histogram: seconds from the site's publish (Kafka timestamp) to the row being written.
        self.end_to_end_seconds = Histogram(
            "exnet_end_to_end_latency_seconds",
            "Seconds from a site's publish to its row being queryable in ClickHouse",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # -- consumers and sites
        #: gauge: messages not yet consumed (end offset - committed offset) per consumer group
        #: and partition; exnet.accepted is read by two groups (the writer and the views).
        self.consumer_lag = Gauge(
            "exnet_consumer_lag",
            "Messages behind the end of the partition (committed offset of the consumer group)",
            ["group", "topic", "partition"],
            registry=r,
        )
        #: gauge: newest occurred_at of an accepted event per site (unix seconds).
        self.site_last_event = Gauge(
            "exnet_site_last_event_timestamp_seconds",
            "occurred_at of the newest accepted event of the site (unix seconds; up to 5 "
            "minutes ahead of now when the site's clock is, as SPEC §2 accepts)",
            ["node_id", "site_id"],
            registry=r,
        )
        #: counter: events accepted per site (after deduplication).
        self.site_events_accepted = Counter(
            "exnet_site_events_accepted",
            "Events accepted, by node and site",
            ["node_id", "site_id"],
            registry=r,
        )
        #: counter: messages read that name the site, by node and site ("" when the
        #: site they name is not registered, or they name none).
        self.site_events_received = Counter(
            "exnet_site_events_received",
            "Messages read, by the site they name and its registered node",
            ["node_id", "site_id"],
            registry=r,
        )
        #: counter: rejected messages, by the site they name (its registered node) and
        #: reason code.
        self.site_events_rejected = Counter(
            "exnet_site_events_rejected",
            "Messages rejected, by the site they name (its registered node) and reason code",
            ["node_id", "site_id", "reason"],
            registry=r,
        )
        #: gauge: when exnet last received an accepted event of the site (unix seconds).
        self.site_last_received = Gauge(
            "exnet_site_last_received_timestamp_seconds",
            "When exnet last received an accepted event from the site (unix seconds)",
            ["node_id", "site_id"],
            registry=r,
        )
        # -- the stream workers
        #: histogram: seconds an agent spends on one stream batch (a topic's records of
        #: one fetch), by stage.
        self.stream_batch_seconds = Histogram(
            "exnet_stream_batch_seconds",
            "Seconds per stream batch, by stage",
            ["stage"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        # -- the process
        #: gauge: 1 for each role this process runs (stream, sink).
        self.role = Gauge("exnet_process_role", "Roles this process runs", ["role"], registry=r)
        #: counter: attempts to log in to Kafka that it refused (login or TLS certificate).
        self.kafka_login_refused = Counter(
            "exnet_kafka_login_refused",
            "Connections to Kafka refused (wrong login or untrusted certificate); retried",
            registry=r,
        )
        #: gauge: 1 while the process waits for Kafka to accept its login.
        self.kafka_login_waiting = Gauge(
            "exnet_kafka_login_waiting",
            "1 while Kafka refuses this process's login and it retries with backoff",
            registry=r,
        )
        #: gauge: partitions of exnet's topics with a replica out of sync, as the stream
        #: worker's lag monitor last read them.
        self.kafka_under_replicated = Gauge(
            "exnet_kafka_under_replicated_partitions",
            "Partitions of exnet's topics (changelogs included) with a replica out of sync",
            registry=r,
        )
        #: gauge: 1 while the process consumes and writes (readiness).
        self.ready = Gauge(
            "exnet_ready", "1 while the process is consuming and writing", registry=r
        )

    def preset(self, input_topics: Iterable[str]) -> None:
        """Create every known label value at 0, so that rates and alerts see the series."""
        for topic in input_topics:
            self.events_received.labels(topic=topic)
        for event_type in EVENT_TYPES:
            self.events_accepted.labels(type=event_type)
            self.events_duplicate.labels(type=event_type)
        for reason in Reason:
            self.events_rejected.labels(reason=reason.value)
        for refusal in VIEW_REFUSALS:
            self.sink_view_rows_refused.labels(reason=refusal)
        for view in VIEW_KEYS:
            self.view_rows_differing.labels(view=view).set(0)

    def preset_sites(self, sites: Iterable[tuple[str, str]]) -> None:
        """Create the per-site counters of every registered site (``sites``: node_id,
        site_id), and of no registered site (``""``), for every reason, at 0: the
        stream worker's, which counts them. Prometheus's ``increase`` reads nothing
        from a series' first sample, so a series born at a site's first burst of
        rejections would never trip an alert on that burst."""
        registered = tuple(sites)
        for node_id, site_id in registered:
            self.site_events_accepted.labels(node_id=node_id, site_id=site_id)
        for node_id, site_id in (*registered, ("", "")):
            self.site_events_received.labels(node_id=node_id, site_id=site_id)
            for reason in Reason:
                self.site_events_rejected.labels(
                    node_id=node_id, site_id=site_id, reason=reason.value
                )


#: Families a parent process reports alone when it merges a child's metrics: its
#: readiness already includes the child's.
_OWN_ONLY = frozenset({"exnet_ready"})


def merged_exposition(registry: CollectorRegistry, child: str) -> bytes:
    """The metrics of ``registry`` and of a child process (``child``: its ``/metrics``
    text), as one Prometheus text exposition, so that one ``exnet up`` is one scrape
    target whatever processes it runs.

    Series with the same name and labels combine: counters and histograms add up,
    gauges take the larger value (timestamps, roles, flags, counts one process
    sets while the other keeps them at 0), ``*_created`` the earlier time;
    ``exnet_ready`` is this process's alone.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    def add(family: Metric, own: bool) -> None:
        if not own and family.name in _OWN_ONLY:
            return
        if family.name not in families:
            families[family.name] = Metric(
                family.name, family.documentation, family.type, family.unit
            )
            values[family.name] = {}
        series = values[family.name]
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            prior = series.get(key)
            value = sample.value
            series[key] = value if prior is None else _combined(family.type, key[0], prior, value)

    # Both sides as parsed text, so that their families have the same shape (the text
    # format declares a counter's `_created` samples as a family of their own).
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        add(family, own=True)
    for family in text_string_to_metric_families(child):
        add(family, own=False)
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_Families(list(families.values())))
    return generate_latest(merged)


def _combined(kind: str, sample: str, a: float, b: float) -> float:
    if sample.endswith("_created"):
        return min(a, b)
    if kind in ("counter", "histogram", "summary"):
        return a + b
    return max(a, b)


class _Families:
    """A collector of fixed metric families (what :func:`merged_exposition` built)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
