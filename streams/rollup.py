"""The rollup stage, pure: participants' contributions -> the rows of the views (SPEC §4).

State (the ``contributions`` table, one partition, so one rollup sees the
whole network): each participant's latest contribution
(:func:`streams.aggregate.contribution`), by participant_id. A contribution
replaces the participant's previous one only if its ``version`` is higher: a
repeated or late one changes nothing.

The views' totals are a function of that table, :class:`Totals`: the sum of
every participant's pieces (per node, for the network, per arm, per node and
day). Replacing a contribution subtracts the old pieces and adds the new ones.
Minutes are summed exactly (integers in units of 2**-1074, the smallest
double), so no float error builds up over subtractions and the totals do not
depend on the order contributions came in. Distinct specimens are counted
with a reference count per specimen_id.

Each batch sends, to ``exnet.views``, the rows it changed (plus every
registered node's and the network's row), with ``version`` = the end offset of
the batch in the contributions partition: it only grows, and a batch read
again after a crash sends the same rows with the same version. After a
rebalance (a new generation) the totals are rebuilt from the table and every
row is sent again: rows lost in a crash are sent then.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
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
    SUMMARY_COLUMNS,
    VIEW_KEYS,
)
from contracts.wire import Outgoing

__all__ = ["LiveViews", "Rolled", "RollupStage", "Totals", "ViewKey", "pieces"]

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


def _exact(minutes: float) -> int:
    numerator, denominator = minutes.as_integer_ratio()
    return numerator * (_SCALE // denominator)


def pieces(share: Mapping[str, Any]) -> Iterator[tuple[ViewKey, dict[str, Any], Iterable[str]]]:
    """A contribution's pieces: (row key, figures to add, specimen_ids to count distinct).

    Figures hold counts (int) and ``exercise_minutes`` (float); a status reached
    counts 1 (distinct participants). The network counts a status once however
    many nodes the participant reached it at, and each specimen once.
    """
    network: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS, 0)
    network["exercise_minutes"] = []
    network_reached: set[str] = set()
    network_specimens: set[str] = set()
    for node_id, node in share["nodes"].items():
        reached = node.get("reached", ())
        specimens = node.get("specimens", ())
        figures: dict[str, Any] = dict.fromkeys(reached, 1)
        for column in _COUNTED:
            value = node.get(column, 0)
            figures[column] = value
            network[column] += value
        minutes = node.get("exercise_minutes", 0.0)
        figures["exercise_minutes"] = minutes
        network["exercise_minutes"].append(minutes)
        figures["assays"] = node.get("assays", 0)  # specimens: counted distinct from their ids
        figures["assessments"] = node.get("assessments", 0)
        network["assays"] += figures["assays"]
        network["assessments"] += figures["assessments"]
        network_reached.update(reached)
        network_specimens.update(specimens)
        yield (NODE_SUMMARY, node_id), figures, specimens
    if share["nodes"]:
        network.update(dict.fromkeys(network_reached, 1))
        minutes = network.pop("exercise_minutes")
        # Added exactly, one by one, below: a list of floats, not their float sum.
        yield _NETWORK_KEY, {**network, "exercise_minutes": minutes}, network_specimens
    arm = share["arm"]
    if arm is not None:
        figures = {
            "randomized": 1,
            "sessions_attended": arm["sessions_attended"],
            "exercise_minutes": arm["exercise_minutes"],
            "responders": int(arm["responder"]),
            "remitters": int(arm["remitter"]),
        }
        modality, adjunct = arm["modality"], arm["adjunct"]
        yield (ARM_SUMMARY, "node", arm["node_id"], modality, adjunct), figures, ()
        yield (ARM_SUMMARY, "network", "", modality, adjunct), figures, ()
    for node_day, figures in share["daily"].items():
        node_id, day = node_day.split("|")
        yield (NODE_DAILY, node_id, day), figures, ()


_FIGURES: Final[dict[str, tuple[str, ...]]] = {
    NODE_SUMMARY: SUMMARY_COLUMNS,
    NETWORK_SUMMARY: SUMMARY_COLUMNS,
    ARM_SUMMARY: ARM_COLUMNS,
    NODE_DAILY: DAILY_COLUMNS,
}


def _by_key(share: Mapping[str, Any]) -> dict[ViewKey, tuple[dict[str, Any], Iterable[str]]]:
    return {key: (figures, specimens) for key, figures, specimens in pieces(share)}


@dataclass(slots=True)
class Totals:
    """The sum of every participant's pieces, row by row; exact."""

    #: row key -> column -> total (minutes in units of 2**-1074).
    sums: dict[ViewKey, Counter[str]] = field(default_factory=dict)
    #: row key -> specimen_id -> how many pieces name it.
    specimens: dict[ViewKey, Counter[str]] = field(default_factory=dict)

    def add(self, share: Mapping[str, Any]) -> set[ViewKey]:
        """Add a participant's first contribution; the row keys it touched."""
        return self.replace(None, share)

    def replace(self, prior: Mapping[str, Any] | None, share: Mapping[str, Any]) -> set[ViewKey]:
        """Replace a participant's ``prior`` contribution by ``share``; the row keys that
        changed. Only the pieces that differ are taken away and added (most of a
        participant's days, for one, stay as they were)."""
        before = _by_key(prior) if prior is not None else {}
        after = _by_key(share)
        touched = set()
        for key in before.keys() | after.keys():
            old, new = before.get(key), after.get(key)
            if old == new:
                continue
            touched.add(key)
            if old is not None:
                self._add(key, *old, sign=-1)
            if new is not None:
                self._add(key, *new, sign=1)
        return touched

    def _add(
        self, key: ViewKey, figures: dict[str, Any], specimen_ids: Iterable[str], sign: int
    ) -> None:
        sums = self.sums.get(key)
        if sums is None:
            sums = self.sums[key] = Counter()
        for column, value in figures.items():
            if column in MINUTES_COLUMNS:
                values = value if isinstance(value, list) else (value,)
                sums[column] += sign * sum(_exact(v) for v in values)
            elif value:
                sums[column] += sign * value
        if specimen_ids:
            counts = self.specimens.get(key)
            if counts is None:
                counts = self.specimens[key] = Counter()
            for specimen_id in specimen_ids:
                counts[specimen_id] += sign
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
    #: Contributions that replaced an older one (the rest were repeats or late).
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
        """The table's rows sorted by key (deleted ones left out); None when this
        process holds no rollup (another worker does, or none yet)."""
        current = self._rows.get(table)
        if current is None:
            return None
        return [current[key] for key in sorted(current)]


