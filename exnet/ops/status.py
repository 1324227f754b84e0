"""``exnet status``: is the pipeline healthy, on one screen (or as one JSON document).

What callers may rely on:

- :func:`collect_status` never raises for an unreachable broker or ClickHouse:
  each part is collected on its own, and a part that cannot be read says why
  (``reachable: false`` and ``error``) while the other parts are still filled.
- :attr:`StatusReport.problems` lists everything that needs an operator:
  broker unreachable, Kafka refusing this client's login (or the client
  refusing the brokers' certificate), topics missing, consumer lag unreadable, ClickHouse
  unreachable (or not initialised), stale sites, a high share of rejected
  messages. ``exnet status`` exits 1 exactly when it is not empty.
- Windows are in processing time: "last day" counts events by ``ingested_at``
  and rejections by ``rejected_at``; a site is *stale* when exnet has received
  no accepted event from it (newest ``ingested_at``) for more than
  ``stale_hours``, or never has (a registered site without any event).
  Its newest ``occurred_at`` is shown beside it.
- Lag is shown, never judged: one reading cannot tell a shrinking lag from a
  stuck one (the ``exnet_consumer_lag`` gauge over time can).
- :meth:`StatusReport.as_dict` is the ``--json`` document; its keys are stable
  (see :data:`exnet.ops.JSON_KEYS_HELP`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from contracts.errors import ExnetError
from exnet.ops import DEFAULT_MAX_REJECT_SHARE, DEFAULT_STALE_HOURS
from exnet.ops._sql import from_millis, query_rows, time_literal, to_int
from exnet.settings import Settings
from sinks.rows import FACT_TABLES, REJECTED_TABLE

__all__ = [
    "BrokerState",
    "ClickHouseState",
    "LagState",
    "PartitionLagRow",
    "Problem",
    "SiteState",
    "StageLag",
    "StatusReport",
    "TableThroughput",
    "TopicState",
    "collect_status",
    "render_status",
]

log = logging.getLogger(__name__)

#: The "last day" window of counts and rejections.
DAY: Final = timedelta(days=1)
#: Sink throughput windows: (JSON key, length).
THROUGHPUT_WINDOWS: Final = (("rows_5m", timedelta(minutes=5)), ("rows_1h", timedelta(hours=1)))
#: Seconds to wait for the broker's first answer.
BROKER_TIMEOUT_S: Final = 3.0
#: The stages of :attr:`exnet.monitor.PipelineProgress.stages`, in its (flow) order.
STAGE_NAMES: Final = ("validate", "deduplicate", "sink", "aggregate", "rollup", "sink views")
#: The view figures `exnet status` shows per node and for the network (SPEC §4).
VIEW_FIGURES: Final = (
    "randomized",
    "withdrawn",
    "completed",
    "sessions_attended",
    "exercise_minutes",
    "adverse_events",
    "specimens",
    "assays",
    "assessments",
)
#: Fact tables and the rejections table, as the sink writes them.
_FACT_TABLES: Final = tuple(FACT_TABLES.values())
SINK_TABLES: Final = (*_FACT_TABLES, REJECTED_TABLE)


# --- the collected state ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class TopicState:
    #: Logical name (``exnet.session``); ``name`` is the physical one.
    topic: str
    name: str
    exists: bool
    partitions: int
    #: Partitions with fewer replicas in sync than assigned (a broker down or behind).
    under_replicated: int = 0
    #: Partitions with no leader: nothing can be written to or read from them.
    offline: int = 0
    #: False when the login may not describe the topic (its ACLs): whether it exists
    #: is then unknown, and ``exists`` is False.
    authorized: bool = True


@dataclass(frozen=True, slots=True)
class BrokerState:
    bootstrap: str
    reachable: bool
    error: str | None = None
    topics: tuple[TopicState, ...] = ()
    #: Brokers the cluster says are alive and that accept a connection (node ids).
    brokers: tuple[int, ...] = ()
    #: Node ids assigned a replica of an exnet partition but out of its in-sync set.
    out_of_sync: tuple[int, ...] = ()
    #: The SCRAM login status used (None on a plaintext listener).
    login: str | None = None
    #: Kafka answered but refused this client (its login, or the brokers'
    #: certificate against the CA file): ``error`` says which.
    refused: bool = False
    #: Brokers the cluster still lists as alive that refuse a connection: stopped or
    #: crashed a moment ago (the controller fences a silent broker after its session
    #: timeout, about 9 s; until then its partitions still look in sync).
    silent: tuple[int, ...] = ()

    @property
    def under_replicated(self) -> int:
        return sum(t.under_replicated for t in self.topics)

    @property
    def offline(self) -> int:
        return sum(t.offline for t in self.topics)


@dataclass(frozen=True, slots=True)
class PartitionLagRow:
    topic: str
    partition: int
    committed: int
    end: int
    lag: int


@dataclass(frozen=True, slots=True)
class StageLag:
    stage: str
    group: str
    partitions: tuple[PartitionLagRow, ...]
    #: The group's live members (``client_id@host``): the processes doing this stage.
    members: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True, slots=True)
class LagState:
    available: bool
    error: str | None = None
    stages: tuple[StageLag, ...] = ()

    @property
    def total(self) -> int:
        return sum(s.total for s in self.stages)


@dataclass(frozen=True, slots=True)
class SiteState:
    node_id: str
    site_id: str
    name: str
    registered: bool
    last_occurred_at: datetime | None
    last_ingested_at: datetime | None
    events_last_day: int
    events_total: int
    stale: bool


@dataclass(frozen=True, slots=True)
class TableThroughput:
    table: str
    rows_5m: int
    rows_1h: int


@dataclass(frozen=True, slots=True)
class ClickHouseState:
    reachable: bool
    database: str
    url: str
    error: str | None = None
    sites: tuple[SiteState, ...] = ()
    #: reason -> rejected messages in the last day, most frequent first.
    rejects_by_reason: tuple[tuple[str, int], ...] = ()
    throughput: tuple[TableThroughput, ...] = ()
    #: The stream-written views: node_summary's rows, then network_summary's (as read,
    #: every column); empty before the rollup's first rows.
    views: tuple[dict[str, Any], ...] = ()

    @property
    def rejected_last_day(self) -> int:
        return sum(n for _, n in self.rejects_by_reason)

    @property
    def accepted_last_day(self) -> int:
        return sum(s.events_last_day for s in self.sites)

    @property
    def reject_share(self) -> float | None:
        """Rejected / (accepted + rejected) over the last day; None when nothing arrived."""
        seen = self.rejected_last_day + self.accepted_last_day
        return self.rejected_last_day / seen if seen else None


@dataclass(frozen=True, slots=True)
class StatusReport:
    generated_at: datetime
    stale_hours: float
    max_reject_share: float
    broker: BrokerState
    lag: LagState
    clickhouse: ClickHouseState
    problems: tuple[Problem, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document (keys in :data:`exnet.ops.JSON_KEYS_HELP`)."""
        ch = self.clickhouse
        return {
            "generated_at": _iso(self.generated_at),
            "healthy": self.healthy,
            "problems": [{"kind": p.kind, "message": p.message} for p in self.problems],
            "broker": {
                "bootstrap": self.broker.bootstrap,
                "reachable": self.broker.reachable,
                "error": self.broker.error,
                "topics": [
                    {
                        "topic": t.topic,
                        "name": t.name,
                        "exists": t.exists,
                        "partitions": t.partitions,
                        "under_replicated": t.under_replicated,
                        "offline": t.offline,
                        "authorized": t.authorized,
                    }
                    for t in self.broker.topics
                ],
                "brokers": list(self.broker.brokers),
                "silent": list(self.broker.silent),
                "out_of_sync": list(self.broker.out_of_sync),
            },
            "lag": {
                "available": self.lag.available,
                "error": self.lag.error,
                "total": self.lag.total,
                "stages": [
                    {
                        "stage": s.stage,
                        "group": s.group,
                        "members": list(s.members),
                        "total": s.total,
                        "partitions": [
                            {
                                "topic": p.topic,
                                "partition": p.partition,
                                "committed": p.committed,
                                "end": p.end,
                                "lag": p.lag,
                            }
                            for p in s.partitions
                        ],
                    }
                    for s in self.lag.stages
                ],
            },
            "clickhouse": {
                "reachable": ch.reachable,
                "error": ch.error,
                "database": ch.database,
                "url": ch.url,
            },
            "sites": {
                "stale_hours": self.stale_hours,
                "stale": sum(1 for s in ch.sites if s.stale),
                "rows": [
                    {
                        "node_id": s.node_id,
                        "site_id": s.site_id,
                        "name": s.name,
                        "registered": s.registered,
                        "last_occurred_at": _iso(s.last_occurred_at),
                        "last_ingested_at": _iso(s.last_ingested_at),
                        "events_last_day": s.events_last_day,
                        "events_total": s.events_total,
                        "stale": s.stale,
                    }
                    for s in ch.sites
                ],
            },
            "rejects": {
                "window_hours": DAY.total_seconds() / 3600,
                "rejected": ch.rejected_last_day,
                "accepted": ch.accepted_last_day,
                "share": ch.reject_share,
                "max_share": self.max_reject_share,
                "by_reason": dict(ch.rejects_by_reason),
            },
            "throughput": {
                "tables": [
                    {"table": t.table, "rows_5m": t.rows_5m, "rows_1h": t.rows_1h}
                    for t in ch.throughput
                ]
            },
            "views": {
                "nodes": [row for row in ch.views if row.get("node_id")],
                "network": next((row for row in ch.views if not row.get("node_id")), None),
            },
        }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- collecting ---------------------------------------------------------------


