"""``exnet report``: one self-contained HTML file for analysts and steering committees.

What callers may rely on:

- :func:`build_report` reads the analytics tables and views read-only (through
  :func:`~sinks.query.run_query`, so it works while ``exnet up`` runs)
  and returns the whole page as a string; :func:`write_report` writes it.
- The page needs nothing but itself: charts are inline SVG drawn here, the
  style and the small checking script are inline, and a Content-Security-Policy
  forbids every fetch, so it renders the same offline, from a mail attachment.
- Every chart is an ``<svg class="chart" data-chart=ID data-marks=N>`` whose N
  marks carry ``class="mark"``; a data table under it holds the same numbers.
  After load, the page's script sets ``data-report="ok"`` on ``<body>`` when
  every chart has its marks and no error happened, or ``"error"`` and lists
  the errors in ``#report-errors``.
- Arms are (modality, adjunct) from ``participant_arms``; the definitions
  section of the page states how each figure is computed, in particular that
  response and remission rates are over *randomized* participants
  (intention to treat: without a later assessment a participant counts as
  neither responder nor remitter), with 95% Wilson intervals.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Final, get_args

from contracts.enrollment import Adjunct, EnrollmentStatus
from contracts.enrollment import Arm as Modality
from contracts.errors import UserError
from contracts.registry import ANY_LATER_WEEK
from contracts.session import AdverseEvent
from contracts.units import Analyte
from exnet.ops._sql import from_millis, query_rows, to_float, to_int
from exnet.ops.status import clickhouse_url
from exnet.ops.svg import Chart, hbar_chart, line_chart
from exnet.settings import Settings
from sinks.rows import FACT_TABLES

__all__ = [
    "ADJUNCT_ORDER",
    "MODALITY_ORDER",
    "ArmOutcome",
    "ReportData",
    "arm_label",
    "build_report",
    "collect_report",
    "render_report",
    "wilson_interval",
    "write_report",
]

#: z for a two-sided 95% interval.
Z95: Final = 1.959963984540054
#: Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom 1..30; past 30 the
#: listed points, then z. (Published values, to 3 decimals: no statistics library needed
#: for one column of a table.)
_T975: Final = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_T975_BEYOND: Final = ((40, 2.021), (60, 2.000), (120, 1.980))
#: Arms with fewer participants than this are flagged: their intervals are wide.
SMALL_N: Final = 10


def t975(degrees: int) -> float:
    """The two-sided 95% critical value of Student's t with ``degrees`` of freedom (>= 1)."""
    if degrees <= len(_T975):
        return _T975[degrees - 1]
    for upto, value in _T975_BEYOND:
        if degrees <= upto:
            return value
    return Z95


#: Arms, adjuncts and analytes are shown in the contracts' order.
MODALITY_ORDER: Final[tuple[str, ...]] = get_args(Modality)
ADJUNCT_ORDER: Final[tuple[str, ...]] = get_args(Adjunct)
ANALYTE_ORDER: Final[tuple[str, ...]] = get_args(Analyte)
#: The enrollment statuses as a funnel: the contract's order, with withdrawal (a
#: leak from the funnel, not a stage of it) last.
FUNNEL_STAGES: Final[tuple[str, ...]] = tuple(
    sorted(get_args(EnrollmentStatus), key=lambda status: status == "withdrawn")
)
_SCREENED: Final = FUNNEL_STAGES.index("screened")
_RANDOMIZED: Final = FUNNEL_STAGES.index("randomized")
#: Data tables longer than this start folded (the chart shows the shape).
_FOLD_ROWS: Final = 16

Arm = tuple[str, str]


def arm_label(arm: Arm) -> str:
    """``aerobic`` or ``aerobic + psychotherapy``."""
    modality, adjunct = arm
    return modality if adjunct == "none" else f"{modality} + {adjunct}"


def _arm_order(arm: Arm) -> tuple[int, str, int, str]:
    modality, adjunct = arm
    m = MODALITY_ORDER.index(modality) if modality in MODALITY_ORDER else len(MODALITY_ORDER)
    a = ADJUNCT_ORDER.index(adjunct) if adjunct in ADJUNCT_ORDER else len(ADJUNCT_ORDER)
    return (m, modality, a, adjunct)


def _analyte_order(key: tuple[str, str]) -> tuple[int, str, str]:
    analyte, specimen = key
    index = ANALYTE_ORDER.index(analyte) if analyte in ANALYTE_ORDER else len(ANALYTE_ORDER)
    return (index, analyte, specimen)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion; None when ``n`` is 0."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


# --- the data ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeFunnel:
    node_id: str
    name: str
    counts: tuple[int, ...]  # in FUNNEL_STAGES order


@dataclass(frozen=True, slots=True)
class ArmSessions:
    attended: int
    missed: int
    cancelled: int
    minutes: float

    @property
    def scheduled(self) -> int:
        return self.attended + self.missed + self.cancelled

    @property
    def adherence(self) -> float | None:
        return self.attended / self.scheduled if self.scheduled else None


