"""Analysts' views (SPEC §4), computed by ClickHouse from the deduplicated facts at query time.

They read the fact tables with FINAL, so they are exact whatever the arrival
order across topics, however often a message was delivered, and however many
workers wrote: the only state they depend on is the facts themselves.

The figures' column names come from :mod:`contracts.views`, their one home;
changing them there changes this migration's checksum (``exnet init`` warns),
and calls for a new migration rather than an edit of this one.
"""

from __future__ import annotations

from contracts.assessment import REMISSION_MAX
from contracts.views import DAILY_COLUMNS, STATUS_COLUMNS, SUMMARY_COLUMNS

__all__ = ["statements"]


def _remission_threshold() -> str:
    cases = ", ".join(f"instrument = '{name}', {top}" for name, top in REMISSION_MAX.items())
    return f"multiIf({cases}, -1)"


def _facts_by(database: str, key: str) -> str:
    """Per-source aggregates, one column set per source, unioned (``key`` = grouping columns).

    Each branch fills only its own columns; an outer sum merges them. Distinct
    participants are counted inside one branch only, so the sum stays exact.
    """
    group = f"GROUP BY {key}" if key else ""
    select_key = f"{key}, " if key else ""
    enrollment = ", ".join(
        f"uniqExactIf(participant_id, status = '{status}') AS {status}" for status in STATUS_COLUMNS
    )
    zero_enrollment = ", ".join(f"toUInt64(0) AS {status}" for status in STATUS_COLUMNS)
    zero_sessions = (
        "toUInt64(0) AS sessions_attended, toUInt64(0) AS sessions_missed, "
        "toUInt64(0) AS sessions_cancelled, toFloat64(0) AS exercise_minutes, "
        "toUInt64(0) AS adverse_events"
    )
    zero_lab = "toUInt64(0) AS specimens, toUInt64(0) AS assays, toUInt64(0) AS assessments"
    return f"""
    SELECT {select_key}{enrollment}, {zero_sessions}, {zero_lab}, max(ingested_at) AS updated_at
    FROM {database}.enrollment_events FINAL {group}
    UNION ALL
    SELECT {select_key}{zero_enrollment},
        countIf(status = 'attended') AS sessions_attended,
        countIf(status = 'missed') AS sessions_missed,
        countIf(status = 'cancelled') AS sessions_cancelled,
        toFloat64(ifNull(sumIf(duration_min, status = 'attended'), 0)) AS exercise_minutes,
        countIf(adverse_event IS NOT NULL) AS adverse_events,
        {zero_lab}, max(ingested_at) AS updated_at
    FROM {database}.session_events FINAL {group}
    UNION ALL
    SELECT {select_key}{zero_enrollment}, {zero_sessions},
        uniqExact(specimen_id) AS specimens, count() AS assays, toUInt64(0) AS assessments,
        max(ingested_at) AS updated_at
    FROM {database}.assay_events FINAL {group}
    UNION ALL
    SELECT {select_key}{zero_enrollment}, {zero_sessions},
        toUInt64(0) AS specimens, toUInt64(0) AS assays, count() AS assessments,
        max(ingested_at) AS updated_at
    FROM {database}.assessment_events FINAL {group}"""