def collect_status(
    settings: Settings,
    *,
    stale_hours: float = DEFAULT_STALE_HOURS,
    max_reject_share: float = DEFAULT_MAX_REJECT_SHARE,
    now: datetime | None = None,
) -> StatusReport:
    """Read every part of the status; an unreachable part is reported, not raised."""
    moment = now if now is not None else datetime.now(UTC)
    broker = collect_broker(settings)
    lag = collect_lag(settings, broker)
    clickhouse = collect_clickhouse(settings, moment, stale_hours)
    problems = find_problems(broker, lag, clickhouse, stale_hours, max_reject_share)
    return StatusReport(
        generated_at=moment,
        stale_hours=stale_hours,
        max_reject_share=max_reject_share,
        broker=broker,
        lag=lag,
        clickhouse=clickhouse,
        problems=problems,
    )


def _expected_topics(settings: Settings) -> list[tuple[str, str]]:
    """(logical, physical) of every topic ``exnet init`` creates."""
    from contracts.topics import Topic, topic_name
    from exnet.admin import topic_configs

    physical = list(topic_configs(settings))
    logical_of = {topic_name(t, settings.topic_prefix): t.value for t in Topic}
    return [
        (logical_of.get(name, name.removeprefix(settings.topic_prefix)), name) for name in physical
    ]