@dataclass(frozen=True, slots=True)
class ArmOutcome:
    randomized: int
    evaluable: int
    responders: int
    remitters: int


@dataclass(frozen=True, slots=True)
class ChangeSummary:
    n: int
    mean: float
    median: float
    ci: tuple[float, float] | None
    #: Geometric-mean ratio post / baseline, and its 95% interval.
    gmr: float | None = None
    gmr_ci: tuple[float, float] | None = None


@dataclass(frozen=True)
class ReportData:
    generated_at: datetime
    database: str
    url: str
    totals: dict[str, float]
    nodes: int
    sites: int
    rejected: int
    updated_at: datetime | None
    funnel: tuple[NodeFunnel, ...]
    #: node_id -> {Monday of the week: participants randomized that week}
    weekly: dict[str, dict[date, int]]
    arms: dict[Arm, ArmOutcome]
    sessions: dict[Arm, ArmSessions]
    #: (analyte, specimen_type) -> canonical unit, and -> arm -> change summary
    units: dict[tuple[str, str], str] = field(default_factory=dict)
    changes: dict[tuple[str, str], dict[Arm, ChangeSummary]] = field(default_factory=dict)
    #: arm -> adverse-event severity -> sessions with one
    adverse: dict[Arm, dict[str, int]] = field(default_factory=dict)
    #: (withdrawal reason, arm or None when never randomized) -> participants
    withdrawals: dict[tuple[str, Arm | None], int] = field(default_factory=dict)
    #: one row per site: site_id, node_id, name and the counts of SITE_COLUMNS
    site_rows: tuple[dict[str, Any], ...] = ()
    #: The data cut-off: the newest occurred_at of any accepted event.
    cutoff: datetime | None = None
    #: How responders and remitters were counted (the registry's primary endpoint or
    #: SPEC §1's rule), in words: the ``study`` table's.
    outcome_definition: str = ANY_LATER_WEEK

    @property
    def arm_keys(self) -> list[Arm]:
        return sorted(set(self.arms) | set(self.sessions), key=_arm_order)


def collect_report(settings: Settings, now: datetime | None = None) -> ReportData:
    """Read everything the report shows (read-only)."""
    db = settings.clickhouse_database
    network = query_rows(
        settings,
        f"SELECT * EXCEPT (version, is_deleted), toUnixTimestamp64Milli(updated_at) AS updated_ms "  # noqa: S608  # validated names, quoted values
        f"FROM {db}.network_summary FINAL",  # noqa: S608  # validated names, quoted values
    )
    totals = {
        key: to_float(value)
        for key, value in (network[0] if network else {}).items()
        if key not in ("updated_at", "updated_ms")
    }
    funnel = tuple(
        NodeFunnel(
            str(r["node_id"]),
            str(r["node_name"]),
            tuple(to_int(r[stage]) for stage in FUNNEL_STAGES),
        )
        for r in query_rows(
            settings,
            f"SELECT node_id, node_name, {', '.join(FUNNEL_STAGES)} "  # noqa: S608  # validated names, quoted values
            f"FROM {db}.node_summary FINAL ORDER BY node_id",
        )
    )
    sites = to_int(query_rows(settings, f"SELECT uniqExact(site_id) AS n FROM {db}.sites")[0]["n"])  # noqa: S608  # validated names, quoted values
    rejected = to_int(
        query_rows(settings, f"SELECT count() AS n FROM {db}.rejected_events FINAL")[0]["n"]  # noqa: S608  # validated names, quoted values
    )
    weekly: dict[str, dict[date, int]] = defaultdict(dict)
    for r in query_rows(
        settings,
        f"SELECT node_id, toString(toMonday(randomized_at)) AS week, count() AS n "  # noqa: S608  # validated names, quoted values
        f"FROM {db}.participant_arms GROUP BY node_id, week",
    ):
        weekly[str(r["node_id"])][date.fromisoformat(str(r["week"]))] = to_int(r["n"])
    return ReportData(
        generated_at=now if now is not None else datetime.now(UTC),
        database=db,
        url=clickhouse_url(settings),
        totals=totals,
        nodes=len(funnel),
        sites=sites,
        rejected=rejected,
        updated_at=from_millis(network[0]["updated_ms"]) if network else None,
        funnel=funnel,
        weekly=dict(weekly),
        arms=_arms(settings),
        sessions=_sessions(settings),
        **_changes(settings),
        **_safety(settings),
        site_rows=_site_rows(settings),
        outcome_definition=_outcome_definition(settings),
        cutoff=_cutoff(settings),
    )


#: The per-site table's counts, in order.
SITE_COLUMNS: Final = (
    "screened",
    "randomized",
    "withdrawn",
    "sessions_attended",
    "adverse_events",
    "assays",
    "assessments",
)


