"""The aggregate stage, pure: each participant's events -> their whole contribution to the views.

State per participant (the ``participants`` table, keyed by participant_id,
co-partitioned with ``exnet.accepted``): what the views need of each of their
accepted events, by ``event_id`` (:class:`Participant`). An event read twice
(a replay) lands on its own ``event_id`` again, so the state is the *set* of
the participant's events, whatever the order they arrived in.

From the state, :func:`contribution` computes the participant's whole share
of every view row (SPEC §4), from scratch: the statuses they reached and their
sessions, specimens, assays and assessments per node; their arm (the latest
``randomized`` event by ``occurred_at``, then ``event_id``) with their attended
sessions, minutes, response and remission; their sessions and enrollment
events per node and UTC day. Its ``version`` is the number of events it was
computed from, so a later contribution of a participant supersedes an earlier
one; the rollup stage (:mod:`streams.rollup`) keeps the latest per participant
and sums them.

Why whole contributions and not deltas: a delta lost or applied twice between
stages would leave a wrong sum for good; a contribution read twice, or late,
changes nothing, and the next one corrects whatever came before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from contracts.assessment import REMISSION_MAX
from contracts.registry import PrimaryEndpoint
from contracts.views import SESSION_COLUMNS, STATUS_COLUMNS
from contracts.wire import Outgoing, Route, read_route

__all__ = [
    "Aggregated",
    "AggregateStage",
    "Participant",
    "contribution",
    "fact_of",
]

#: Figures of a participant's sessions, in the views' order (then minutes, adverse events).
_SESSION_STATUSES: Final = tuple(column.removeprefix("sessions_") for column in SESSION_COLUMNS)

# What is kept of one event (a JSON array, first item its kind):
#   enrollment: ["e", node_id, day, occurred_s, status, modality, adjunct]
#   session:    ["s", node_id, day, status, duration_min or null, adverse 0/1]
#   assay:      ["a", node_id, specimen_id]
#   assessment: ["q", node_id, instrument, week, score, occurred_s]
Fact = list[Any]


def fact_of(route: Route, event: dict[str, Any]) -> Fact:
    """What the views need of one accepted event (``event``: its fact row, parsed).

    ``day`` is the UTC date of ``occurred_at`` (the fact row writes it in UTC);
    ``occurred_s`` (Unix seconds, from the route) orders events in time.
    """
    kind = route.event_type
    if kind == "session":
        minutes = event["duration_min"]
        return [
            "s",
            route.node_id,
            event["occurred_at"][:10],
            event["status"],
            minutes,
            0 if event["adverse_event"] is None else 1,
        ]
    if kind == "enrollment":
        return [
            "e",
            route.node_id,
            event["occurred_at"][:10],
            route.occurred_s,
            event["status"],
            event["modality"] or "",  # a randomized event always has one (a contract rule)
            event["adjunct"],
        ]
    if kind == "assay":
        return ["a", route.node_id, event["specimen_id"]]
    if kind == "assessment":
        return [
            "q",
            route.node_id,
            event["instrument"],
            event["week"],
            event["score"],
            route.occurred_s,
        ]
    raise ValueError(f"no view counts {kind!r} events")


@dataclass(slots=True)
class Participant:
    """One participant's events as the views see them: event_id -> :data:`Fact`."""

    facts: dict[str, Fact] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(self.facts)

    @classmethod
    def decode(cls, data: bytes | None) -> Participant:
        return cls(orjson.loads(data) if data else {})


def _zero_sessions() -> dict[str, Any]:
    figures: dict[str, Any] = dict.fromkeys(SESSION_COLUMNS, 0)
    figures["exercise_minutes"] = []  # summed with math.fsum at the end
    figures["adverse_events"] = 0
    return figures


def _add_session(figures: dict[str, Any], fact: Fact) -> None:
    _, _, _, status, minutes, adverse = fact
    figures[f"sessions_{status}"] += 1
    if status == "attended" and minutes is not None:
        figures["exercise_minutes"].append(minutes)
    figures["adverse_events"] += adverse