def collect_broker(settings: Settings) -> BrokerState:
    """Whether the broker answers; which of exnet's topics exist, with how many
    partitions, and how many of those lack a leader or a replica in sync; which
    brokers are alive (a cluster's metadata, from any broker that answers)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAuthorizationFailedError, UnknownTopicOrPartitionError

    from exnet.broker import ask_until_answered, broker_answers, port_open
    from exnet.settings import KafkaRefusals, silent_broker_hint

    bootstrap = settings.kafka_bootstrap
    connection = settings.kafka_client_config()
    with KafkaRefusals(settings) as refusals:
        answers = broker_answers(bootstrap, timeout_s=BROKER_TIMEOUT_S, connection=connection)
    if not answers:
        hint = silent_broker_hint(settings)
        nobody = f"no Kafka broker answers at {bootstrap}" + (f" ({hint})" if hint else "")
        refused = refusals.reason()
        return BrokerState(bootstrap, False, refused or nobody, refused=refused is not None)
    try:
        admin = KafkaAdminClient(
            **connection,
            client_id="exnet-status",
            request_timeout_ms=max(int(BROKER_TIMEOUT_S * 1000), 5_000),
        )
    except KafkaError as exc:
        return BrokerState(bootstrap, False, f"cannot connect to {bootstrap}: {exc}")
    try:
        cluster = ask_until_answered(admin.describe_cluster)["brokers"]
        listed = [b for b in cluster if not b.get("is_fenced")]
        # Every expected topic's partitions in one metadata request; named, so that each
        # comes back with its error: a login without Describe on a topic gets
        # TOPIC_AUTHORIZATION_FAILED where a listing of all topics would leave it out.
        expected = _expected_topics(settings)
        names = [n for _, n in expected]
        described = {t["name"]: t for t in ask_until_answered(lambda: admin.describe_topics(names))}
    except KafkaError as exc:
        return BrokerState(bootstrap, False, f"cannot read topic metadata: {exc}")
    finally:
        admin.close()
    silent = tuple(
        sorted(
            b["broker_id"] for b in listed if not port_open(b["host"], b["port"], BROKER_TIMEOUT_S)
        )
    )
    alive = tuple(sorted(b["broker_id"] for b in listed if b["broker_id"] not in silent))
    login = settings.kafka_username if settings.kafka_security_protocol != "PLAINTEXT" else None
    topics = []
    out_of_sync: set[int] = set()
    for logical, name in expected:
        topic = described.get(name, {"error_code": UnknownTopicOrPartitionError.errno})
        if topic["error_code"] == TopicAuthorizationFailedError.errno:
            topics.append(TopicState(logical, name, False, 0, authorized=False))
            continue
        if topic["error_code"] != 0:  # unknown topic (or one being deleted)
            topics.append(TopicState(logical, name, False, 0))
            continue
        partitions = topic["partitions"]
        lagging = 0
        for partition in partitions:
            behind = set(partition["replica_nodes"]) - set(partition["isr_nodes"])
            lagging += bool(behind)
            out_of_sync |= behind
        offline = sum(1 for p in partitions if p["leader_id"] < 0)
        topics.append(TopicState(logical, name, True, len(partitions), lagging, offline))
    return BrokerState(
        bootstrap,
        True,
        None,
        tuple(topics),
        login=login,
        brokers=alive,
        out_of_sync=tuple(sorted(out_of_sync)),
        silent=silent,
    )


def collect_lag(settings: Settings, broker: BrokerState) -> LagState:
    """Committed and end offsets of every stage (needs the broker and the topics)."""
    if not broker.reachable:
        return LagState(False, "the broker is unreachable")
    if not all(t.authorized for t in broker.topics):
        return LagState(False, "this login may not describe exnet's topics")
    if not all(t.exists for t in broker.topics):
        return LagState(False, "topics are missing (run `exnet init`)")
    from kafka.errors import KafkaError

    from exnet.monitor import PipelineProgress

    try:
        progress = PipelineProgress(settings)
    except KafkaError as exc:
        return LagState(False, f"cannot read consumer offsets: {exc}")
    try:
        stages = []
        members: dict[str, tuple[str, ...]] = {}  # validate and deduplicate share a group
        for index, (group, topics) in enumerate(progress.stages):
            rows = progress.stage_lag(group, topics)
            if group not in members:
                members[group] = tuple(progress.members(group))
            name = STAGE_NAMES[index] if index < len(STAGE_NAMES) else f"stage {index + 1}"
            stages.append(
                StageLag(
                    name,
                    group,
                    tuple(
                        PartitionLagRow(r.topic, r.partition, r.committed, r.end, r.lag)
                        for r in rows
                    ),
                    members[group],
                )
            )
    except KafkaError as exc:
        return LagState(False, f"cannot read consumer offsets: {exc}")
    finally:
        progress.close()
    return LagState(True, None, tuple(stages))


def clickhouse_url(settings: Settings) -> str:
    """Where the analytics database is, without credentials."""
    dsn = settings.clickhouse_dsn
    if dsn.startswith("chdb:"):
        return dsn
    parts = urlsplit(dsn)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def collect_clickhouse(settings: Settings, now: datetime, stale_hours: float) -> ClickHouseState:
    """Per-site activity, rejections by reason and sink throughput, all read-only."""
    db = settings.clickhouse_database
    url = clickhouse_url(settings)
    try:
        sites = _sites(settings, now, stale_hours)
        rejects = query_rows(
            settings,
            f"SELECT reason, count() AS n FROM {db}.rejected_events FINAL "  # noqa: S608  # validated names, quoted values
            f"WHERE rejected_at >= {time_literal(now - DAY)} "
            "GROUP BY reason ORDER BY n DESC, reason",
        )
        throughput = _throughput(settings, now)
        views = _views(settings)
    except (ExnetError, OSError) as exc:
        return ClickHouseState(False, db, url, _first_line(str(exc)))
    return ClickHouseState(
        True,
        db,
        url,
        None,
        sites,
        tuple((str(r["reason"]), to_int(r["n"])) for r in rejects),
        throughput,
        views,
    )


def _views(settings: Settings) -> tuple[dict[str, Any], ...]:
    """The stream-written summaries: a row per registered node, then the network's."""
    db = settings.clickhouse_database
    columns = ", ".join(VIEW_FIGURES)
    rows = query_rows(
        settings,
        f"SELECT node_id, node_name, {columns}, updated_at "  # noqa: S608  # fixed names
        f"FROM {db}.node_summary FINAL ORDER BY node_id",
    )
    rows += query_rows(
        settings,
        f"SELECT '' AS node_id, 'network' AS node_name, {columns}, updated_at "  # noqa: S608
        f"FROM {db}.network_summary FINAL",
    )
    return tuple(rows)