def _safety(settings: Settings) -> dict[str, Any]:
    db = settings.clickhouse_database
    adverse: dict[Arm, dict[str, int]] = defaultdict(dict)
    for r in query_rows(
        settings,
        f"""SELECT a.modality AS modality, a.adjunct AS adjunct,
            toString(s.adverse_event) AS severity, count() AS sessions
        FROM {db}.session_events AS s FINAL
        INNER JOIN {db}.participant_arms AS a ON a.participant_id = s.participant_id
        WHERE s.adverse_event IS NOT NULL
        GROUP BY modality, adjunct, severity""",  # noqa: S608  # validated names, quoted values
    ):
        adverse[_arm(r)][str(r["severity"])] = to_int(r["sessions"])
    withdrawals: dict[tuple[str, Arm | None], int] = {}
    for r in query_rows(
        settings,
        f"""SELECT ifNull(toString(w.reason), 'not given') AS reason,
            a.participant_id != '' AS randomized, a.modality AS modality, a.adjunct AS adjunct,
            uniqExact(w.participant_id) AS participants
        FROM (
            SELECT participant_id, argMax(reason, occurred_at) AS reason
            FROM {db}.enrollment_events FINAL WHERE status = 'withdrawn' GROUP BY participant_id
        ) AS w
        LEFT JOIN {db}.participant_arms AS a ON a.participant_id = w.participant_id
        GROUP BY reason, randomized, modality, adjunct""",  # noqa: S608  # validated names, quoted values
    ):
        arm = _arm(r) if r["randomized"] else None
        withdrawals[(str(r["reason"]), arm)] = to_int(r["participants"])
    return {"adverse": dict(adverse), "withdrawals": withdrawals}


def _site_rows(settings: Settings) -> tuple[dict[str, Any], ...]:
    db = settings.clickhouse_database
    return tuple(
        query_rows(
            settings,
            f"""SELECT r.site_id AS site_id, r.node_id AS node_id, r.name AS name,
                ifNull(e.screened, 0) AS screened, ifNull(e.randomized, 0) AS randomized,
                ifNull(e.withdrawn, 0) AS withdrawn,
                ifNull(s.sessions_attended, 0) AS sessions_attended,
                ifNull(s.adverse_events, 0) AS adverse_events,
                ifNull(y.assays, 0) AS assays, ifNull(m.assessments, 0) AS assessments
            FROM (SELECT site_id, argMax(node_id, loaded_at) AS node_id,
                    argMax(name, loaded_at) AS name FROM {db}.sites GROUP BY site_id) AS r
            LEFT JOIN (SELECT site_id,
                    uniqExactIf(participant_id, status = 'screened') AS screened,
                    uniqExactIf(participant_id, status = 'randomized') AS randomized,
                    uniqExactIf(participant_id, status = 'withdrawn') AS withdrawn
                FROM {db}.enrollment_events FINAL GROUP BY site_id) AS e ON e.site_id = r.site_id
            LEFT JOIN (SELECT site_id, countIf(status = 'attended') AS sessions_attended,
                    countIf(adverse_event IS NOT NULL) AS adverse_events
                FROM {db}.session_events FINAL GROUP BY site_id) AS s ON s.site_id = r.site_id
            LEFT JOIN (SELECT site_id, count() AS assays FROM {db}.assay_events FINAL
                GROUP BY site_id) AS y ON y.site_id = r.site_id
            LEFT JOIN (SELECT site_id, count() AS assessments FROM {db}.assessment_events FINAL
                GROUP BY site_id) AS m ON m.site_id = r.site_id
            ORDER BY r.node_id, r.site_id""",  # noqa: S608  # validated names, quoted values
        )
    )


def _cutoff(settings: Settings) -> datetime | None:
    db = settings.clickhouse_database
    union = " UNION ALL ".join(
        f"SELECT max(occurred_at) AS at FROM {db}.{table}"  # noqa: S608  # validated names
        for table in FACT_TABLES.values()
    )
    rows = query_rows(
        settings,
        f"SELECT toUnixTimestamp64Milli(max(at)) AS ms, countIf(at > toDateTime64(0, 3)) AS n "  # noqa: S608  # validated names
        f"FROM ({union})",
    )
    return from_millis(rows[0]["ms"]) if rows and to_int(rows[0]["n"]) else None


def _arm(row: Mapping[str, Any]) -> Arm:
    return (str(row["modality"]), str(row["adjunct"]))


def _outcome_definition(settings: Settings) -> str:
    """The definition of response and remission in force (the latest registry load's)."""
    db = settings.clickhouse_database
    rows = query_rows(
        settings,
        f"SELECT argMax(definition, loaded_at) AS definition, count() AS n FROM {db}.study",  # noqa: S608  # validated names
    )
    return str(rows[0]["definition"]) if rows and to_int(rows[0]["n"]) else ANY_LATER_WEEK