def _summed(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures with the minutes summed, zeros left out (a missing figure is 0)."""
    figures["exercise_minutes"] = math.fsum(figures["exercise_minutes"])
    return {column: value for column, value in figures.items() if value}


def contribution(
    participant_id: str, participant: Participant, endpoint: PrimaryEndpoint | None = None
) -> dict[str, Any]:
    """The participant's whole share of the views, as JSON-ready data::

        {"participant_id": str, "version": int (events counted),
         "nodes": {node_id: {"reached": [status, ...], sessions_* ..., "exercise_minutes",
                             "adverse_events", "specimens": [specimen_id, ...],
                             "assays", "assessments"}},  # zeros and empty lists left out
         "arm": None | {"node_id", "modality", "adjunct", "sessions_attended",
                        "exercise_minutes", "responder": bool, "remitter": bool},
         "daily": {"<node_id>|<YYYY-MM-DD>": {sessions_* ..., "exercise_minutes",
                                            "adverse_events", <status>: count ...}}}
                                            # zeros left out

    Counts are ints, minutes floats (each a :func:`math.fsum`). Response and
    remission follow SPEC §1, or the registry's primary ``endpoint`` (SPEC §3).
    Pure.
    """
    nodes: dict[str, dict[str, Any]] = {}
    daily: dict[str, dict[str, Any]] = {}
    randomized: Fact | None = None
    randomized_id = ""
    attended = 0
    minutes: list[float] = []
    baselines: dict[str, tuple[float, str, int]] = {}  # instrument -> (occurred_s, id, score)
    later: list[tuple[str, int, int]] = []  # (instrument, week, score) of weeks > 0

    def node(node_id: str) -> dict[str, Any]:
        figures = nodes.get(node_id)
        if figures is None:
            figures = nodes[node_id] = {
                "reached": set(),
                **_zero_sessions(),
                "specimens": set(),
                "assays": 0,
                "assessments": 0,
            }
        return figures

    def day(node_id: str, date: str) -> dict[str, Any]:
        key = f"{node_id}|{date}"
        figures = daily.get(key)
        if figures is None:
            figures = daily[key] = {**_zero_sessions(), **dict.fromkeys(STATUS_COLUMNS, 0)}
        return figures

    for event_id, fact in participant.facts.items():
        kind = fact[0]
        if kind == "s":
            _add_session(node(fact[1]), fact)
            _add_session(day(fact[1], fact[2]), fact)
            if fact[3] == "attended":
                attended += 1
                if fact[4] is not None:
                    minutes.append(fact[4])
        elif kind == "e":
            _, node_id, date, occurred_s, status, _, _ = fact
            node(node_id)["reached"].add(status)
            day(node_id, date)[status] += 1
            if status == "randomized" and (
                randomized is None or (occurred_s, event_id) > (randomized[3], randomized_id)
            ):
                randomized, randomized_id = fact, event_id
        elif kind == "a":
            figures = node(fact[1])
            figures["specimens"].add(fact[2])
            figures["assays"] += 1
        else:  # "q"
            _, node_id, instrument, week, score, occurred_s = fact
            node(node_id)["assessments"] += 1
            if week > 0:
                later.append((instrument, week, score))
            else:
                prior = baselines.get(instrument)
                if prior is None or (occurred_s, event_id) > prior[:2]:
                    baselines[instrument] = (occurred_s, event_id, score)
    arm = None
    if randomized is not None:
        arm = {
            "node_id": randomized[1],
            "modality": randomized[5],
            "adjunct": randomized[6],
            "sessions_attended": attended,
            "exercise_minutes": math.fsum(minutes),
            "responder": _responded(baselines, later, endpoint),
            "remitter": _remitted(later, endpoint),
        }
    return {
        "participant_id": participant_id,
        "version": len(participant.facts),
        "nodes": {
            node_id: _summed(
                {
                    **figures,
                    "reached": sorted(figures["reached"]),
                    "specimens": sorted(figures["specimens"]),
                }
            )
            for node_id, figures in nodes.items()
        },
        "arm": arm,
        "daily": {key: _summed(figures) for key, figures in daily.items()},
    }


def _responded(
    baselines: dict[str, tuple[float, str, int]],
    later: list[tuple[str, int, int]],
    endpoint: PrimaryEndpoint | None,
) -> bool:
    """SPEC §1: a later score at most half the latest baseline on that instrument; with
    an endpoint (SPEC §3), its rating at most (100 - reduction) % of its baseline."""
    if endpoint is None:
        return any(
            instrument in baselines and score * 2 <= baselines[instrument][2]
            for instrument, _, score in later
        )
    baseline = baselines.get(endpoint.instrument)
    kept = 100 - endpoint.response_reduction_pct
    return baseline is not None and any(
        endpoint.counts(instrument, week) and score * 100 <= kept * baseline[2]
        for instrument, week, score in later
    )


def _remitted(later: list[tuple[str, int, int]], endpoint: PrimaryEndpoint | None) -> bool:
    """SPEC §1: a later score within the instrument's remission threshold; with an
    endpoint (SPEC §3), its rating within its threshold."""
    if endpoint is None:
        return any(score <= REMISSION_MAX[instrument] for instrument, _, score in later)
    return any(
        endpoint.counts(instrument, week) and score <= endpoint.remission_threshold
        for instrument, week, score in later
    )


# --- the stage over a batch ------------------------------------------------------------


@dataclass
class Aggregated:
    """What one batch of accepted events produced."""

    outgoing: list[Outgoing] = field(default_factory=list)
    #: Events new to their participant's state (the rest were read before: replays).
    new_events: int = 0


@dataclass(frozen=True)
class AggregateStage:
    """Updates the participants of one batch of ``exnet.accepted`` and sends their
    contributions (key participant_id) to the one partition of ``contributions_topic``."""

    contributions_topic: str
    #: The registry's primary endpoint (SPEC §3); None: SPEC §1's definitions.
    endpoint: PrimaryEndpoint | None = None

    def __call__(self, records: Iterable[Any], table: MutableMapping[bytes, bytes]) -> Aggregated:
        """``records``: Kafka records of ``exnet.accepted`` (value = fact row, header
        ``exnet-route``); ``table``: participant_id -> :meth:`Participant.encode`.

        Every participant the batch names gets their contribution sent, changed or
        not: a contribution lost in a crash after the table's write was acknowledged
        is sent again when the batch is read again.
        """
        result = Aggregated()
        touched: dict[bytes, Participant] = {}
        changed: set[bytes] = set()
        for record in records:
            route = read_route(record.headers)
            key = route.participant_id.encode()
            participant = touched.get(key)
            if participant is None:
                participant = touched[key] = Participant.decode(table.get(key))
            event = orjson.loads(record.value)
            event_id = event["event_id"]
            if event_id not in participant.facts:
                participant.facts[event_id] = fact_of(route, event)
                changed.add(key)
                result.new_events += 1
        out = result.outgoing
        for key, participant in touched.items():
            if key in changed:
                table[key] = participant.encode()
            share = orjson.dumps(contribution(key.decode(), participant, self.endpoint))
            out.append((self.contributions_topic, 0, key, share, [], None))
        return result