def _sites(settings: Settings, now: datetime, stale_hours: float) -> tuple[SiteState, ...]:
    db = settings.clickhouse_database
    registered = {
        str(r["site_id"]): (str(r["node_id"]), str(r["name"]))
        for r in query_rows(
            settings,
            f"SELECT site_id, argMax(node_id, loaded_at) AS node_id, "  # noqa: S608  # validated names, quoted values
            f"argMax(name, loaded_at) AS name FROM {db}.sites GROUP BY site_id "
            # The registry in force: the latest load's sites (one loaded_at a load).
            f"HAVING max(loaded_at) = (SELECT max(loaded_at) FROM {db}.sites)",
        )
    }
    union = " UNION ALL ".join(
        f"SELECT toString(node_id) AS node_id, toString(site_id) AS site_id, "  # noqa: S608  # validated names, quoted values
        f"toUnixTimestamp64Milli(occurred_at) AS occurred_ms, "
        f"toUnixTimestamp64Milli(ingested_at) AS ingested_ms FROM {db}.{table} FINAL"
        for table in _FACT_TABLES
    )
    since_ms = int((now - DAY).timestamp() * 1000)
    facts = query_rows(
        settings,
        "SELECT node_id, site_id, max(occurred_ms) AS last_occurred_ms, "  # noqa: S608  # validated names, quoted values
        f"max(ingested_ms) AS last_ingested_ms, countIf(ingested_ms >= {since_ms}) AS last_day, "
        f"count() AS total FROM ({union}) GROUP BY node_id, site_id",
    )
    stale_before = now - timedelta(hours=stale_hours)
    seen: dict[tuple[str, str], SiteState] = {}
    for row in facts:
        node_id, site_id = str(row["node_id"]), str(row["site_id"])
        ingested = from_millis(row["last_ingested_ms"])
        reg = registered.get(site_id)
        is_registered = reg is not None and reg[0] == node_id
        seen[(node_id, site_id)] = SiteState(
            node_id=node_id,
            site_id=site_id,
            name=reg[1] if reg is not None and is_registered else "",
            registered=is_registered,
            last_occurred_at=from_millis(row["last_occurred_ms"]),
            last_ingested_at=ingested,
            events_last_day=to_int(row["last_day"]),
            events_total=to_int(row["total"]),
            # A site the registry no longer names is expected to send nothing.
            stale=is_registered and (ingested is None or ingested < stale_before),
        )
    for site_id, (node_id, name) in registered.items():
        if (node_id, site_id) not in seen:
            seen[(node_id, site_id)] = SiteState(
                node_id, site_id, name, True, None, None, 0, 0, stale=True
            )
    return tuple(seen[key] for key in sorted(seen))