class RollupStage:
    """Applies batches of ``exnet.contributions`` to the table and the totals, and
    builds the rows of the views for ``views_topic``.

    ``nodes``: the registered nodes, id -> name (the rows of ``node_summary``).
    """

    def __init__(
        self, views_topic: str, nodes: Mapping[str, str], live: LiveViews | None = None
    ) -> None:
        self._views_topic = views_topic
        self._nodes = dict(nodes)
        self._live = live
        self.totals = Totals()
        self._generation: int | None = None
        self._current: dict[str, dict[ViewKey, dict[str, Any]]] = {t: {} for t in VIEW_KEYS}

    def __call__(
        self,
        records: Iterable[Any],
        table: MutableMapping[bytes, bytes],
        generation: int,
        version: int,
        now: datetime,
    ) -> Rolled:
        """``records``: Kafka records of ``exnet.contributions``; ``table``:
        participant_id -> their latest contribution's JSON; ``generation``: the
        consumer group generation the batch was read in (a new one rebuilds the
        totals from ``table`` and sends every row); ``version``: the rows' version
        (the batch's end offset)."""
        result = Rolled()
        touched: set[ViewKey] = set()
        if generation != self._generation:
            self._rebuild(table)
            self._generation = generation
            touched.update(self.totals.keys())
        totals = self.totals
        for record in records:
            key = record.key
            share = orjson.loads(record.value)
            stored = table.get(key)
            prior = orjson.loads(stored) if stored is not None else None
            if prior is not None and prior["version"] >= share["version"]:
                continue  # a repeat, or older than what is applied
            touched |= totals.replace(prior, share)
            table[key] = record.value
            result.applied += 1
        touched.add(_NETWORK_KEY)
        touched.update((NODE_SUMMARY, node_id) for node_id in self._nodes)
        stamp = now.isoformat(timespec="milliseconds")
        for key in sorted(touched):
            if key[0] == NODE_SUMMARY and key[1] not in self._nodes:
                continue  # node_summary has the registered nodes' rows (others: network only)
            row = self._row(key, stamp, version)
            result.rows[key[0]] += 1
            result.outgoing.append(
                (
                    self._views_topic,
                    None,
                    "|".join(key).encode(),
                    orjson.dumps(row),
                    [(H.TABLE, key[0].encode())],
                    None,
                )
            )
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
        return result

    def refresh(self, table: MutableMapping[bytes, bytes], now: datetime) -> None:
        """Fill the live views from ``table`` alone (a worker that recovered its table
        but has no new contribution to read): the rows carry ``version`` null, as they
        were not sent. The next batch rebuilds the totals and sends every row."""
        self._rebuild(table)
        self._generation = None
        if self._live is None:
            return
        stamp = now.isoformat(timespec="milliseconds")
        keys = {*self.totals.keys(), _NETWORK_KEY, *((NODE_SUMMARY, n) for n in self._nodes)}
        for key in sorted(keys):
            if key[0] == NODE_SUMMARY and key[1] not in self._nodes:
                continue
            row = self._row(key, stamp, 0)
            row["version"] = None
            if not row["is_deleted"]:
                self._current[key[0]][key] = row
        for view, rows in self._current.items():
            self._live.update(view, dict(rows))

    def _rebuild(self, table: MutableMapping[bytes, bytes]) -> None:
        self.totals = Totals()
        self._current = {t: {} for t in VIEW_KEYS}
        for stored in list(table.values()):
            self.totals.add(orjson.loads(stored))

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
