"""The aggregate stage, pure: each participant's events -> their versioned pieces of the views.

A participant's share of the views comes in **pieces**, one per view row it
counts in: ``node|<node_id>`` (statuses reached, sessions, minutes, adverse
events, specimen ids, assays, assessments at that node: ``node_summary``),
``day|<node_id>|<YYYY-MM-DD>`` (that UTC day's sessions and enrollment events:
``node_daily``) and ``arm`` (the arm of the latest ``randomized`` event by
``occurred_at`` then ``event_id``, with the attended sessions, minutes, response
and remission: ``arm_summary``). The network's figures are the rollup's, from
the participant's node pieces.

State (the ``participants`` table, co-partitioned with ``exnet.accepted``), per
participant:

- ``<participant_id>|m|<k>`` (k = 0, 1, ...): the **markers** of the events
  counted, so an event read twice (a replay) counts once whatever order events
  came in: 24 bytes an event, its ``event_id`` as the UUID's 16 bytes, then the
  offset it was counted from (8 bytes, big-endian), appended in the order
  counted; a chunk holds :data:`MARKS_PER_CHUNK` at most, so a batch writes a
  small record to the changelog however many events a participant has.
- ``<participant_id>|node|<node_id>`` and ``<participant_id>|arm``: that piece's
  running state, with ``n``, the number of events it counted, and ``o``, the
  newest offset it counted.
- ``<participant_id>|days|<node_id>``: the running states of the participant's
  day pieces at that node, by day (one entry per participant and node, not per
  day: the simulated network's participants have 25 days each on average).

(Measured over a million events, 15,700 participants: one table entry per event
and one per participant-day held 2.8 million entries in the stream worker,
about 200 bytes each in memory.) A new event updates the two or three pieces it
touches (no rescan of the participant's history); minutes add up exactly
(Shewchuk's partials, as :func:`math.fsum`).

The keys of the earlier layout (``<participant_id>|e|<event_id>``, one marker an
event, and ``<participant_id>|day|<node_id>|<day>``) are still read when the new
ones lack an event or a day, so a deployment's state carries over; what is
counted again is written in the new layout.

The stage sends, per participant a batch names (the agent's: a window of
batches, :meth:`AggregateStage.contributions`), the pieces its events touch,
each an absolute value with ``v`` = its ``n``, never a delta: the rollup
(:mod:`streams.rollup`) keeps per participant and piece the highest ``v``, so a
piece lost, repeated or late between the stages cannot leave a wrong sum for
good. A batch read again (its events already counted) sends its pieces again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson

from contracts.assessment import REMISSION_MAX
from contracts.registry import PrimaryEndpoint
from contracts.wire import Outgoing, Route, read_route, uuid_bytes

__all__ = ["AggregateStage", "Aggregated", "fact_of", "json_value", "piece_figures"]

log = logging.getLogger(__name__)

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


def json_value(data: Any, *, sort_keys: bool = False) -> bytes:
    """``data`` as JSON bytes of their own size, for a value kept in memory (a table's,
    or any other); ``sort_keys``: the keys sorted, so that equal data are equal bytes.

    orjson 3.13 hands back its 4 KiB write buffer as the bytes object (measured:
    4,097 bytes for ``{"a":1,"v":3}``), so a table of its results held about 4 KiB
    an entry: 4.7 GiB after a million events. A copy through a memoryview is exact.
    """
    return bytes(memoryview(orjson.dumps(data, option=orjson.OPT_SORT_KEYS if sort_keys else 0)))


def _add_exact(partials: list[float], x: float) -> list[float]:
    """``partials`` (non-overlapping floats whose exact sum is the running total) plus
    ``x``, exactly: Shewchuk's algorithm, as :func:`math.fsum` keeps its partials."""
    out = []
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        high = x + y
        low = y - (high - x)
        if low:
            out.append(low)
        x = high
    out.append(x)
    return out


