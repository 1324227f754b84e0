"""The analysts' views (SPEC §4): their figures' names, and the figures they must show.

The views themselves are defined by the migrations (``sinks/migrations``);
what every reader agrees on lives here: the column names of their figures,
and :func:`compute_views`, SPEC §4's definitions computed in plain Python from
the accepted events. It is the one oracle of the views: the simulator states
its expectations with it, and the tests hold ClickHouse to it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date
from typing import Final, NamedTuple, get_args

from contracts.assay import AssayV1
from contracts.assessment import REMISSION_MAX, AssessmentV1
from contracts.enrollment import EnrollmentStatus, EnrollmentV1
from contracts.envelope import EventBase
from contracts.registry import PrimaryEndpoint
from contracts.session import SessionStatus, SessionV1

__all__ = [
    "ARM_COLUMNS",
    "DAILY_COLUMNS",
    "MINUTES_COLUMNS",
    "SESSION_COLUMNS",
    "STATUS_COLUMNS",
    "SUMMARY_COLUMNS",
    "VERSION_COLUMNS",
    "VIEW_FIGURES",
    "VIEW_KEYS",
    "ArmKey",
    "DailyKey",
    "Figures",
    "Views",
    "compute_views",
]

#: One figure per enrollment status, named after it (in the contract's order).
STATUS_COLUMNS: Final[tuple[str, ...]] = get_args(EnrollmentStatus)
_SESSION_STATUSES: Final[tuple[str, ...]] = get_args(SessionStatus)
#: One figure per session status: ``sessions_attended``, ``sessions_missed``, ...
SESSION_COLUMNS: Final[tuple[str, ...]] = tuple(f"sessions_{s}" for s in _SESSION_STATUSES)

#: The figures of ``node_summary`` and ``network_summary`` (besides keys and updated_at).
SUMMARY_COLUMNS: Final[tuple[str, ...]] = (
    *STATUS_COLUMNS,
    *SESSION_COLUMNS,
    "exercise_minutes",
    "adverse_events",
    "specimens",
    "assays",
    "assessments",
)

#: The figures of ``arm_summary`` (besides its keys and updated_at).
ARM_COLUMNS: Final[tuple[str, ...]] = (
    "randomized",
    "sessions_attended",
    "exercise_minutes",
    "responders",
    "remitters",
)

#: The figures of ``node_daily`` (besides its keys and updated_at).
DAILY_COLUMNS: Final[tuple[str, ...]] = (
    *SESSION_COLUMNS,
    "exercise_minutes",
    "adverse_events",
    *STATUS_COLUMNS,
)

#: The stream-written view tables (SPEC §4) -> their key columns, in order. Besides
#: the key and figures, every table has ``updated_at`` (when the rollup computed the
#: row), ``version`` (ReplacingMergeTree's: the highest wins) and ``is_deleted``.
VIEW_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "node_summary": ("node_id",),
    "network_summary": (),
    "arm_summary": ("scope", "node_id", "modality", "adjunct"),
    "node_daily": ("node_id", "day"),
}
#: The view tables' columns that only order a row's versions inside ClickHouse.
VERSION_COLUMNS: Final = frozenset({"version", "is_deleted"})
#: The stream-written view tables -> their figures' columns, in order (``node_summary``
#: also has ``node_name`` after its key).
VIEW_FIGURES: Final[dict[str, tuple[str, ...]]] = {
    "node_summary": SUMMARY_COLUMNS,
    "network_summary": SUMMARY_COLUMNS,
    "arm_summary": ARM_COLUMNS,
    "node_daily": DAILY_COLUMNS,
}
#: The columns that hold minutes (Float64); every other figure is a count (UInt64).
MINUTES_COLUMNS: Final = frozenset({"exercise_minutes"})

#: One row's figures, by column name: counts (int) and minutes (float).
Figures = dict[str, float]

#: ``arm_summary``'s scopes.
_NODE_SCOPE: Final = "node"
_NETWORK_SCOPE: Final = "network"


class ArmKey(NamedTuple):
    """The key of an ``arm_summary`` row; equal to the plain tuple of the same values."""

    #: ``node`` or ``network``.
    scope: str
    #: Empty for the network scope.
    node_id: str
    modality: str
    adjunct: str


class DailyKey(NamedTuple):
    """The key of a ``node_daily`` row; equal to the plain tuple of the same values."""

    node_id: str
    #: The UTC day of ``occurred_at``.
    day: date


@dataclass(frozen=True)
class Views:
    """The figures of SPEC §4's views (keys and figures; no ``updated_at``).

    Rows are dicts in their view's column order (:data:`SUMMARY_COLUMNS`,
    :data:`ARM_COLUMNS`, :data:`DAILY_COLUMNS`); counts are ints, minutes floats.
    """

    #: node_id -> figures, one row per node asked for (zeros where nothing happened).
    node_summary: dict[str, Figures]
    network_summary: Figures
    #: One row per arm with a randomized participant, per node and network-wide; sorted.
    arm_summary: dict[ArmKey, Figures]
    #: One row per node and UTC day with a session or enrollment event; sorted.
    node_daily: dict[DailyKey, Figures]


def compute_views(
    events: Iterable[EventBase],
    nodes: Iterable[str],
    endpoint: PrimaryEndpoint | None = None,
) -> Views:
    """The figures the views must show over ``events``, the accepted events (each once).

    ``nodes`` are the registered nodes, the rows of ``node_summary`` (an event
    of another node counts in the network's figures only, as in the view).
    Pure, and independent of the order of ``events``: ties between two
    ``randomized`` events (or two baselines) of one participant go to the later
    ``occurred_at``, then the greater ``event_id``, as the views break them;
    sums of minutes are correctly rounded (:func:`math.fsum`), where
    ClickHouse's may differ in the last bits.

    SPEC §4's definitions, with SPEC §1's response and remission:

    - ``node_summary``/``network_summary``: distinct participants with an
      enrollment event of each status; sessions per status; the minutes of
      attended sessions; sessions with an ``adverse_event``; distinct
      ``specimen_id``; assays; assessments.
    - ``arm_summary``: each randomized participant belongs to the arm
      (``modality``, ``adjunct``) and node of their latest ``randomized`` event;
      per arm, per node and network-wide: participants, their attended
      sessions and those sessions' minutes, responders (a later week's score
      at most half the latest baseline on the same instrument) and remitters
      (a later week's score within :data:`~contracts.assessment.REMISSION_MAX`);
      with a registry's ``endpoint`` (SPEC §3), only ratings on its instrument
      at its week count, against its thresholds.
    - ``node_daily``: per node and UTC day, the session figures and the
      number of enrollment events of each status.
    """
    network = _Summary()
    summaries: dict[str, _Summary] = {node: _Summary() for node in nodes}
    days: dict[DailyKey, _Daily] = {}
    people: dict[str, _Participant] = {}
    for event in events:
        network.add(event)
        node = summaries.get(event.node_id)
        if node is not None:
            node.add(event)
        if isinstance(event, EnrollmentV1 | SessionV1):
            key = DailyKey(event.node_id, event.occurred_at.astimezone(UTC).date())
            days.setdefault(key, _Daily()).add(event)
        people.setdefault(event.participant_id, _Participant()).add(event)
    return Views(
        node_summary={node: summary.figures() for node, summary in summaries.items()},
        network_summary=network.figures(),
        arm_summary=_arm_summary(people.values(), endpoint),
        node_daily={key: days[key].figures() for key in sorted(days)},
    )


# --- the accumulators ---------------------------------------------------------------


def _unknown(event: EventBase) -> TypeError:
    return TypeError(f"no view counts {type(event).__name__} events")


@dataclass(slots=True)
class _Sessions:
    """Sessions per status, the minutes of the attended ones, adverse events."""

    count: Counter[str] = field(default_factory=Counter)
    minutes: list[float] = field(default_factory=list)
    adverse: int = 0

    def add(self, event: SessionV1) -> None:
        self.count[event.status] += 1
        if event.status == "attended" and event.duration_min is not None:
            self.minutes.append(event.duration_min)
        if event.adverse_event is not None:
            self.adverse += 1

    def figures(self) -> Figures:
        out: Figures = {
            column: self.count[status]
            for column, status in zip(SESSION_COLUMNS, _SESSION_STATUSES, strict=True)
        }
        out["exercise_minutes"] = math.fsum(self.minutes)
        out["adverse_events"] = self.adverse
        return out


@dataclass(slots=True)
class _Summary:
    """One row of ``node_summary`` or ``network_summary``, as events arrive."""

    reached: dict[str, set[str]] = field(default_factory=dict)
    sessions: _Sessions = field(default_factory=_Sessions)
    specimens: set[str] = field(default_factory=set)
    assays: int = 0
    assessments: int = 0

    def add(self, event: EventBase) -> None:
        if isinstance(event, EnrollmentV1):
            self.reached.setdefault(event.status, set()).add(event.participant_id)
        elif isinstance(event, SessionV1):
            self.sessions.add(event)
        elif isinstance(event, AssayV1):
            self.specimens.add(event.specimen_id)
            self.assays += 1
        elif isinstance(event, AssessmentV1):
            self.assessments += 1
        else:
            raise _unknown(event)

    def figures(self) -> Figures:
        figures: Figures = {status: len(self.reached.get(status, ())) for status in STATUS_COLUMNS}
        figures |= self.sessions.figures()
        figures |= {
            "specimens": len(self.specimens),
            "assays": self.assays,
            "assessments": self.assessments,
        }
        return {column: figures[column] for column in SUMMARY_COLUMNS}


@dataclass(slots=True)
class _Daily:
    """One row of ``node_daily``: that day's sessions, and enrollment events per status."""

    sessions: _Sessions = field(default_factory=_Sessions)
    statuses: Counter[str] = field(default_factory=Counter)

    def add(self, event: EnrollmentV1 | SessionV1) -> None:
        if isinstance(event, EnrollmentV1):
            self.statuses[event.status] += 1
        else:
            self.sessions.add(event)

    def figures(self) -> Figures:
        figures = self.sessions.figures()
        figures |= {status: self.statuses[status] for status in STATUS_COLUMNS}
        return {column: figures[column] for column in DAILY_COLUMNS}


def _later(first: EventBase, second: EventBase) -> bool:
    """Whether ``second`` wins over ``first``: later ``occurred_at``, then greater ``event_id``."""
    return (second.occurred_at, second.event_id) > (first.occurred_at, first.event_id)


@dataclass(slots=True)
class _Participant:
    """What ``arm_summary`` needs of one participant."""

    #: The latest ``randomized`` event: the participant's arm and node.
    randomized: EnrollmentV1 | None = None
    attended: int = 0
    minutes: list[float] = field(default_factory=list)
    #: instrument -> the latest week-0 assessment.
    baselines: dict[str, AssessmentV1] = field(default_factory=dict)
    #: The assessments of later weeks.
    later: list[AssessmentV1] = field(default_factory=list)

    def add(self, event: EventBase) -> None:
        if isinstance(event, EnrollmentV1):
            if event.status == "randomized" and (
                self.randomized is None or _later(self.randomized, event)
            ):
                self.randomized = event
        elif isinstance(event, SessionV1):
            if event.status == "attended":
                self.attended += 1
                if event.duration_min is not None:
                    self.minutes.append(event.duration_min)
        elif isinstance(event, AssessmentV1):
            if event.week > 0:
                self.later.append(event)
            else:
                prior = self.baselines.get(event.instrument)
                if prior is None or _later(prior, event):
                    self.baselines[event.instrument] = event
        elif not isinstance(event, AssayV1):
            raise _unknown(event)

    def responded(self, endpoint: PrimaryEndpoint | None) -> bool:
        """A later score at most half the baseline on the same instrument (SPEC §1), or
        at the endpoint's week and reduction (SPEC §3)."""
        if endpoint is None:
            return any(
                later.instrument in self.baselines
                and later.score * 2 <= self.baselines[later.instrument].score
                for later in self.later
            )
        baseline = self.baselines.get(endpoint.instrument)
        kept = 100 - endpoint.response_reduction_pct
        return baseline is not None and any(
            endpoint.counts(later.instrument, later.week)
            and later.score * 100 <= kept * baseline.score
            for later in self.later
        )

    def remitted(self, endpoint: PrimaryEndpoint | None) -> bool:
        """A later score within the instrument's remission threshold (SPEC §1), or the
        endpoint's rating within its threshold (SPEC §3)."""
        if endpoint is None:
            return any(later.score <= REMISSION_MAX[later.instrument] for later in self.later)
        return any(
            endpoint.counts(later.instrument, later.week)
            and later.score <= endpoint.remission_threshold
            for later in self.later
        )


@dataclass(slots=True)
class _Arm:
    randomized: int = 0
    attended: int = 0
    minutes: list[float] = field(default_factory=list)
    responders: int = 0
    remitters: int = 0

    def add(self, person: _Participant, endpoint: PrimaryEndpoint | None) -> None:
        self.randomized += 1
        self.attended += person.attended
        self.minutes.extend(person.minutes)
        self.responders += person.responded(endpoint)
        self.remitters += person.remitted(endpoint)

    def figures(self) -> Figures:
        return {
            "randomized": self.randomized,
            "sessions_attended": self.attended,
            "exercise_minutes": math.fsum(self.minutes),
            "responders": self.responders,
            "remitters": self.remitters,
        }


def _arm_summary(
    people: Iterable[_Participant], endpoint: PrimaryEndpoint | None
) -> dict[ArmKey, Figures]:
    arms: dict[ArmKey, _Arm] = {}
    for person in people:
        event = person.randomized
        if event is None:
            continue
        # ``modality`` is set on every randomized event (a contract rule); the
        # view reads a missing one as "", and so does this.
        modality = event.modality or ""
        for key in (
            ArmKey(_NODE_SCOPE, event.node_id, modality, event.adjunct),
            ArmKey(_NETWORK_SCOPE, "", modality, event.adjunct),
        ):
            arms.setdefault(key, _Arm()).add(person, endpoint)
    return {key: arms[key].figures() for key in sorted(arms)}