def _throughput(settings: Settings, now: datetime) -> tuple[TableThroughput, ...]:
    db = settings.clickhouse_database
    longest = max(window for _, window in THROUGHPUT_WINDOWS)
    counts = ", ".join(
        f"countIf(ingested_at >= {time_literal(now - window)}) AS {key}"
        for key, window in THROUGHPUT_WINDOWS
    )
    # Rows as written (no FINAL): throughput counts writes, replays included.
    union = " UNION ALL ".join(
        f"SELECT '{table}' AS table_name, {counts} FROM {db}.{table} "  # noqa: S608  # validated names, quoted values
        f"WHERE ingested_at >= {time_literal(now - longest)}"
        for table in SINK_TABLES
    )
    rows = {str(r["table_name"]): r for r in query_rows(settings, union)}
    return tuple(
        TableThroughput(table, to_int(rows[table]["rows_5m"]), to_int(rows[table]["rows_1h"]))
        for table in SINK_TABLES
    )


def _brokers_phrase(broker: BrokerState) -> str:
    alive = ", ".join(map(str, broker.brokers)) or "none"
    return f"brokers alive: {alive}"


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 1] + "…"


def find_problems(
    broker: BrokerState,
    lag: LagState,
    clickhouse: ClickHouseState,
    stale_hours: float,
    max_reject_share: float,
) -> tuple[Problem, ...]:
    """Everything that needs an operator, in the order to look at it."""
    problems: list[Problem] = []
    if not broker.reachable:
        kind = "kafka_refused" if broker.refused else "broker_unreachable"
        problems.append(Problem(kind, broker.error or "the broker is unreachable"))
    else:
        hidden = [t.name for t in broker.topics if not t.authorized]
        missing = [t.name for t in broker.topics if t.authorized and not t.exists]
        if broker.silent:
            problems.append(
                Problem(
                    "broker_silent",
                    f"broker(s) {', '.join(map(str, broker.silent))} refuse connections though "
                    f"the cluster still lists them ({_brokers_phrase(broker)}): stopped or "
                    "crashed a moment ago; the controller fences a broker that stops answering "
                    "after about 9 s, and its partitions then show as under-replicated. Bring "
                    "it back (`exnet broker start` restarts a local cluster's stopped nodes)",
                )
            )
        if broker.offline:
            problems.append(
                Problem(
                    "partitions_offline",
                    f"{broker.offline} partition(s) of exnet's topics have no leader: nothing "
                    "is written to or read from them until a broker holding a replica is back "
                    f"({_brokers_phrase(broker)})",
                )
            )
        if broker.under_replicated:
            problems.append(
                Problem(
                    "under_replicated",
                    f"{broker.under_replicated} partition(s) of exnet's topics have a replica "
                    f"out of sync, on broker(s) {', '.join(map(str, broker.out_of_sync))} "
                    f"({_brokers_phrase(broker)}): data is held by fewer copies, and writes stop "
                    "once fewer than min.insync.replicas are in sync; bring the broker(s) back "
                    "(`exnet broker start` restarts a local cluster's stopped nodes)",
                )
            )
        if hidden:  # nothing more can be read with this login
            problems.append(
                Problem(
                    "topics_not_authorized",
                    f"Kafka does not let the login {broker.login or 'anonymous'!r} describe "
                    f"{len(hidden)} of exnet's topics ({', '.join(hidden)}): run status "
                    "with the platform's login (EXNET_ENV_FILE naming the exnet principal's "
                    "env file) or grant this one Describe on them",
                )
            )
        elif missing:
            problems.append(
                Problem(
                    "topics_missing",
                    f"{len(missing)} topic(s) missing: {', '.join(missing)} (run `exnet init`)",
                )
            )
        elif not lag.available:
            problems.append(Problem("lag_unavailable", lag.error or "cannot read consumer lag"))
        else:
            idle: dict[str, list[StageLag]] = {}  # once per group: stages share groups
            for stage in lag.stages:
                if not stage.members:
                    idle.setdefault(stage.group, []).append(stage)
            for group, stages in idle.items():
                names = [s.stage for s in stages]
                which = (
                    f"the {names[0]} stage"
                    if len(names) == 1
                    else f"the {', '.join(names[:-1])} and {names[-1]} stages"
                )
                problems.append(
                    Problem(
                        "no_workers",
                        f"nothing runs {which}: consumer group {group} has no members "
                        "(start `exnet up`, or read the log of one that runs: a process "
                        "Kafka refuses to log in joins no group; "
                        f"{sum(s.total for s in stages)} messages wait)",
                    )
                )
    if not clickhouse.reachable:
        problems.append(
            Problem(
                "clickhouse_unreachable",
                f"ClickHouse {clickhouse.url} (database {clickhouse.database}): {clickhouse.error}",
            )
        )
        return tuple(problems)
    stale = [s for s in clickhouse.sites if s.stale]
    if stale:
        silent = [s.site_id for s in stale if s.last_ingested_at is not None]
        never = [s.site_id for s in stale if s.last_ingested_at is None]
        parts = []
        if silent:
            parts.append(f"sent no event for more than {stale_hours:g} h: {', '.join(silent)}")
        if never:
            parts.append(f"never sent one: {', '.join(never)}")
        problems.append(Problem("stale_sites", f"{len(stale)} site(s) " + "; ".join(parts)))
    share = clickhouse.reject_share
    if share is not None and share > max_reject_share:
        problems.append(
            Problem(
                "high_reject_share",
                f"{share:.1%} of the last day's events written to ClickHouse were rejected "
                f"({clickhouse.rejected_last_day} of "
                f"{clickhouse.rejected_last_day + clickhouse.accepted_last_day}, "
                "accepted and rejected; duplicates are not written; "
                f"limit {max_reject_share:.1%}): see `exnet rejects --since 24h`",
            )
        )
    return tuple(problems)