def _arms(settings: Settings) -> dict[Arm, ArmOutcome]:
    db = settings.clickhouse_database
    evaluable = {
        _arm(r): to_int(r["evaluable"])
        for r in query_rows(
            settings,
            f"""SELECT a.modality AS modality, a.adjunct AS adjunct, count() AS evaluable
            FROM {db}.participant_arms AS a
            INNER JOIN (
                SELECT participant_id FROM {db}.assessment_events FINAL
                GROUP BY participant_id HAVING countIf(week = 0) > 0 AND countIf(week > 0) > 0
            ) AS e ON e.participant_id = a.participant_id
            GROUP BY modality, adjunct""",  # noqa: S608  # validated names, quoted values
        )
    }
    return {
        _arm(r): ArmOutcome(
            to_int(r["randomized"]),
            evaluable.get(_arm(r), 0),
            to_int(r["responders"]),
            to_int(r["remitters"]),
        )
        for r in query_rows(
            settings,
            f"SELECT modality, adjunct, randomized, responders, remitters "  # noqa: S608  # validated names, quoted values
            f"FROM {db}.arm_summary FINAL WHERE scope = 'network'",
        )
    }


def _sessions(settings: Settings) -> dict[Arm, ArmSessions]:
    db = settings.clickhouse_database
    rows = query_rows(
        settings,
        f"""SELECT a.modality AS modality, a.adjunct AS adjunct,
            sum(s.attended) AS attended, sum(s.missed) AS missed,
            sum(s.cancelled) AS cancelled, sum(s.minutes) AS minutes
        FROM {db}.participant_arms AS a
        INNER JOIN (
            SELECT participant_id,
                countIf(status = 'attended') AS attended,
                countIf(status = 'missed') AS missed,
                countIf(status = 'cancelled') AS cancelled,
                toFloat64(ifNull(sumIf(duration_min, status = 'attended'), 0)) AS minutes
            FROM {db}.session_events FINAL GROUP BY participant_id
        ) AS s ON s.participant_id = a.participant_id
        GROUP BY modality, adjunct""",  # noqa: S608  # validated names, quoted values
    )
    return {
        _arm(r): ArmSessions(
            to_int(r["attended"]),
            to_int(r["missed"]),
            to_int(r["cancelled"]),
            to_float(r["minutes"]),
        )
        for r in rows
    }


