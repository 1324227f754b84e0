"""The stream-written views held against their reference, recomputed from the facts.

``node_summary``, ``network_summary``, ``arm_summary`` and ``node_daily`` are
tables the stream processors write (read with ``FINAL``); ``<view>_reference``
computes the same figures from the fact tables at query time (migration
m0005). :func:`compare` matches one view's rows by key and lists every
difference; it is pure, and takes rows from any source. :func:`verify` reads
both sides through a query callable (``exnet verify`` passes the path of
``exnet sql``; the sink's :class:`ViewCheck` its own read-only session).

What counts as equal:

- every column but ``updated_at``, ``version`` and ``is_deleted`` is
  compared (``node_summary``'s ``node_name`` too); counts exactly;
- ``exercise_minutes`` within a relative 1e-9 or an absolute 1e-6 minutes:
  ClickHouse's ``sum`` of doubles is not correctly rounded (its result
  depends on the order it meets the values in), the stream's sum is exact;
- a reference row of ``arm_summary`` or ``node_daily`` whose figures are all
  zero that the stream table lacks (the stream deletes such a row: an arm
  everyone left). ``node_summary`` and ``network_summary`` hold their rows from
  the first start, zeros included (every registered node's, SPEC §4): one
  missing there is a difference.

Anything else missing on one side is a difference.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from contracts.views import MINUTES_COLUMNS, VERSION_COLUMNS, VIEW_FIGURES, VIEW_KEYS
from exnet.metrics import Metrics
from sinks.migrations.m0005_stream_views import REFERENCE_SUFFIX
from sinks.rows import VIEW_COLUMNS

__all__ = [
    "ABS_TOL",
    "BOOKKEEPING",
    "REL_TOL",
    "VIEWS",
    "QueryRows",
    "RowDifference",
    "SettledDifferences",
    "Verification",
    "ViewCheck",
    "compare",
    "compared_columns",
    "rows_of",
    "verify",
]

log = logging.getLogger(__name__)

#: Messages left to consume, over every stage, above which the pipeline is catching
#: up and the scheduled view check waits (:class:`ViewCheck`). At a steady 5,000
#: events/s the stages' summed lag stays in the tens of thousands.
CATCHING_UP_BACKLOG: Final = 100_000

#: The stream-written views, in the order they are checked and reported.
VIEWS: Final[tuple[str, ...]] = tuple(VIEW_KEYS)
#: Columns that say when and in which version the stream wrote a row: not compared.
BOOKKEEPING: Final = frozenset({"updated_at"}) | VERSION_COLUMNS
#: Tolerances of ``exercise_minutes`` (minutes): relative, absolute.
REL_TOL: Final = 1e-9
ABS_TOL: Final = 1e-6
#: Settled differences logged per check at most (the metric counts them all).
_LOGGED_PER_CHECK: Final = 20

#: SQL in, rows out (dicts keyed by column, values as ClickHouse's JSON writes them).
QueryRows = Callable[[str], list[dict[str, Any]]]
#: A row's key: its key columns' (name, value) pairs, in the view's order.
Key = tuple[tuple[str, str], ...]

_STREAM: Final = "the stream table"
#: Views whose every key has a row in the stream table, zeros included (SPEC §4).
_ALWAYS_ROWS: Final = frozenset({"node_summary", "network_summary"})
_REFERENCE: Final = "the reference"


def compared_columns(view: str) -> tuple[str, ...]:
    """The columns of ``view`` that :func:`compare` holds equal: keys, ``node_name``, figures."""
    return tuple(column for column in VIEW_COLUMNS[view] if column not in BOOKKEEPING)


@dataclass(frozen=True)
class RowDifference:
    """One row of one view that differs from its reference."""

    view: str
    key: Key
    #: ``"the stream table"`` or ``"the reference"`` when the row is missing there;
    #: None when both sides have it and :attr:`columns` differ.
    missing_in: str | None
    #: (column, stream value, reference value) of each differing column.
    columns: tuple[tuple[str, Any, Any], ...] = ()
    #: The stream row's ``version`` (None: no stream row, or none was read).
    stream_version: int | None = None
    #: The reference row's compared values (None: no reference row).
    reference_values: tuple[Any, ...] | None = None

    @property
    def signature(self) -> tuple[Any, ...]:
        """What must stay the same between two checks for the difference to be settled:
        the differing values on both sides and the reference row. Not the stream row's
        ``version``: the rollup may send a row again, unchanged, with a new one (every
        row after a rebalance), and a wrong row must still settle."""
        return self.missing_in, self.columns, self.reference_values

    def lines(self) -> list[str]:
        """One line per differing column (or one for a missing row)."""
        where = self.view + "".join(f" {column}={value}" for column, value in self.key)
        if self.missing_in is not None:
            return [f"{where}: missing in {self.missing_in}"]
        return [
            f"{where}: {column}: stream {stream!r}, reference {reference!r}"
            for column, stream, reference in self.columns
        ]


@dataclass(frozen=True)
class Verification:
    """The differences of every view, and how many rows (keys) each compared."""

    differences: tuple[RowDifference, ...]
    compared: dict[str, int] = field(default_factory=dict)
    #: Rows read from the stream-written tables, every view's together.
    stream_rows: int = 0

    @property
    def equal(self) -> bool:
        return not self.differences

    def lines(self) -> list[str]:
        """Every difference, then a final line."""
        total = sum(self.compared.values())
        if not self.equal and not self.stream_rows:
            # A database `exnet init` made that no stream worker has started on yet: every
            # reference row would be listed as "missing in the stream table".
            return [
                f"the stream-written views hold no rows yet (the reference has {total}): "
                "the stream writes them from its first start (`exnet up`); verify after it"
            ]
        out = [line for difference in self.differences for line in difference.lines()]
        if self.equal:
            per_view = ", ".join(f"{view} {n}" for view, n in self.compared.items())
            out.append(f"no differences: {total} rows compared ({per_view})")
        else:
            differing: dict[str, int] = dict.fromkeys(self.compared, 0)
            for difference in self.differences:
                differing[difference.view] = differing.get(difference.view, 0) + 1
            per_view = ", ".join(f"{view} {n}" for view, n in differing.items() if n)
            out.append(
                f"{len(self.differences)} of {total} rows differ ({per_view}); "
                "the stream-written views do not match the reference"
            )
        return out


def _normal(view: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """``row``'s compared columns (and ``version``), typed alike whatever the source:
    ClickHouse's JSON quotes 64-bit integers; a driver gives dates as ``date``."""
    keys = set(VIEW_KEYS[view]) | {"node_name"}
    out: dict[str, Any] = {}
    for column in compared_columns(view):
        value = row[column]
        if column in keys:
            out[column] = str(value)
        elif column in MINUTES_COLUMNS:
            out[column] = float(value)
        else:
            out[column] = int(value)
    if row.get("version") is not None:
        out["version"] = int(row["version"])
    return out


