"""The rollup stage, pure: participants' pieces -> the rows of the views (SPEC §4).

State (the ``contributions`` table, one partition, so one rollup sees the
whole network): every participant's latest version of each of their pieces
(:mod:`streams.aggregate`), keyed ``<participant_id>|<piece>``, but for the day
pieces: a participant's at one node are kept together, by day, under
``<participant_id>|days|<node_id>`` (one table entry per participant and node
rather than per day). A day piece under its own key (the layout before) is
still read, and is shadowed by the same day's piece in the grouped entry.
A piece replaces the held one only if its ``v`` is higher: a repeated or late
piece changes nothing, and a later one replaces the participant's whole share
of that row.

The views' totals are a function of that table, :class:`Totals`: the sum of
every piece's row figures (a ``node`` piece counts in that node's
``node_summary`` row and in ``network_summary``, ``arm`` in its two
``arm_summary`` rows, ``day`` in its ``node_daily`` row). In the network's row a
status counts once per participant however many of their node pieces hold it
(a reference count per participant and status), and a specimen once however
many nodes name it. Replacing a piece adds the differences between its old
figures and the new ones. Minutes are summed exactly
(integers in units of 2**-1074, the smallest double), so no float error builds
up over subtractions and the totals do not depend on the order pieces came in.
Distinct specimens are counted with a reference count per specimen_id.

The rows a batch changed go to ``exnet.views`` (the agent's: the rows a window
of batches changed, once, :meth:`RollupStage.flush`), with ``version`` = the
end offset of the last batch in the contributions partition; the agent sends
them before those batches' table changelog, so a row is never missing while the
pieces that changed it are in the table. After a rebalance (a new generation)
the totals are rebuilt from the table and every row, every registered node's
included, is sent again. (A rebuilt row may carry a lower version than one
sent before a crash; the newer one then stays, and it holds the same figures
once the replayed batches reach it.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson

from contracts import headers as H
from contracts.views import (
    ARM_COLUMNS,
    DAILY_COLUMNS,
    MINUTES_COLUMNS,
    SESSION_COLUMNS,
    STATUS_COLUMNS,
    SUMMARY_COLUMNS,
    VERSION_COLUMNS,
    VIEW_KEYS,
)
from contracts.wire import Outgoing
from streams.aggregate import json_value

__all__ = ["LiveViews", "Rolled", "RollupStage", "Totals", "ViewKey", "piece_rows"]

#: A row's key: the table's name, then the values of its key columns (VIEW_KEYS).
ViewKey = tuple[str, ...]

NODE_SUMMARY: Final = "node_summary"
NETWORK_SUMMARY: Final = "network_summary"
ARM_SUMMARY: Final = "arm_summary"
NODE_DAILY: Final = "node_daily"
_NETWORK_KEY: Final[ViewKey] = (NETWORK_SUMMARY,)

#: Minutes are kept as exact integers of this unit: every double is a multiple of it.
_SCALE: Final = 2**1074
_COUNTED: Final = (*SESSION_COLUMNS, "adverse_events")
_STATUSES: Final = frozenset(STATUS_COLUMNS)
#: A piece's figures and specimen ids where it counted nothing.
_NOTHING: Final[tuple[dict[str, Any], tuple[str, ...]]] = ({}, ())


def _exact(minutes: float) -> int:
    numerator, denominator = minutes.as_integer_ratio()
    return numerator * (_SCALE // denominator)


def piece_rows(
    piece_key: str, piece: Mapping[str, Any]
) -> list[tuple[ViewKey, dict[str, Any], Iterable[str]]]:
    """The view rows one piece counts in: (row key, figures to add, specimen_ids to
    count distinct). A status reached counts 1 (distinct participants)."""
    kind, _, rest = piece_key.partition("|")
    if kind == "node":
        figures: dict[str, Any] = dict.fromkeys(piece.get("reached", ()), 1)
        for column in _COUNTED:
            figures[column] = piece.get(column, 0)
        figures["exercise_minutes"] = piece.get("exercise_minutes", 0.0)
        figures["assays"] = piece.get("assays", 0)  # specimens: counted from their ids
        figures["assessments"] = piece.get("assessments", 0)
        return [((NODE_SUMMARY, rest), figures, piece.get("specimens", ()))]
    if kind == "arm":
        if "node_id" not in piece:
            return []  # never randomized
        figures = {
            "randomized": 1,
            "sessions_attended": piece["sessions_attended"],
            "exercise_minutes": piece["exercise_minutes"],
            "responders": int(piece["responder"]),
            "remitters": int(piece["remitter"]),
        }
        modality, adjunct = piece["modality"], piece["adjunct"]
        return [
            ((ARM_SUMMARY, "node", piece["node_id"], modality, adjunct), figures, ()),
            ((ARM_SUMMARY, "network", "", modality, adjunct), figures, ()),
        ]
    if kind == "day":
        node_id, day = rest.split("|")
        figures = {column: value for column, value in piece.items() if column != "v"}
        return [((NODE_DAILY, node_id, day), figures, ())]
    raise ValueError(f"no view row for a piece {piece_key!r}")


_FIGURES: Final[dict[str, tuple[str, ...]]] = {
    NODE_SUMMARY: SUMMARY_COLUMNS,
    NETWORK_SUMMARY: SUMMARY_COLUMNS,
    ARM_SUMMARY: ARM_COLUMNS,
    NODE_DAILY: DAILY_COLUMNS,
}


@dataclass(slots=True)
class Totals:
    """The sum of every participant's pieces, row by row; exact.

    A node piece counts in its node's row and in the network's: there, a status is
    counted once per participant however many of their node pieces hold it, and a
    specimen once however many nodes name it.
    """

    #: row key -> column -> total (minutes in units of 2**-1074).
    sums: dict[ViewKey, Counter[str]] = field(default_factory=dict)
    #: row key -> specimen_id -> how many pieces name it.
    specimens: dict[ViewKey, Counter[str]] = field(default_factory=dict)
    #: (participant_id, status) -> how many of the participant's node pieces hold it.
    reached: Counter[tuple[bytes, str]] = field(default_factory=Counter)

    def replace(
        self,
        piece_key: str,
        prior: Mapping[str, Any] | None,
        piece: Mapping[str, Any],
        participant: bytes = b"",
    ) -> set[ViewKey]:
        """Replace ``participant``'s ``prior`` version of a piece (None: none) by
        ``piece``; the row keys that changed."""
        touched = set()
        before = {key: (f, ids) for key, f, ids in piece_rows(piece_key, prior)} if prior else {}
        network = piece_key.startswith("node|")
        for key, figures, specimen_ids in piece_rows(piece_key, piece):
            old_figures, old_ids = before.pop(key, _NOTHING)
            self._change(key, old_figures, figures, old_ids, specimen_ids)
            touched.add(key)
            if network:
                self._change(_NETWORK_KEY, old_figures, figures, old_ids, specimen_ids, participant)
                touched.add(_NETWORK_KEY)
        for key, (figures, specimen_ids) in before.items():  # rows the piece left (an arm)
            self._change(key, figures, {}, specimen_ids, ())
            touched.add(key)
        return touched

    def _change(
        self,
        key: ViewKey,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        old_ids: Iterable[str],
        new_ids: Iterable[str],
        participant: bytes | None = None,
    ) -> None:
        """Take a piece's ``old`` figures and specimen ids out of the row ``key`` and put
        its ``new`` ones in: only the differences. ``participant`` (the network row): a
        status counts once per participant."""
        sums = self.sums.get(key)
        if sums is None:
            sums = self.sums[key] = Counter()
        for column in new.keys() | old.keys() if len(old) else new:
            value, was = new.get(column, 0), old.get(column, 0)
            if value == was:
                continue
            if column in MINUTES_COLUMNS:
                sums[column] += _exact(value) - _exact(was)
            elif participant is not None and column in _STATUSES:
                held = self.reached[participant, column] = (
                    self.reached[participant, column] + value - was
                )
                if held == 0:
                    del self.reached[participant, column]
                    sums[column] -= 1
                elif held == value - was:  # 0 -> 1: a participant more reached it
                    sums[column] += 1
            else:
                sums[column] += value - was
        if old_ids or new_ids:
            counts = self.specimens.get(key)
            if counts is None:
                counts = self.specimens[key] = Counter()
            old_set, new_set = set(old_ids), set(new_ids)
            for specimen_id in new_set - old_set:
                counts[specimen_id] += 1
            for specimen_id in old_set - new_set:
                counts[specimen_id] -= 1
                if not counts[specimen_id]:
                    del counts[specimen_id]

    def figures(self, key: ViewKey) -> dict[str, Any]:
        """The row's figures in its view's column order (zeros for an unknown key)."""
        sums = self.sums.get(key, Counter())
        figures: dict[str, Any] = {}
        for column in _FIGURES[key[0]]:
            if column in MINUTES_COLUMNS:
                figures[column] = sums[column] / _SCALE  # int / int: correctly rounded
            elif column == "specimens":
                figures[column] = len(self.specimens.get(key, ()))
            else:
                figures[column] = sums[column]
        return figures

    def keys(self) -> list[ViewKey]:
        return list(self.sums)


@dataclass
class Rolled:
    """What one batch of contributions produced."""

    outgoing: list[Outgoing] = field(default_factory=list)
    #: table -> rows sent (deleted ones included).
    rows: Counter[str] = field(default_factory=Counter)
    #: Pieces that replaced an older one (the rest were repeats or late).
    applied: int = 0


class LiveViews:
    """The latest rows this process's rollup computed, for ``/views/<table>``.

    Written by the stream worker's thread, read by the HTTP server's: each
    table's rows are replaced as a whole dict (one atomic assignment).
    """

    def __init__(self) -> None:
        self._rows: dict[str, dict[ViewKey, dict[str, Any]]] = {}

    def update(self, table: str, rows: dict[ViewKey, dict[str, Any]]) -> None:
        self._rows[table] = rows

    def clear(self) -> None:
        self._rows = {}

    @property
    def empty(self) -> bool:
        return not self._rows

    def rows(self, table: str) -> list[dict[str, Any]] | None:
        """The table's rows sorted by key (deleted ones left out), without
        :data:`~contracts.views.VERSION_COLUMNS`; None when this process holds no
        rollup (another worker does, or none yet)."""
        current = self._rows.get(table)
        if current is None:
            return None
        return [
            {k: v for k, v in current[key].items() if k not in VERSION_COLUMNS}
            for key in sorted(current)
        ]


class RollupStage:
    """Applies batches of ``exnet.contributions`` to the table and the totals, and
    builds the rows of the views for ``views_topic``.

    ``nodes``: the registered nodes, id -> name (the rows of ``node_summary``).
    """

    def __init__(
        self,
        views_topic: str,
        nodes: Mapping[str, str],
        live: LiveViews | None = None,
    ) -> None:
        self._views_topic = views_topic
        self._pending: set[ViewKey] = set()
        self._version = 0
        self._nodes = dict(nodes)
        self._live = live
        self.totals = Totals()
        self._generation: int | None = None
        #: The generation whose table the totals were last rebuilt from (the table
        #: changes only by this stage's batches within a generation).
        self._built: int | None = None
        self._current: dict[str, dict[ViewKey, dict[str, Any]]] = {t: {} for t in VIEW_KEYS}

    def __call__(
        self,
        records: Iterable[Any],
        table: MutableMapping[bytes, bytes],
        generation: int,
        version: int,
        now: datetime,
        *,
        send: bool = True,
    ) -> Rolled:
        """``records``: Kafka records of ``exnet.contributions``; ``table``:
        participant_id -> their latest contribution's JSON; ``generation``: the
        consumer group generation the batch was read in (a new one rebuilds the
        totals from ``table`` and sends every row); ``version``: the rows' version
        (the batch's end offset). ``send``: build the changed rows (``outgoing``)
        now; else they wait for :meth:`flush`, which builds them once for several
        batches."""
        result = Rolled()
        touched: set[ViewKey] = set()
        if generation != self._generation:
            self._build(table, generation)
            self._generation = generation
            # Every row again (a dead worker may not have sent its last ones).
            touched.update(self.totals.keys())
            touched.update(self._summary_keys())
        totals = self.totals
        days: dict[bytes, dict[str, Any]] = {}  # grouped day entries read, this batch
        days_changed: set[bytes] = set()
        for record in records:
            share = orjson.loads(record.value)
            prefix = record.key + b"|"
            for piece_key, piece in share["pieces"].items():
                own = prefix + piece_key.encode()  # the piece's key (days: the layout before)
                day = None
                if piece_key.startswith("day|"):
                    _, node_id, day = piece_key.split("|")
                    entry = prefix + b"days|" + node_id.encode()
                    group = days.get(entry)
                    if group is None:
                        stored = table.get(entry)
                        group = days[entry] = orjson.loads(stored) if stored is not None else {}
                    prior = group.get(day)
                if day is None or prior is None:
                    stored = table.get(own)
                    prior = orjson.loads(stored) if stored is not None else None
                if prior is not None and prior["v"] >= piece["v"]:
                    continue  # a repeat, or older than what is applied
                touched |= totals.replace(piece_key, prior, piece, record.key)
                result.applied += 1
                if day is not None:
                    days[entry][day] = piece
                    days_changed.add(entry)
                    continue
                table[own] = json_value(piece)
        for entry in days_changed:
            table[entry] = json_value(days[entry])
        self._pending |= touched
        self._version = version
        if send:
            result.outgoing = self._flush(now, result.rows)
        return result

    def flush(self, now: datetime) -> Rolled:
        """The rows changed since they were last built (``outgoing``, ``rows``), with
        ``version`` = the end offset of the last batch applied."""
        result = Rolled()
        result.outgoing = self._flush(now, result.rows)
        return result

    def _flush(self, now: datetime, counts: Counter[str]) -> list[Outgoing]:
        """The rows changed since the last flush, for ``exnet.views``."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, set()
        stamp = now.isoformat(timespec="milliseconds")
        totals = self.totals
        outgoing: list[Outgoing] = []
        for key in sorted(pending):
            if key[0] == NODE_SUMMARY and key[1] not in self._nodes:
                continue  # node_summary has the registered nodes' rows (others: network only)
            row = self._row(key, stamp, self._version)
            counts[key[0]] += 1
            outgoing.append(self._outgoing(key, row))
            current = self._current[key[0]]
            if row["is_deleted"]:
                current.pop(key, None)
                totals.sums.pop(key, None)
                totals.specimens.pop(key, None)
            else:
                current[key] = row
        if self._live is not None:
            for view, rows in self._current.items():
                self._live.update(view, dict(rows))
        return outgoing

    def summaries(
        self, table: MutableMapping[bytes, bytes], now: datetime, generation: int, version: int
    ) -> list[Outgoing]:
        """Every registered node's ``node_summary`` row and the ``network_summary``
        row, from ``table`` (rebuilt once per ``generation``, as by :meth:`refresh`),
        for ``exnet.views``: sent once per generation by the worker holding the
        contributions partition, so that these rows exist (zeros where nothing was
        counted) before any contribution is read, and carry the registry's current
        node names. ``version``: the offset the generation started reading the
        partition at, below every version its batches give: a batch's rows win, and a
        row sent before at a higher version holds these figures already (or will,
        once the batches read again reach it)."""
        self._build(table, generation)
        stamp = now.isoformat(timespec="milliseconds")
        return [self._outgoing(key, self._row(key, stamp, version)) for key in self._summary_keys()]

    def _summary_keys(self) -> list[ViewKey]:
        """The rows that always exist: the network's, and every registered node's."""
        return [_NETWORK_KEY, *((NODE_SUMMARY, node_id) for node_id in sorted(self._nodes))]

    def _build(self, table: MutableMapping[bytes, bytes], generation: int | None) -> None:
        """The totals from ``table``, rebuilt once per ``generation`` (within one, only
        this stage's batches change the table); None: rebuilt whatever was built."""
        if generation is None or generation != self._built:
            self._rebuild(table)
            self._built = generation

    def _outgoing(self, key: ViewKey, row: dict[str, Any]) -> Outgoing:
        return (
            self._views_topic,
            None,
            "|".join(key).encode(),
            orjson.dumps(row),
            [(H.TABLE, key[0].encode())],
            None,
        )

    def refresh(
        self, table: MutableMapping[bytes, bytes], now: datetime, generation: int | None = None
    ) -> None:
        """Fill the live views from ``table`` alone (a worker that recovered its table
        but has no new contribution to read): these rows are not sent (their version
        is 0; ``/views/`` serves no version). The next batch sends every row.
        ``generation``: the consumer group generation ``table`` was recovered in;
        the totals are rebuilt from it once per generation, here or by a batch,
        whichever comes first (within a generation only this stage's batches change
        the table; a rebuild after a million events holds the worker's thread for 4 s
        or more). None: rebuild."""
        self._build(table, generation)
        self._generation = None
        if self._live is None:
            return
        stamp = now.isoformat(timespec="milliseconds")
        keys = {*self.totals.keys(), *self._summary_keys()}
        for key in sorted(keys):
            if key[0] == NODE_SUMMARY and key[1] not in self._nodes:
                continue
            row = self._row(key, stamp, 0)
            if not row["is_deleted"]:
                self._current[key[0]][key] = row
        for view, rows in self._current.items():
            self._live.update(view, dict(rows))

    def _rebuild(self, table: MutableMapping[bytes, bytes]) -> None:
        self.totals = Totals()
        self._current = {t: {} for t in VIEW_KEYS}
        grouped: set[bytes] = set()  # <participant>|day|<node>|<day> held in a days entry
        single_days: list[tuple[bytes, bytes]] = []  # under their own keys (layout before)
        for entry, stored in list(table.items()):
            participant, _, piece_key = entry.partition(b"|")
            if piece_key.startswith(b"days|"):
                node_id = piece_key[5:].decode()
                for day, piece in orjson.loads(stored).items():
                    grouped.add(b"%s|day|%s|%s" % (participant, node_id.encode(), day.encode()))
                    self.totals.replace(f"day|{node_id}|{day}", None, piece)
                continue
            if piece_key.startswith(b"day|"):
                single_days.append((entry, stored))
                continue
            self.totals.replace(piece_key.decode(), None, orjson.loads(stored), participant)
        for entry, stored in single_days:
            if entry not in grouped:  # else shadowed by the grouped entry's newer piece
                self.totals.replace(entry.partition(b"|")[2].decode(), None, orjson.loads(stored))

    def _row(self, key: ViewKey, stamp: str, version: int) -> dict[str, Any]:
        view = key[0]
        row: dict[str, Any] = dict(zip(VIEW_KEYS[view], key[1:], strict=True))
        if view == NODE_SUMMARY:
            row["node_name"] = self._nodes[key[1]]
        figures = self.totals.figures(key)
        row.update(figures)
        # A row with nothing left to count (an arm everyone left, after a later
        # randomization) is deleted; the summaries' rows always stay.
        empty = view in (ARM_SUMMARY, NODE_DAILY) and not any(figures.values())
        row["updated_at"] = stamp
        row["version"] = version
        row["is_deleted"] = int(empty)
        return row
