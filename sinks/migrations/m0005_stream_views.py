"""The analysts' views become tables written by the stream; their SQL stays as the reference.

``node_summary``, ``network_summary``, ``arm_summary`` and ``node_daily`` were
views computed from the facts at query time (m0003). From here on the stream
processors compute them and the sink writes one row per key and version
(SPEC §4): each becomes a ``ReplacingMergeTree(version, is_deleted)`` table,
read with ``FINAL``. m0003's SQL lives on under ``<view>_reference``, the
figures recomputed from the facts, which ``exnet verify`` compares with the
tables. The building blocks (``node_facts``, ``participant_arms``, ...) stay.

Interrupted and applied again, every statement is harmless:
``CREATE OR REPLACE VIEW`` rewrites the same reference; ``DROP TABLE IF
EXISTS IF EMPTY`` drops the old view (ClickHouse counts a view as empty) or
the table an earlier, interrupted run created (empty: the sink writes only
once every migration is recorded), and fails, loudly, rather than drop a
table with rows (only a concurrent ``exnet init`` could meet one); ``CREATE
TABLE IF NOT EXISTS`` then creates the table once. (``DROP VIEW IF EXISTS``
fails on the table: ClickHouse refuses it with "is not a View".)
"""

from __future__ import annotations

import re
from typing import Final

from contracts.views import STATUS_COLUMNS, VIEW_FIGURES, VIEW_KEYS
from sinks.migrations import m0003_views

__all__ = ["REFERENCE_SUFFIX", "statements"]

#: ``<view><REFERENCE_SUFFIX>``: the view of m0003, computed from the facts.
REFERENCE_SUFFIX: Final = "_reference"
#: Recent insert blocks whose tokens are remembered, so that a replayed batch is a no-op.
_DEDUP_WINDOW: Final = 1000

_TABLE_COMMENTS: Final[dict[str, str]] = {
    "node_summary": "one row per registered node: its enrollment funnel, sessions, minutes, "
    "specimens, assays and assessments; written by the stream processors, read with FINAL",
    "network_summary": "one row for the whole network: the figures of node_summary over every "
    "event; written by the stream processors, read with FINAL",
    "arm_summary": "one row per (scope, node_id, modality, adjunct) over the participants "
    "randomized to that arm; written by the stream processors, read with FINAL",
    "node_daily": "one row per (node_id, day of occurred_at in UTC) with that day's session "
    "and enrollment counts; written by the stream processors, read with FINAL",
}

_STATUS_MEANING: Final = "distinct participants that reached status {status}"
_DAILY_STATUS_MEANING: Final = "enrollment events with status {status} that day"

#: Column -> (type, comment), where one meaning holds in every view that has the column.
_COMMON: Final[dict[str, tuple[str, str]]] = {
    "node_name": ("String", "the node's name, from the registry"),
    "sessions_attended": ("UInt64", "attended sessions"),
    "sessions_missed": ("UInt64", "missed sessions"),
    "sessions_cancelled": ("UInt64", "cancelled sessions"),
    "exercise_minutes": ("Float64", "sum of duration_min of attended sessions"),
    "adverse_events": ("UInt64", "sessions with an adverse_event"),
    "specimens": ("UInt64", "distinct specimen_id"),
    "assays": ("UInt64", "assay events"),
    "assessments": ("UInt64", "assessment events"),
    "updated_at": ("DateTime64(3, 'UTC')", "when the stream processors computed the row"),
    "version": ("UInt64", "the row's version: under FINAL the highest per key wins"),
    "is_deleted": (
        "UInt8",
        "1: the row is deleted and FINAL hides it (an arm or a day left with nothing to count)",
    ),
}