def _same(column: str, stream: Any, reference: Any) -> bool:
    if column in MINUTES_COLUMNS:
        return math.isclose(stream, reference, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return bool(stream == reference)


def _indexed(view: str, rows: Iterable[Mapping[str, Any]]) -> dict[Key, dict[str, Any]]:
    indexed: dict[Key, dict[str, Any]] = {}
    for row in rows:
        normal = _normal(view, row)
        indexed[tuple((column, normal[column]) for column in VIEW_KEYS[view])] = normal
    return indexed


def compare(
    view: str,
    stream_rows: Iterable[Mapping[str, Any]],
    reference_rows: Iterable[Mapping[str, Any]],
) -> list[RowDifference]:
    """Every row of ``view`` that differs between the stream table and the reference,
    sorted by key. Rows are mappings by column name holding at least
    :func:`compared_columns` (stream rows may hold ``version``, other columns are
    ignored); the stream rows are those the table shows under ``FINAL``."""
    return _differences(view, _indexed(view, stream_rows), _indexed(view, reference_rows))


def _differences(
    view: str, stream: dict[Key, dict[str, Any]], reference: dict[Key, dict[str, Any]]
) -> list[RowDifference]:
    columns = compared_columns(view)
    figures = VIEW_FIGURES[view]
    differences: list[RowDifference] = []
    for key in sorted(stream.keys() | reference.keys()):
        ours, theirs = stream.get(key), reference.get(key)
        version = ours.get("version") if ours is not None else None
        values = tuple(theirs[c] for c in columns) if theirs is not None else None
        if ours is None:
            assert theirs is not None  # noqa: S101  # the key came from one side
            if view in _ALWAYS_ROWS or any(theirs[figure] for figure in figures):
                differences.append(RowDifference(view, key, _STREAM, (), None, values))
            continue
        if theirs is None:
            differences.append(RowDifference(view, key, _REFERENCE, (), version, None))
            continue
        differing = tuple(
            (column, ours[column], theirs[column])
            for column in columns
            if not _same(column, ours[column], theirs[column])
        )
        if differing:
            differences.append(RowDifference(view, key, None, differing, version, values))
    return differences


def _select(database: str, view: str, *, stream: bool) -> str:
    columns = ", ".join(compared_columns(view))
    if stream:
        return f"SELECT {columns}, version FROM {database}.{view} FINAL"  # noqa: S608  # fixed names
    return f"SELECT {columns} FROM {database}.{view}{REFERENCE_SUFFIX}"  # noqa: S608  # fixed names


def verify(query: QueryRows, database: str, views: Sequence[str] = VIEWS) -> Verification:
    """Read each view's stream table (``FINAL``) and its reference through ``query``
    and compare them (:func:`compare`). ``database`` is a checked identifier."""
    differences: list[RowDifference] = []
    compared: dict[str, int] = {}
    stream_rows = 0
    for view in views:
        stream = _indexed(view, query(_select(database, view, stream=True)))
        reference = _indexed(view, query(_select(database, view, stream=False)))
        compared[view] = len(stream.keys() | reference.keys())
        stream_rows += len(stream)
        differences += _differences(view, stream, reference)
    return Verification(tuple(differences), compared, stream_rows)


def rows_of(raw_query: Callable[[str, str], bytes]) -> QueryRows:
    """A :data:`QueryRows` over a ``(sql, format) -> bytes`` callable, such as
    ``QueryEndpoint.query`` or a clickhouse-connect client's ``raw_query``."""

    def query(sql: str) -> list[dict[str, Any]]:
        body = raw_query(sql, "JSONEachRow")
        return [orjson.loads(line) for line in body.splitlines() if line.strip()]

    return query


class SettledDifferences:
    """Which differences have settled, from one check to the next.

    While events flow, a stream-written row lags the facts by a second or so,
    so any one comparison shows rows still on their way. A difference counts
    as *settled* when the same row differed in the previous check too, and
    neither its stream row's figures nor the reference's changed in between
    (a row the rollup sent again, unchanged, with a new ``version`` still
    counts): nothing was on its way to the row, and it is still wrong.
    A row that keeps changing never settles (the check cannot tell a late
    row from a wrong one); once events stop, every wrong row settles in two
    checks.
    """

    def __init__(self) -> None:
        self._previous: dict[tuple[str, Key], tuple[Any, ...]] = {}

    def update(self, differences: Iterable[RowDifference]) -> dict[str, list[RowDifference]]:
        """Take one check's differences; the settled ones, per view (every view present)."""
        current: dict[tuple[str, Key], tuple[Any, ...]] = {}
        settled: dict[str, list[RowDifference]] = {view: [] for view in VIEWS}
        for difference in differences:
            where = (difference.view, difference.key)
            current[where] = difference.signature
            if self._previous.get(where) == difference.signature:
                settled.setdefault(difference.view, []).append(difference)
        self._previous = current
        return settled


class ViewCheck(threading.Thread):
    """Compares the views with their reference every ``interval_s`` seconds (the first
    after one interval) and sets ``exnet_view_rows_differing{view}`` to the settled
    differences (:class:`SettledDifferences`), and
    ``exnet_view_check_last_timestamp_seconds``. A failed check is logged and
    counted (``exnet_view_check_errors_total``); the next one runs on schedule.

    ``backlog``: messages the pipeline has yet to consume, over all its stages
    (None: unknown). While it exceeds :data:`CATCHING_UP_BACKLOG`, the pipeline
    is catching up and a check is skipped: the stages then lag one another by
    minutes, so a view row can sit behind facts already written through two
    checks and look settled though it is on its way (seen over a million
    events), and a check over a growing database costs the writer a core for a
    second and up to 66 MB at its peak (1M facts). Differences settle over
    checks made after the catch-up only.
    """

    def __init__(
        self,
        query: QueryRows,
        database: str,
        metrics: Metrics,
        interval_s: float,
        backlog: Callable[[], int | None] | None = None,
    ) -> None:
        super().__init__(name="exnet-view-check", daemon=True)
        self._query = query
        self._database = database
        self._metrics = metrics
        self._interval_s = interval_s
        self._backlog = backlog
        self._halt = threading.Event()
        self._settled = SettledDifferences()
        self._skipping = False

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.wait(self._interval_s):
            if not self.catching_up():
                self.check()

    def catching_up(self) -> bool:
        """Whether the pipeline's backlog exceeds :data:`CATCHING_UP_BACKLOG` (logged
        when that starts and ends); an unknown backlog is not a catch-up."""
        backlog = self._backlog() if self._backlog is not None else None
        busy = backlog is not None and backlog > CATCHING_UP_BACKLOG
        if busy and not self._skipping:
            log.info(
                "the pipeline is catching up (%d messages to consume): the view check "
                "waits until it is done",
                backlog,
            )
            self._settled = SettledDifferences()  # settle over later checks only
        elif self._skipping and not busy:
            log.info("the pipeline caught up: the view check runs again")
        self._skipping = busy
        return busy

    def check(self) -> dict[str, list[RowDifference]] | None:
        """One comparison; the settled differences per view, or None if it failed."""
        try:
            result = verify(self._query, self._database)
        except Exception:  # a check must never take the sink down
            self._metrics.view_check_errors.inc()
            log.warning("the check of the views against their reference failed", exc_info=True)
            return None
        settled = self._settled.update(result.differences)
        for view, rows in settled.items():
            self._metrics.view_rows_differing.labels(view=view).set(len(rows))
        self._metrics.view_check_last.set(time.time())
        lines = [line for rows in settled.values() for row in rows for line in row.lines()]
        if lines:
            log.warning(
                "%d settled difference(s) between the stream-written views and their "
                "reference (`exnet verify` lists them all):\n  %s",
                sum(len(rows) for rows in settled.values()),
                "\n  ".join(lines[:_LOGGED_PER_CHECK]),
            )
        return settled