def _apply(kind: str, state: dict[str, Any], fact: Fact, event_id: str) -> None:
    """Count one new event in a piece's running state (``kind``: node, day or arm)."""
    state["n"] = state.get("n", 0) + 1
    what = fact[0]
    if kind == "arm":
        if what == "e":  # a randomization
            _, node_id, _, occurred_s, _, modality, adjunct = fact
            prior = state.get("randomized")
            if prior is None or (occurred_s, event_id) > (prior[0], prior[1]):
                state["randomized"] = [occurred_s, event_id, node_id, modality, adjunct]
        elif what == "s":  # an attended session
            state["attended"] = state.get("attended", 0) + 1
            if fact[4] is not None:
                state["m"] = _add_exact(state.get("m", []), fact[4])
        else:  # an assessment
            _, _, instrument, week, score, occurred_s = fact
            if week > 0:
                state.setdefault("later", []).append([instrument, week, score])
            else:
                baselines = state.setdefault("baselines", {})
                prior = baselines.get(instrument)
                if prior is None or (occurred_s, event_id) > (prior[0], prior[1]):
                    baselines[instrument] = [occurred_s, event_id, score]
        return
    if what == "s":
        _, _, _, status, minutes, adverse = fact
        column = f"sessions_{status}"
        state[column] = state.get(column, 0) + 1
        if status == "attended" and minutes is not None:
            state["m"] = _add_exact(state.get("m", []), minutes)
        if adverse:
            state["adverse_events"] = state.get("adverse_events", 0) + 1
    elif what == "e":
        status = fact[4]
        if kind == "day":
            state[status] = state.get(status, 0) + 1
        elif status not in state.setdefault("reached", []):
            state["reached"].append(status)
    elif what == "a":
        specimens = state.setdefault("specimens", [])
        if fact[2] not in specimens:
            specimens.append(fact[2])
        state["assays"] = state.get("assays", 0) + 1
    else:
        state["assessments"] = state.get("assessments", 0) + 1


def _pieces_of(fact: Fact, node_id: str) -> list[tuple[str, str]]:
    """The pieces an event counts in: (kind, piece key)."""
    what = fact[0]
    out = [("node", f"node|{node_id}")]
    if what in ("e", "s"):
        out.append(("day", f"day|{node_id}|{fact[2]}"))
    if (
        (what == "e" and fact[4] == "randomized")
        or (what == "s" and fact[3] == "attended")
        or what == "q"
    ):
        out.append(("arm", "arm"))
    return out