# --- rendering ------------------------------------------------------------------


def _when(moment: datetime | None, now: datetime) -> Text:
    if moment is None:
        return Text("never", style="dim")
    if moment > now:  # an event up to 5 min ahead is accepted (SPEC §2): the site's clock
        return Text(f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} ({_age(moment - now)} ahead)")
    return Text(f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} ({_age(now - moment)} ago)")


#: A site whose newest event occurred longer ago than this says so (it may send only
#: backfills, or have stopped recording).
OLD_EVENTS: Final = timedelta(days=30)


def _site_state(site: SiteState, now: datetime) -> Text:
    if site.stale:
        return Text("STALE", style="bold red")
    if site.last_occurred_at is None or now - site.last_occurred_at > OLD_EVENTS:
        return Text("old events", style="yellow")
    return Text("ok", style="green")


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def render_status(report: StatusReport) -> RenderableType:
    """The terminal screen: header, problems, broker, lag, sites, rejects, throughput."""
    now = report.generated_at
    parts: list[RenderableType] = []
    verdict = (
        Text("HEALTHY", style="bold green")
        if report.healthy
        else Text(f"{len(report.problems)} PROBLEM(S)", style="bold red")
    )
    parts.append(
        Text.assemble(
            ("exnet status ", "bold"),
            f"{now.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z  ",
            verdict,
        )
    )
    if report.problems:
        lines = Text("\n").join(
            Text.assemble(("• ", "red"), (p.kind, "bold red"), ": ", p.message)
            for p in report.problems
        )
        parts.append(Panel(lines, title="problems", title_align="left", border_style="red"))
    parts.append(_broker_part(report))
    parts.append(_lag_part(report))
    parts.extend(_clickhouse_parts(report, now))
    spaced: list[RenderableType] = []
    for part in parts:
        if spaced:
            spaced.append(Text(""))
        spaced.append(part)
    return Group(*spaced)