def _changes(settings: Settings) -> dict[str, Any]:
    """Post minus baseline per participant (replicates averaged), summarised per arm."""
    db = settings.clickhouse_database
    rows = query_rows(
        settings,
        f"""SELECT a.modality AS modality, a.adjunct AS adjunct, p.analyte AS analyte,
            p.specimen_type AS specimen_type, p.unit AS unit, p.post - p.baseline AS change,
            if(p.baseline > 0 AND p.post > 0, p.post / p.baseline, NULL) AS ratio
        FROM (
            SELECT participant_id, toString(analyte) AS analyte,
                toString(specimen_type) AS specimen_type,
                any(toString(unit_canonical)) AS unit,
                avgIf(value_canonical, timepoint = 'baseline') AS baseline,
                avgIf(value_canonical, timepoint = 'post') AS post
            FROM {db}.assay_events FINAL
            WHERE timepoint IN ('baseline', 'post') AND NOT below_lloq
            GROUP BY participant_id, analyte, specimen_type
            HAVING countIf(timepoint = 'baseline') > 0 AND countIf(timepoint = 'post') > 0
        ) AS p
        INNER JOIN {db}.participant_arms AS a ON a.participant_id = p.participant_id""",  # noqa: S608  # validated names, quoted values
    )
    units: dict[tuple[str, str], str] = {}
    values: dict[tuple[str, str], dict[Arm, list[float]]] = defaultdict(lambda: defaultdict(list))
    ratios: dict[tuple[str, str], dict[Arm, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (str(r["analyte"]), str(r["specimen_type"]))
        units[key] = str(r["unit"])
        values[key][_arm(r)].append(to_float(r["change"]))
        if r["ratio"] is not None:
            ratios[key][_arm(r)].append(to_float(r["ratio"]))
    changes = {
        key: {arm: summarise(v, ratios[key][arm]) for arm, v in per_arm.items()}
        for key, per_arm in values.items()
    }
    return {"units": units, "changes": changes}


def mean_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The 95% t-interval of the mean of ``values`` (None below 2 values)."""
    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = t975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return (mean - half, mean + half)


def summarise(values: Sequence[float], ratios: Sequence[float] = ()) -> ChangeSummary:
    """n, mean, median and the 95% t-interval of the mean change (n >= 2); and the
    geometric-mean ratio post / baseline with its 95% interval (from ``ratios``, the
    participants' positive ratios, averaged on the log scale)."""
    logs = [math.log(r) for r in ratios if r > 0]
    log_ci = mean_interval(logs)
    return ChangeSummary(
        len(values),
        statistics.fmean(values),
        statistics.median(values),
        mean_interval(values),
        math.exp(statistics.fmean(logs)) if logs else None,
        (math.exp(log_ci[0]), math.exp(log_ci[1])) if log_ci else None,
    )


# --- rendering ------------------------------------------------------------------------


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _pct(value: float) -> str:
    return f"{value:.0f}%"


def _pct1(value: float) -> str:
    return f"{value:.1f}%"


def _signed(value: float) -> str:
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3
    return f"{value:+,.{digits}f}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric_from: int = 1) -> str:
    body = list(rows)
    head = "".join(
        f'<th class="{"num" if i >= numeric_from else ""}">{escape(h)}</th>'
        for i, h in enumerate(headers)
    )
    cells = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i >= numeric_from else ""}">{escape(c)}</td>'
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in body
    )
    table = f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>'
    if len(body) > _FOLD_ROWS:
        return f"<details><summary>data table ({len(body)} rows)</summary>{table}</details>"
    return table


@dataclass(frozen=True, slots=True)
class Section:
    key: str
    title: str
    intro: str
    charts: tuple[Chart, ...]
    table: str
    grid: bool = False

    def html(self) -> str:
        charts = "".join(f'<div class="chart-box">{c.svg}</div>' for c in self.charts)
        layout = "charts grid" if self.grid else "charts"
        return (
            f'<section id="{self.key}"><h2>{escape(self.title)}</h2>'
            f'<p class="intro">{self.intro}</p><div class="{layout}">{charts}</div>'
            f"{self.table}</section>"
        )


def _funnel(data: ReportData) -> Section:
    rows = [f.node_id for f in data.funnel]
    values = {
        (f.node_id, stage): float(count)
        for f in data.funnel
        for stage, count in zip(FUNNEL_STAGES, f.counts, strict=True)
    }
    chart = hbar_chart(
        "funnel",
        "Participants reaching each status, per node",
        rows,
        FUNNEL_STAGES,
        values,
        value_format=_count,
        axis_label="distinct participants",
    )
    table = _table(
        ["node", "name", *FUNNEL_STAGES, "randomized / screened"],
        (
            [
                f.node_id,
                f.name,
                *(_count(c) for c in f.counts),
                _pct1(100 * f.counts[_RANDOMIZED] / f.counts[_SCREENED])
                if f.counts[_SCREENED]
                else "–",
            ]
            for f in data.funnel
        ),
        numeric_from=2,
    )
    return Section(
        "funnel",
        "Recruitment funnel per node",
        "Distinct participants who reached each status (<code>node_summary</code>). "
        "Completed and withdrawn are the two ways out of the programme.",
        (chart,),
        table,
    )


def _weeks(data: ReportData) -> list[date]:
    every = [week for per_node in data.weekly.values() for week in per_node]
    if not every:
        return []
    first, last = min(every), max(every)
    return [first + timedelta(weeks=i) for i in range((last - first).days // 7 + 1)]


def _enrollment(data: ReportData) -> Section:
    weeks = _weeks(data)
    nodes = sorted(data.weekly)
    cumulative: dict[str, list[float]] = {}
    for node in nodes:
        total, series = 0, []
        for week in weeks:
            total += data.weekly[node].get(week, 0)
            series.append(float(total))
        cumulative[node] = series
    chart = line_chart(
        "enrollment",
        "Cumulative participants randomized, per node",
        [f"{w:%d %b %y}" for w in weeks],
        cumulative,
        value_format=_count,
        axis_label="week (starting Monday, UTC)",
    )
    table = _table(
        ["week", *nodes, "network"],
        (
            [
                w.isoformat(),
                *(_count(cumulative[n][i]) for n in nodes),
                _count(sum(cumulative[n][i] for n in nodes)),
            ]
            for i, w in enumerate(weeks)
        ),
    )
    return Section(
        "enrollment",
        "Enrollment over time",
        "Cumulative count of participants randomized by the end of each week (their first "
        "randomization, <code>participant_arms.randomized_at</code>), by the node of their "
        "latest: a participant randomized again at another node counts there alone, where "
        "<code>node_summary</code>'s <code>randomized</code> counts them at both.",
        (chart,),
        table,
    )


def _balance(data: ReportData) -> Section:
    arms = dict(data.arms.items())
    modalities = sorted({m for m, _ in arms}, key=lambda m: _arm_order((m, "none")))
    adjuncts = sorted({a for _, a in arms}, key=lambda a: _arm_order(("", a)))
    values = {(m, a): float(o.randomized) for (m, a), o in arms.items()}
    chart = hbar_chart(
        "arm-balance",
        "Participants randomized per modality, by adjunct",
        modalities,
        adjuncts,
        values,
        value_format=_count,
        axis_label="participants randomized",
        stacked=True,
    )
    total = sum(o.randomized for o in arms.values())
    table = _table(
        ["modality", *adjuncts, "total", "share"],
        (
            [
                m,
                *(_count(values.get((m, a), 0.0)) for a in adjuncts),
                _count(sum(values.get((m, a), 0.0) for a in adjuncts)),
                _pct1(100 * sum(values.get((m, a), 0.0) for a in adjuncts) / total)
                if total
                else "–",
            ]
            for m in modalities
        ),
    )
    return Section(
        "arm-balance",
        "Arm balance",
        "Participants randomized to each modality and adjunct, network-wide "
        "(<code>arm_summary</code>, scope <code>network</code>).",
        (chart,),
        table,
    )


def _adherence(data: ReportData) -> Section:
    arms = data.arm_keys
    labels = {arm: arm_label(arm) for arm in arms}
    with_sessions = [arm for arm in arms if arm in data.sessions and data.sessions[arm].scheduled]
    adherence = hbar_chart(
        "adherence",
        "Session adherence by arm",
        [labels[a] for a in with_sessions],
        ["adherence"],
        {
            (labels[a], "adherence"): 100 * (data.sessions[a].adherence or 0.0)
            for a in with_sessions
        },
        value_format=_pct1,
        tick_format=_pct,
        axis_label="attended / (attended + missed + cancelled), %",
        domain=(0.0, 100.0),
    )
    per_participant = {
        arm: (data.sessions[arm].minutes if arm in data.sessions else 0.0)
        / data.arms[arm].randomized
        for arm in arms
        if arm in data.arms and data.arms[arm].randomized
    }
    minutes = hbar_chart(
        "exercise-minutes",
        "Exercise minutes per randomized participant, by arm",
        [labels[a] for a in per_participant],
        ["minutes"],
        {(labels[a], "minutes"): v for a, v in per_participant.items()},
        value_format=_count,
        axis_label="minutes of attended sessions / participants randomized",
    )
    rows = []
    for arm in arms:
        s = data.sessions.get(arm, ArmSessions(0, 0, 0, 0.0))
        randomized = data.arms[arm].randomized if arm in data.arms else 0
        rows.append(
            [
                labels[arm],
                _count(randomized),
                _count(s.attended),
                _count(s.missed),
                _count(s.cancelled),
                _pct1(100 * s.adherence) if s.adherence is not None else "–",
                _count(s.minutes),
                _count(s.minutes / randomized) if randomized else "–",
            ]
        )
    table = _table(
        [
            "arm",
            "randomized",
            "attended",
            "missed",
            "cancelled",
            "adherence",
            "exercise minutes",
            "minutes / participant",
        ],
        rows,
    )
    return Section(
        "adherence",
        "Session adherence and exercise dose",
        "Sessions of randomized participants, by their arm. Adherence is attended / "
        "(attended + missed + cancelled); exercise minutes sum <code>duration_min</code> of "
        "attended sessions. Arms without sessions (control) have no adherence.",
        (adherence, minutes),
        table,
    )


def _biomarkers(data: ReportData) -> Section:
    charts = []
    rows = []
    for key in sorted(data.changes, key=_analyte_order):
        analyte, specimen = key
        unit = data.units.get(key, "")
        per_arm = data.changes[key]
        arms = sorted(per_arm, key=_arm_order)
        label = {a: _with_n(arm_label(a), per_arm[a].n) for a in arms}
        charts.append(
            hbar_chart(
                f"biomarker-{analyte}-{specimen}",
                f"{analyte} ({specimen}), post − baseline",
                [label[a] for a in arms],
                ["mean change"],
                {(label[a], "mean change"): per_arm[a].mean for a in arms},
                intervals={
                    (label[a], "mean change"): ci for a in arms if (ci := per_arm[a].ci) is not None
                },
                value_format=_signed,
                axis_label=f"mean change, {unit} (95% CI)",
                width=560,
            )
        )
        for arm in arms:
            s = per_arm[arm]
            rows.append(
                [
                    analyte,
                    specimen,
                    unit,
                    arm_label(arm),
                    _count(s.n) + (" (small)" if s.n < SMALL_N else ""),
                    _signed(s.mean),
                    _signed(s.median),
                    f"{_signed(s.ci[0])} to {_signed(s.ci[1])}" if s.ci else "–",
                    _ratio(s.gmr, s.gmr_ci),
                ]
            )
    table = _table(
        [
            "analyte",
            "specimen",
            "unit",
            "arm",
            "n",
            "mean change",
            "median change",
            "95% CI (t)",
            "geometric-mean ratio (95% CI)",
        ],
        rows,
        numeric_from=4,
    )
    return Section(
        "biomarkers",
        "Biomarker change from baseline to post",
        "For each participant, analyte and specimen type with both a <code>baseline</code> and a "
        "<code>post</code> measurement: post − baseline of <code>value_canonical</code> (the "
        "analyte's canonical unit; replicate measurements at one timepoint averaged; "
        "measurements below the LLOQ left out, as in <code>docs/analytics.md</code>), "
        "summarised by the participant's arm. Bars: mean, n beside each arm; whiskers: 95% "
        "Student-t interval of the mean. The geometric-mean ratio (post ÷ baseline averaged "
        f"on the log scale) is the typical relative change. Arms under {SMALL_N} "
        "participants are marked <em>small</em>: read their intervals with care.",
        tuple(charts),
        table,
        grid=True,
    )


def _with_n(label: str, n: int) -> str:
    return f"{label} (n={n}{', small' if n < SMALL_N else ''})"


def _ratio(gmr: float | None, ci: tuple[float, float] | None) -> str:
    if gmr is None:
        return "–"
    return f"{gmr:.2f} ({ci[0]:.2f}–{ci[1]:.2f})" if ci else f"{gmr:.2f}"


def _outcomes(data: ReportData) -> Section:
    arms = sorted(data.arms, key=_arm_order)
    labels = {arm: _with_n(arm_label(arm), data.arms[arm].randomized) for arm in arms}
    series = ("response", "remission")
    values: dict[tuple[str, str], float] = {}
    intervals: dict[tuple[str, str], tuple[float, float]] = {}
    rows = []
    for arm in arms:
        o = data.arms[arm]
        cells = [arm_label(arm), _count(o.randomized), _count(o.evaluable)]
        for name, count in zip(series, (o.responders, o.remitters), strict=True):
            ci = wilson_interval(count, o.randomized)
            cells.append(_count(count))
            if ci is None:
                cells.append("–")
                continue
            values[(labels[arm], name)] = 100 * count / o.randomized
            intervals[(labels[arm], name)] = (100 * ci[0], 100 * ci[1])
            cells.append(f"{100 * count / o.randomized:.1f}% ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})")
        rows.append(cells)
    chart = hbar_chart(
        "outcomes",
        "Response and remission rates by arm (95% Wilson intervals)",
        [labels[a] for a in arms],
        series,
        values,
        intervals=intervals,
        value_format=_pct,
        tick_format=_pct,
        axis_label="% of participants randomized",
        domain=(0.0, 100.0),
    )
    table = _table(
        [
            "arm",
            "randomized",
            "evaluable",
            "responders",
            "response % (95% CI)",
            "remitters",
            "remission % (95% CI)",
        ],
        rows,
    )
    return Section(
        "outcomes",
        "Response and remission by arm",
        "Responders and remitters are those of <code>arm_summary</code> (scope "
        f"<code>network</code>), counted by <strong>{escape(data.outcome_definition)}</strong>. "
        "<strong>Denominator: every participant randomized to the "
        "arm</strong> (intention to treat: a participant without a later assessment counts as "
        "neither). <em>Evaluable</em> = randomized with a week-0 and at least one later "
        "assessment, shown for reference. Intervals: Wilson score, 95%.",
        (chart,),
        table,
    )


#: Adverse-event severities, mildest first (the contracts' order).
SEVERITIES: Final[tuple[str, ...]] = get_args(AdverseEvent)


def _safety_section(data: ReportData) -> Section:
    arms = sorted(set(data.adverse) | set(data.arms), key=_arm_order)
    adverse_rows = []
    for arm in arms:
        counts = data.adverse.get(arm, {})
        attended = data.sessions[arm].attended if arm in data.sessions else 0
        total = sum(counts.values())
        adverse_rows.append(
            [
                arm_label(arm),
                _count(attended),
                *(_count(counts.get(severity, 0)) for severity in SEVERITIES),
                _count(total),
                _pct1(100 * total / attended) if attended else "–",
            ]
        )
    adverse = _table(
        ["arm", "sessions attended", *SEVERITIES, "all", "per attended session"], adverse_rows
    )
    reasons = sorted({reason for reason, _ in data.withdrawals})
    rows_of: list[Arm | None] = [*arms, None]
    withdrawal_rows = [
        [
            arm_label(arm) if arm is not None else "not randomized",
            *(_count(data.withdrawals.get((reason, arm), 0)) for reason in reasons),
            _count(sum(n for (_, a), n in data.withdrawals.items() if a == arm)),
        ]
        for arm in rows_of
    ]
    withdrawals = _table(["arm", *(r.replace("_", " ") for r in reasons), "all"], withdrawal_rows)
    return Section(
        "safety",
        "Safety: adverse events and withdrawals",
        "Adverse events: sessions that recorded one, by the participant's arm and the "
        "severity recorded (<code>session_events.adverse_event</code>). Withdrawals: "
        "participants with a <code>withdrawn</code> enrollment event, by their latest "
        "withdrawal reason and arm (<em>not randomized</em>: withdrawn before randomization).",
        (),
        f"<h3>Adverse events</h3>{adverse}<h3>Withdrawals</h3>{withdrawals}",
    )


def _sites_section(data: ReportData) -> Section:
    rows = [
        [
            str(r["node_id"]),
            str(r["site_id"]),
            str(r["name"]),
            *(_count(to_float(r[column])) for column in SITE_COLUMNS),
        ]
        for r in data.site_rows
    ]
    return Section(
        "sites",
        "By site",
        "Every registered site with the counts of <code>node_summary</code> for its own "
        "events: distinct participants per enrollment status, attended sessions, sessions "
        "with an adverse event, assays and assessments.",
        (),
        _table(
            ["node", "site", "name", *(c.replace("_", " ") for c in SITE_COLUMNS)],
            rows,
            numeric_from=3,
        ),
    )


_DEFINITIONS: Final = """
<dl>
<dt>Node, site</dt><dd>An academic medical centre of the network, and one of its clinical
treatment sites (the network registry).</dd>
<dt>Arm</dt><dd>The modality (aerobic, resistance, combined, control) and adjunct a participant
was randomized to; their latest randomization event counts (<code>participant_arms</code>).</dd>
<dt>Screened … completed</dt><dd>Distinct participants with at least one enrollment event of that
status.</dd>
<dt>Adherence</dt><dd>Attended sessions / (attended + missed + cancelled) of participants
randomized to the arm.</dd>
<dt>Exercise minutes</dt><dd>Sum of <code>duration_min</code> of attended sessions.</dd>
<dt>Biomarker change</dt><dd>Post minus baseline, per participant, analyte and specimen type, in
the analyte's canonical unit (<code>value_canonical</code>), measurements below the LLOQ left out;
the geometric-mean ratio is post ÷ baseline averaged on the log scale. Intervals of means: 95%
Student t.</dd>
<dt>Data cut-off</dt><dd>The newest <code>occurred_at</code> of any accepted event: what the
report can know of, whenever it was generated.</dd>
<dt>Response, remission</dt><dd>{outcomes}.</dd>
<dt>Rates</dt><dd>Responders (or remitters) / participants randomized to the arm, with a 95%
Wilson score interval.</dd>
<dt>Source</dt><dd>Accepted events only (fact tables read with <code>FINAL</code>, one row per
<code>event_id</code>); rejected messages are counted in the header and listed by
<code>exnet rejects</code>.</dd>
</dl>
"""


def render_report(data: ReportData) -> str:
    """The whole page (HTML5, self-contained)."""
    sections = [
        _funnel(data),
        _enrollment(data),
        _balance(data),
        _adherence(data),
        _biomarkers(data),
        _outcomes(data),
        _safety_section(data),
        _sites_section(data),
    ]
    totals = data.totals
    figures = [
        ("nodes", data.nodes),
        ("sites", data.sites),
        ("screened", totals.get("screened", 0)),
        ("randomized", totals.get("randomized", 0)),
        ("completed", totals.get("completed", 0)),
        ("withdrawn", totals.get("withdrawn", 0)),
        ("sessions attended", totals.get("sessions_attended", 0)),
        ("exercise minutes", totals.get("exercise_minutes", 0)),
        ("adverse events", totals.get("adverse_events", 0)),
        ("specimens", totals.get("specimens", 0)),
        ("assays", totals.get("assays", 0)),
        ("assessments", totals.get("assessments", 0)),
        ("rejected messages", data.rejected),
    ]
    header_totals = "".join(
        f'<div class="figure"><span class="value">{_count(value)}</span>'
        f'<span class="name">{escape(name)}</span></div>'
        for name, value in figures
    )
    toc = "".join(f'<a href="#{s.key}">{escape(s.title)}</a>' for s in sections)
    updated = (
        f"{data.updated_at:%Y-%m-%d %H:%M:%S} UTC" if data.updated_at is not None else "no data yet"
    )
    template = Template(
        resources.files("exnet.ops").joinpath("report_template.html").read_text(encoding="utf-8")
    )
    return template.substitute(
        title="exnet network report",
        generated_at=escape(f"{data.generated_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"),
        database=escape(f"{data.database} at {data.url}"),
        updated_at=escape(updated),
        cutoff=escape(f"{data.cutoff:%Y-%m-%d %H:%M} UTC" if data.cutoff else "no events yet"),
        header_totals=header_totals,
        toc=toc,
        sections="".join(s.html() for s in sections),
        definitions=_DEFINITIONS.replace("{outcomes}", escape(data.outcome_definition)),
    )


def build_report(settings: Settings, now: datetime | None = None) -> str:
    """Collect and render: the page as a string."""
    return render_report(collect_report(settings, now))


def write_report(settings: Settings, out: Path, now: datetime | None = None) -> Path:
    """Write the report to ``out`` (parents created, replaced atomically); return its path.

    Raises :class:`UserError` when it cannot be written (nothing is left behind).
    """
    page = build_report(settings, now)
    temporary = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(page, encoding="utf-8")
        temporary.replace(out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out.resolve()