#: view -> column -> (type, comment), where a view gives a column its own meaning.
_OWN: Final[dict[str, dict[str, tuple[str, str]]]] = {
    "node_summary": {"node_id": ("String", "registered node")},
    "network_summary": {},
    "arm_summary": {
        "scope": ("String", "node (one row per node and arm) or network (one per arm)"),
        "node_id": (
            "String",
            "the node of the participants' latest randomization; empty for scope network",
        ),
        "modality": ("String", "arm: aerobic, resistance, combined or control"),
        "adjunct": (
            "String",
            "arm: none, psychotherapy, pharmacotherapy, nutrition_counseling or brain_stimulation",
        ),
        "randomized": (
            "UInt64",
            "participants randomized to the arm (by their latest randomization)",
        ),
        "sessions_attended": ("UInt64", "their attended sessions"),
        "exercise_minutes": ("Float64", "sum of duration_min of their attended sessions"),
        "responders": (
            "UInt64",
            "distinct participants that responded (a later score at most "
            "half the baseline on the same instrument)",
        ),
        "remitters": (
            "UInt64",
            "distinct participants that remitted (a later score within the "
            "instrument's remission threshold)",
        ),
    },
    "node_daily": {
        "node_id": ("String", "the node"),
        "day": ("Date", "the UTC day of occurred_at"),
        **{
            status: ("UInt64", _DAILY_STATUS_MEANING.format(status=status))
            for status in STATUS_COLUMNS
        },
        "sessions_attended": ("UInt64", "sessions attended that day"),
        "sessions_missed": ("UInt64", "sessions missed that day"),
        "sessions_cancelled": ("UInt64", "sessions cancelled that day"),
        "exercise_minutes": ("Float64", "sum of duration_min of that day's attended sessions"),
        "adverse_events": ("UInt64", "that day's sessions with an adverse_event"),
    },
}


def _columns(view: str) -> list[str]:
    """Every column of the view's table, in order: keys, node_name, figures, bookkeeping."""
    named = ("node_name",) if view == "node_summary" else ()
    return [*VIEW_KEYS[view], *named, *VIEW_FIGURES[view], "updated_at", "version", "is_deleted"]


def _definition(view: str, column: str) -> tuple[str, str]:
    own = _OWN[view].get(column)
    if own is not None:
        return own
    if column in STATUS_COLUMNS:
        return "UInt64", _STATUS_MEANING.format(status=column)
    return _COMMON[column]


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _table(database: str, view: str) -> str:
    columns = ",\n    ".join(
        f"{column} {kind} COMMENT {_quoted(comment)}"
        for column in _columns(view)
        for kind, comment in [_definition(view, column)]
    )
    keys = VIEW_KEYS[view]
    order = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"
    return f"""
CREATE TABLE IF NOT EXISTS {database}.{view} (
    {columns}
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY {order}
SETTINGS non_replicated_deduplication_window = {_DEDUP_WINDOW}
COMMENT {_quoted(_TABLE_COMMENTS[view])}
"""


def _references(database: str) -> dict[str, str]:
    """m0003's statement of each of the four views, renamed to ``<view>_reference``."""
    found: dict[str, str] = {}
    for statement in m0003_views.statements(database):
        created = re.search(rf"CREATE OR REPLACE VIEW {re.escape(database)}\.(\w+) AS", statement)
        if created is None or created.group(1) not in VIEW_KEYS:
            continue
        view = created.group(1)
        renamed = statement.replace(
            created.group(0),
            f"CREATE OR REPLACE VIEW {database}.{view}{REFERENCE_SUFFIX} AS",
            1,
        )
        comment = (
            f"the figures of {view} recomputed from the fact tables at query time: "
            "the reference that exnet verify compares the stream-written table with"
        )
        found[view] = f"{renamed.rstrip()}\nCOMMENT {_quoted(comment)}\n"
    missing = set(VIEW_KEYS) - set(found)
    if missing:
        raise RuntimeError(f"m0003 defines no view {sorted(missing)}")  # a bug, not a state
    return found


def statements(database: str) -> list[str]:
    references = _references(database)
    out: list[str] = []
    for view in VIEW_KEYS:
        out += [
            references[view],
            f"DROP TABLE IF EXISTS IF EMPTY {database}.{view}",
            _table(database, view),
        ]
    return out