def _broker_part(report: StatusReport) -> RenderableType:
    broker = report.broker
    head = Text.assemble(("Broker ", "bold"), broker.bootstrap, ": ")
    if not broker.reachable:
        head.append(str(broker.error), style="red")
        return head
    head.append("reachable", style="green")
    if broker.brokers:
        head.append(f", brokers alive: {', '.join(map(str, broker.brokers))}")
    if broker.silent:
        head.append(f", not answering: {', '.join(map(str, broker.silent))}", style="red")
    hidden = [t for t in broker.topics if not t.authorized]
    missing = [t for t in broker.topics if t.authorized and not t.exists]
    counts = sorted({t.partitions for t in broker.topics if t.exists})
    exist = len(broker.topics) - len(missing) - len(hidden)
    line = Text(f"topics: {exist} of {len(broker.topics)} exist")
    if hidden:
        login = broker.login or "anonymous"
        line.append(f", {len(hidden)} not visible to login {login!r}", style="red")
    if counts:
        # "1 or 6": the contributions topic has one partition, the others the setting's
        # number ("1/6" read as "one of six").
        plural = "partition" if counts == [1] else "partitions"
        line.append(f", {' or '.join(str(c) for c in counts)} {plural} each")
    if broker.under_replicated:
        line.append(f", {broker.under_replicated} under-replicated", style="red")
    if broker.offline:
        line.append(f", {broker.offline} offline", style="bold red")
    if not missing:
        return Group(head, line)
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("missing topic", style="bold red")
    for topic in missing:
        table.add_row(topic.name)
    return Group(head, line, table)