def piece_figures(
    piece_key: str, state: dict[str, Any], endpoint: PrimaryEndpoint | None = None
) -> dict[str, Any]:
    """The piece the rollup gets from a piece's running state: its figures (zeros left
    out, minutes a float, specimens and statuses sorted) and ``v``. The ``arm``
    piece: ``node_id``, ``modality``, ``adjunct``, ``sessions_attended``,
    ``exercise_minutes``, ``responder``, ``remitter`` (SPEC §1, or the registry's
    primary ``endpoint``, SPEC §3), or ``v`` alone while never randomized.
    """
    version = state["n"]
    if piece_key == "arm":
        randomized = state.get("randomized")
        if randomized is None:
            return {"v": version}
        baselines = {k: (b[0], b[1], b[2]) for k, b in state.get("baselines", {}).items()}
        later = [(i, w, score) for i, w, score in state.get("later", [])]
        return {
            "node_id": randomized[2],
            "modality": randomized[3],
            "adjunct": randomized[4],
            "sessions_attended": state.get("attended", 0),
            "exercise_minutes": math.fsum(state.get("m", [])),
            "responder": _responded(baselines, later, endpoint),
            "remitter": _remitted(later, endpoint),
            "v": version,
        }
    figures = {k: v for k, v in state.items() if k not in ("n", "m", "o") and v}
    minutes = math.fsum(state.get("m", []))
    if minutes:
        figures["exercise_minutes"] = minutes
    for listed in ("reached", "specimens"):
        if listed in figures:
            figures[listed] = sorted(figures[listed])
    figures["v"] = version
    return figures


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
    #: Messages that were no exnet.accepted message of this version (logged, skipped).
    skipped: int = 0
    #: participant_id -> the keys of the pieces the batch's events touch.
    touched: dict[bytes, set[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregateStage:
    """Counts the events of batches of ``exnet.accepted`` in the ``participants`` table
    and sends the pieces they touch, one message per participant (key participant_id),
    to the one partition of ``contributions_topic``.

    ``endpoint``: the registry's primary endpoint (SPEC §3); None: SPEC §1's rule.
    """

    contributions_topic: str
    endpoint: PrimaryEndpoint | None = None

    def __call__(
        self, records: Iterable[Any], table: MutableMapping[bytes, bytes], *, send: bool = True
    ) -> Aggregated:
        """``records``: Kafka records of ``exnet.accepted`` (``offset``, value = fact row,
        header ``exnet-route``), all of one partition, in offset order; ``table``: the
        ``participants`` table (the module's docstring gives its keys). ``send``: build
        the contributions (``outgoing``) now; else ``touched`` names them, for
        :meth:`contributions` to build once for several batches.

        A batch's changelog records may survive a crash only in part (a prefix;
        each participant's markers come before their pieces). So an event whose
        marker names this very offset is counted again in each piece whose ``o`` is
        older: the pieces it had not reached. Every participant the batch names gets
        the pieces of its events sent, counted now or before: a piece lost in a
        crash after the table's write was acknowledged is sent again when the batch
        is read again. A message that is no exnet.accepted message of this version
        is skipped and counted.
        """
        result = Aggregated()
        # Participant by participant (in the order the batch first names them), so that
        # only one participant's parsed entries are held at a time: over the whole
        # batch they took 41 MB of the stream worker's peak (1M events, memray).
        events: dict[bytes, list[tuple[int, str, bytes, Fact, str]]] = {}
        for record in records:
            try:
                route = read_route(record.headers)
                event = orjson.loads(record.value)
                event_id = event["event_id"]
                uid = uuid_bytes(event_id)
                fact = fact_of(route, event)
            except (ValueError, KeyError, TypeError) as exc:
                result.skipped += 1
                log.error("skipped an exnet.accepted message at offset %s: %s", record.offset, exc)
                continue
            participant = route.participant_id.encode()
            events.setdefault(participant, []).append(
                (record.offset, event_id, uid, fact, route.node_id)
            )
        for participant, theirs in events.items():
            self._count(participant, theirs, table, result)
        if send:
            result.outgoing = self.contributions(result.touched, table)
        return result

    def contributions(
        self, touched: Mapping[bytes, Iterable[str]], table: MutableMapping[bytes, bytes]
    ) -> list[Outgoing]:
        """One message per participant in ``touched`` (participant_id -> piece keys): the
        current value of each of those pieces in ``table`` (a piece nothing counted in
        yet is left out)."""
        outgoing: list[Outgoing] = []
        for participant, pieces in touched.items():
            slots = _Slots(table)
            sent = {}
            for piece_key in pieces:
                state = slots.state(slots.locate(participant, piece_key), create=False)
                if state is not None:
                    sent[piece_key] = piece_figures(piece_key, state, self.endpoint)
            value = orjson.dumps({"participant_id": participant.decode(), "pieces": sent})
            outgoing.append((self.contributions_topic, 0, participant, value, [], None))
        return outgoing

    def _count(
        self,
        participant: bytes,
        events: list[tuple[int, str, bytes, Fact, str]],
        table: MutableMapping[bytes, bytes],
        result: Aggregated,
    ) -> None:
        """Count one participant's events of the batch (offset, event_id, its UUID's
        bytes, fact, node); the pieces they touch go to ``result.touched``."""
        slots = _Slots(table)
        known = _Marks(participant, table)
        pieces: set[str] = set()
        for offset, event_id, uid, fact, node_id in events:
            counted = known.find(uid, event_id)
            if counted is None:
                known.add(uid, offset)
                result.new_events += 1
            for kind, piece_key in _pieces_of(fact, node_id):
                pieces.add(piece_key)
                if counted is not None and counted != offset:
                    continue  # counted from another message (a replay): done
                slot = slots.locate(participant, piece_key)
                state = slots.state(slot, create=True)
                assert state is not None  # noqa: S101  # create=True
                if state.get("o", -1) >= offset:
                    continue  # this piece counted it before a crash
                _apply(kind, state, fact, event_id)
                state["o"] = offset
                slots.changed(slot)
        known.write(table)  # first: a crash may keep a prefix of the records
        slots.write()
        result.touched.setdefault(participant, set()).update(pieces)


#: Markers in one table entry at most (24 bytes each: 384 bytes). A batch rewrites the
#: participant's last chunk whole, so its size is what each batch writes to the
#: changelog: with 2,000 (until 2026-12-02) marker records averaged 1,117 bytes, 271
#: with 16, and the participants changelog took 8.2 MB for 51,000 events, not 15.3.
#: A participant's ~64 events take four entries (a few hundred bytes of memory more).
MARKS_PER_CHUNK: Final = 16
_MARK: Final = 24


class _Marks:
    """One participant's markers, as read from the table, and this batch's new ones."""

    __slots__ = ("_chunks", "_dirty", "_participant", "_table")

    def __init__(self, participant: bytes, table: MutableMapping[bytes, bytes]) -> None:
        self._participant = participant
        self._table = table
        self._chunks: list[bytearray] = []
        while (stored := table.get(self._key(len(self._chunks)))) is not None:
            self._chunks.append(bytearray(stored))
        self._dirty: set[int] = set()

    def _key(self, chunk: int) -> bytes:
        return b"%s|m|%d" % (self._participant, chunk)

    def find(self, uid: bytes, event_id: str) -> int | None:
        """The offset the event was counted from; None if it never was."""
        for chunk in self._chunks:
            at = chunk.find(uid)
            while at != -1:
                if at % _MARK == 0:
                    return int.from_bytes(chunk[at + 16 : at + _MARK], "big")
                at = chunk.find(uid, at + 1)
        earlier = self._table.get(self._participant + b"|e|" + event_id.encode())
        return None if earlier is None else int(earlier)  # the earlier layout's marker

    def add(self, uid: bytes, offset: int) -> None:
        chunks = self._chunks
        if not chunks or len(chunks[-1]) >= MARKS_PER_CHUNK * _MARK:
            chunks.append(bytearray())
        chunks[-1] += uid + offset.to_bytes(8, "big")
        self._dirty.add(len(chunks) - 1)

    def write(self, table: MutableMapping[bytes, bytes]) -> None:
        for chunk in sorted(self._dirty):
            table[self._key(chunk)] = bytes(self._chunks[chunk])


class _Slot(NamedTuple):
    key: bytes  # the table's key
    day: str | None  # the day within a days entry; None: the entry is the state
    participant: bytes
    piece_key: str


class _Slots:
    """Where one participant's pieces' running states live in the table, read once
    and written back once per batch: ``node|<node_id>`` and ``arm`` each under their
    own key, the day pieces of a node together under ``days|<node_id>`` (a JSON
    object by day)."""

    __slots__ = ("_changed", "_entries", "_table")

    def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
        self._table = table
        self._entries: dict[bytes, dict[str, Any] | None] = {}  # table key -> parsed
        self._changed: set[bytes] = set()

    def _entry(self, key: bytes) -> dict[str, Any] | None:
        if key in self._entries:
            return self._entries[key]
        stored = self._table.get(key)
        entry = self._entries[key] = orjson.loads(stored) if stored is not None else None
        return entry

    @staticmethod
    def locate(participant: bytes, piece_key: str) -> _Slot:
        """Where the piece's running state lives: its table key, and its day in that
        entry (None: the entry is the state)."""
        if piece_key.startswith("day|"):
            _, node_id, day = piece_key.split("|")
            key = b"%s|days|%s" % (participant, node_id.encode())
            return _Slot(key, day, participant, piece_key)
        return _Slot(participant + b"|" + piece_key.encode(), None, participant, piece_key)

    def state(self, slot: _Slot, *, create: bool) -> dict[str, Any] | None:
        """The piece's running state (a new empty one when ``create``; else None when
        it has none)."""
        entry = self._entry(slot.key)
        if slot.day is None:
            if entry is None and create:
                entry = self._entries[slot.key] = {}
            return entry
        state = entry.get(slot.day) if entry is not None else None
        if state is None:
            earlier = self._table.get(slot.participant + b"|" + slot.piece_key.encode())
            state = orjson.loads(earlier) if earlier is not None else None  # layout before
            if create:
                if entry is None:
                    entry = self._entries[slot.key] = {}
                state = entry[slot.day] = state if state is not None else {}
        return state

    def changed(self, slot: _Slot) -> None:
        self._changed.add(slot.key)

    def write(self) -> None:
        for key in self._changed:
            self._table[key] = json_value(self._entries[key])