def statements(database: str) -> list[str]:
    summed = ",\n        ".join(f"sum({column}) AS {column}" for column in SUMMARY_COLUMNS)
    per_node = ",\n    ".join(f"ifNull(f.{column}, 0) AS {column}" for column in SUMMARY_COLUMNS)
    return [
        # --- per-node and network-wide summaries ---------------------------
        f"""
CREATE OR REPLACE VIEW {database}.node_facts AS
SELECT node_id,
        {summed},
        max(updated_at) AS updated_at
FROM ({_facts_by(database, "toString(node_id) AS node_id")})
GROUP BY node_id
""",
        f"""
CREATE OR REPLACE VIEW {database}.node_summary AS
SELECT n.node_id AS node_id,
    n.name AS node_name,
    {per_node},
    ifNull(f.updated_at, toDateTime64(0, 3, 'UTC')) AS updated_at
FROM (SELECT node_id, argMax(name, loaded_at) AS name FROM {database}.nodes GROUP BY node_id) AS n
LEFT JOIN {database}.node_facts AS f ON f.node_id = n.node_id
""",
        f"""
CREATE OR REPLACE VIEW {database}.network_summary AS
SELECT {summed},
        max(updated_at) AS updated_at
FROM ({_facts_by(database, "")})
""",
        # --- per-participant building blocks of arm_summary ----------------
        f"""
CREATE OR REPLACE VIEW {database}.participant_arms AS
SELECT participant_id,
    argMax(toString(node_id), (occurred_at, event_id)) AS node_id,
    argMax(toString(site_id), (occurred_at, event_id)) AS site_id,
    argMax(toString(assumeNotNull(modality)), (occurred_at, event_id)) AS modality,
    argMax(toString(adjunct), (occurred_at, event_id)) AS adjunct,
    min(occurred_at) AS randomized_at,
    max(ingested_at) AS updated_at
FROM {database}.enrollment_events FINAL
WHERE status = 'randomized'
GROUP BY participant_id
""",
        f"""
CREATE OR REPLACE VIEW {database}.participant_outcomes AS
SELECT participant_id,
    max(responded) AS responded,
    max(remitted) AS remitted,
    max(updated_at) AS updated_at
FROM (
    SELECT later.participant_id AS participant_id,
        toUInt8(later.score * 2 <= base.baseline_score) AS responded,
        toUInt8(0) AS remitted,
        later.ingested_at AS updated_at
    FROM (
        SELECT participant_id, toString(instrument) AS instrument, score, ingested_at
        FROM {database}.assessment_events FINAL WHERE week > 0
    ) AS later
    INNER JOIN (
        SELECT participant_id, toString(instrument) AS instrument,
            argMax(score, (occurred_at, event_id)) AS baseline_score
        FROM {database}.assessment_events FINAL WHERE week = 0
        GROUP BY participant_id, instrument
    ) AS base ON base.participant_id = later.participant_id AND base.instrument = later.instrument
    UNION ALL
    SELECT participant_id,
        toUInt8(0) AS responded,
        toUInt8(score <= {_remission_threshold()}) AS remitted,
        ingested_at AS updated_at
    FROM {database}.assessment_events FINAL WHERE week > 0
)
GROUP BY participant_id
""",
        f"""
CREATE OR REPLACE VIEW {database}.participant_sessions AS
SELECT participant_id,
    countIf(status = 'attended') AS sessions_attended,
    toFloat64(ifNull(sumIf(duration_min, status = 'attended'), 0)) AS exercise_minutes,
    max(ingested_at) AS updated_at
FROM {database}.session_events FINAL
GROUP BY participant_id
""",
        f"""
CREATE OR REPLACE VIEW {database}.arm_participants AS
SELECT a.participant_id AS participant_id,
    a.node_id AS node_id,
    a.modality AS modality,
    a.adjunct AS adjunct,
    ifNull(s.sessions_attended, 0) AS sessions_attended,
    ifNull(s.exercise_minutes, 0) AS exercise_minutes,
    ifNull(o.responded, 0) AS responded,
    ifNull(o.remitted, 0) AS remitted,
    greatest(a.updated_at, ifNull(s.updated_at, a.updated_at), ifNull(o.updated_at, a.updated_at))
        AS updated_at
FROM {database}.participant_arms AS a
LEFT JOIN {database}.participant_sessions AS s ON s.participant_id = a.participant_id
LEFT JOIN {database}.participant_outcomes AS o ON o.participant_id = a.participant_id
""",
        f"""
CREATE OR REPLACE VIEW {database}.arm_summary AS
SELECT 'node' AS scope, node_id, modality, adjunct,
    count() AS randomized,
    sum(sessions_attended) AS sessions_attended,
    sum(exercise_minutes) AS exercise_minutes,
    countIf(responded = 1) AS responders,
    countIf(remitted = 1) AS remitters,
    max(updated_at) AS updated_at
FROM {database}.arm_participants
GROUP BY node_id, modality, adjunct
UNION ALL
SELECT 'network' AS scope, '' AS node_id, modality, adjunct,
    count() AS randomized,
    sum(sessions_attended) AS sessions_attended,
    sum(exercise_minutes) AS exercise_minutes,
    countIf(responded = 1) AS responders,
    countIf(remitted = 1) AS remitters,
    max(updated_at) AS updated_at
FROM {database}.arm_participants
GROUP BY modality, adjunct
""",
        # --- daily activity per node ---------------------------------------
        f"""
CREATE OR REPLACE VIEW {database}.node_daily AS
SELECT node_id, day,
    {", ".join(f"sum({c}) AS {c}" for c in DAILY_COLUMNS)},
    max(updated_at) AS updated_at
FROM (
    SELECT toString(node_id) AS node_id, toDate(occurred_at, 'UTC') AS day,
        countIf(status = 'attended') AS sessions_attended,
        countIf(status = 'missed') AS sessions_missed,
        countIf(status = 'cancelled') AS sessions_cancelled,
        toFloat64(ifNull(sumIf(duration_min, status = 'attended'), 0)) AS exercise_minutes,
        countIf(adverse_event IS NOT NULL) AS adverse_events,
        {", ".join(f"toUInt64(0) AS {s}" for s in STATUS_COLUMNS)},
        max(ingested_at) AS updated_at
    FROM {database}.session_events FINAL
    GROUP BY node_id, day
    UNION ALL
    SELECT toString(node_id) AS node_id, toDate(occurred_at, 'UTC') AS day,
        toUInt64(0), toUInt64(0), toUInt64(0), toFloat64(0), toUInt64(0),
        {", ".join(f"countIf(status = '{s}') AS {s}" for s in STATUS_COLUMNS)},
        max(ingested_at) AS updated_at
    FROM {database}.enrollment_events FINAL
    GROUP BY node_id, day
)
GROUP BY node_id, day
""",
    ]