def _lag_part(report: StatusReport) -> RenderableType:
    lag = report.lag
    if not lag.available:
        return Text.assemble(("Lag ", "bold"), (str(lag.error), "yellow"))
    table = Table(box=None, pad_edge=False, show_edge=False)
    for name, justify in (
        ("stage", "left"),
        ("topic", "left"),
        ("partition", "right"),
        ("committed", "right"),
        ("end", "right"),
        ("lag", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]  # literal justify
    for stage in lag.stages:
        lagging = [p for p in stage.partitions if p.lag > 0]
        style = "bold yellow" if stage.total else "green"
        running = (
            # the members of the group that runs the stage (validate, deduplicate, aggregate
            # and rollup share one): "2 running" beside rollup, which one worker holds, misled
            Text(f"{len(stage.members)} in its group", style="green")
            if stage.members
            else Text("NOT RUNNING", style="bold red")
        )
        table.add_row(
            Text.assemble((stage.stage, "bold"), " ", running),
            Text(f"{len(stage.partitions)} partitions, {len(lagging)} lagging", style="dim"),
            "",
            "",
            "",
            Text(str(stage.total), style=style),
        )
        for p in lagging:
            table.add_row(
                "",
                p.topic,
                str(p.partition),
                str(p.committed),
                str(p.end),
                Text(str(p.lag), style="yellow"),
            )
    return Group(Text.assemble(("Lag ", "bold"), f"total {lag.total}"), table)


def _clickhouse_parts(report: StatusReport, now: datetime) -> list[RenderableType]:
    ch = report.clickhouse
    head = Text.assemble(("ClickHouse ", "bold"), f"{ch.url} database {ch.database}: ")
    if not ch.reachable:
        head.append(str(ch.error), style="red")
        return [head]
    head.append("reachable", style="green")
    head.append(
        f"\nSites (STALE: no event received for more than {report.stale_hours:g} h; "
        f"old events: the newest occurred more than {OLD_EVENTS.days} days ago)",
        style="bold",
    )
    sites = Table(
        box=None,
        pad_edge=False,
        show_edge=False,
    )
    sites.add_column("node")
    sites.add_column("site", no_wrap=True)
    sites.add_column("state", no_wrap=True)
    sites.add_column("last occurred (UTC)", no_wrap=True)
    sites.add_column("last received (UTC)", no_wrap=True)
    sites.add_column("last day", justify="right")
    sites.add_column("total", justify="right")
    for s in ch.sites:
        style = "bold red" if s.stale else ""
        site_label = s.site_id if s.registered else f"{s.site_id} (unregistered)"
        sites.add_row(
            s.node_id,
            Text(site_label, style=style),
            _site_state(s, now),
            _when(s.last_occurred_at, now),
            _when(s.last_ingested_at, now),
            str(s.events_last_day),
            str(s.events_total),
        )
    share = ch.reject_share
    over = share is not None and share > report.max_reject_share
    share_text = Text(
        "n/a" if share is None else f"{share:.1%}", style="bold red" if over else "green"
    )
    rejects_head = Text.assemble(
        ("Rejects, last 24 h: ", "bold"),
        f"{ch.rejected_last_day} rejected, {ch.accepted_last_day} accepted, share ",
        share_text,
        f" (limit {report.max_reject_share:.1%})",
    )
    rejects = Table(box=None, pad_edge=False, show_edge=False)
    rejects.add_column("reason")
    rejects.add_column("messages", justify="right")
    for reason, count in ch.rejects_by_reason:
        rejects.add_row(reason, str(count))
    throughput = Table(
        title="Sink throughput (rows written)",
        title_justify="left",
        title_style="bold",
        box=None,
        pad_edge=False,
        show_edge=False,
    )
    throughput.add_column("table")
    throughput.add_column("last 5 min", justify="right")
    throughput.add_column("last hour", justify="right")
    for t in ch.throughput:
        throughput.add_row(t.table, str(t.rows_5m), str(t.rows_1h))
    reject_part: RenderableType = (
        Group(rejects_head, rejects) if ch.rejects_by_reason else rejects_head
    )
    return [Group(head, sites), reject_part, throughput, _views_part(ch)]


def _views_part(ch: ClickHouseState) -> RenderableType:
    """The stream-written per-node and network figures (SPEC §4), as the rollup last wrote."""
    if not ch.views:
        return Text.assemble(("Views: ", "bold"), "no rows written by the stream yet")
    table = Table(
        title="Views (stream-written node_summary and network_summary)",
        title_justify="left",
        title_style="bold",
        box=None,
        pad_edge=False,
        show_edge=False,
    )
    table.add_column("node")
    for column in VIEW_FIGURES:
        table.add_column(column.replace("_", " "), justify="right")
    table.add_column("updated (UTC)", no_wrap=True)
    for row in ch.views:
        label = row["node_id"] or "network"
        figures = [
            f"{float(row[c]):,.0f}" if c == "exercise_minutes" else str(row[c])
            for c in VIEW_FIGURES
        ]
        updated = str(row.get("updated_at", ""))[:19].replace("T", " ")
        table.add_row(Text(label, style="bold" if not row["node_id"] else ""), *figures, updated)
    return table
