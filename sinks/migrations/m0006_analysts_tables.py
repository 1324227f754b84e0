"""What analysts looked for: local time, the protocol's endpoint, participants, sites, comments.

* Fact tables keep the UTC offset the site sent (``utc_offset_min``) and the
  event's local date (``local_date``: in the site's IANA zone from the
  registry, else at that offset); ``sites`` gets its ``timezone`` (SPEC §3).
* ``study``: the registry's primary endpoint (SPEC §3), loaded by ``exnet
  init``; the reference outcomes (``participant_outcomes``, hence
  ``arm_summary_reference``) follow it as the stream does.
* ``participants``: one row per participant (site, node, age band, sex, the
  dates of each status, current status, arm); ``site_summary``: the figures of
  ``node_summary`` per registered site. Both are views over the facts.
* A comment on every column of every view (tables had theirs).

Interrupted and applied again, every statement is harmless (``IF NOT
EXISTS``, ``OR REPLACE``, comments set again).
"""

from __future__ import annotations

from typing import Final

from contracts.assessment import REMISSION_MAX
from contracts.views import ARM_COLUMNS, DAILY_COLUMNS, STATUS_COLUMNS, SUMMARY_COLUMNS
from sinks.migrations import m0003_views

__all__ = ["VIEW_COLUMNS", "statements"]

_FACT_TABLES: Final = ("enrollment_events", "session_events", "assay_events", "assessment_events")

#: Every view exnet defines -> its columns, in order (each gets a comment below).
VIEW_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "node_facts": ("node_id", *SUMMARY_COLUMNS, "updated_at"),
    "node_summary_reference": ("node_id", "node_name", *SUMMARY_COLUMNS, "updated_at"),
    "network_summary_reference": (*SUMMARY_COLUMNS, "updated_at"),
    "participant_arms": (
        "participant_id",
        "node_id",
        "site_id",
        "modality",
        "adjunct",
        "randomized_at",
        "updated_at",
    ),
    "participant_outcomes": ("participant_id", "responded", "remitted", "updated_at"),
    "participant_sessions": (
        "participant_id",
        "sessions_attended",
        "exercise_minutes",
        "updated_at",
    ),
    "arm_participants": (
        "participant_id",
        "node_id",
        "modality",
        "adjunct",
        "sessions_attended",
        "exercise_minutes",
        "responded",
        "remitted",
        "updated_at",
    ),
    "arm_summary_reference": (
        "scope",
        "node_id",
        "modality",
        "adjunct",
        *ARM_COLUMNS,
        "updated_at",
    ),
    "node_daily_reference": ("node_id", "day", *DAILY_COLUMNS, "updated_at"),
    "participants": (
        "participant_id",
        "site_id",
        "node_id",
        "age_band",
        "sex",
        *(f"{status}_at" for status in STATUS_COLUMNS),
        "ended_at",
        "status",
        "modality",
        "adjunct",
        "updated_at",
    ),
    "site_summary": ("node_id", "site_id", "site_name", *SUMMARY_COLUMNS, "updated_at"),
}

_OUTCOME = (
    "SPEC §1 (any instrument, any later week), or the registry's primary endpoint "
    "and thresholds when the study table names one"
)
#: What a column means wherever it appears (a view may say otherwise, below).
_MEANING: Final[dict[str, str]] = {
    "node_id": "the node",
    "node_name": "the node's name, from the registry",
    "site_id": "the site",
    "site_name": "the site's name, from the registry",
    "participant_id": "participant pseudonym (P-...)",
    **{status: f"distinct participants that reached status {status}" for status in STATUS_COLUMNS},
    "sessions_attended": "attended sessions",
    "sessions_missed": "missed sessions",
    "sessions_cancelled": "cancelled sessions",
    "exercise_minutes": "sum of duration_min of attended sessions",
    "adverse_events": "sessions with an adverse_event",
    "specimens": "distinct specimen_id",
    "assays": "assay events",
    "assessments": "assessment events",
    "updated_at": "the newest ingested_at of the facts counted",
    "scope": "node (one row per node and arm) or network (one per arm)",
    "modality": "arm: aerobic, resistance, combined or control (of the latest randomization)",
    "adjunct": "arm's adjunct: none, psychotherapy, pharmacotherapy, nutrition_counseling "
    "or brain_stimulation (of the latest randomization)",
    "randomized": "participants randomized to the arm (by their latest randomization)",
    "randomized_at": "their first randomization (occurred_at, UTC)",
    "responded": f"1 when the participant responded: {_OUTCOME}",
    "remitted": f"1 when the participant remitted: {_OUTCOME}",
    "responders": f"distinct participants that responded: {_OUTCOME}",
    "remitters": f"distinct participants that remitted: {_OUTCOME}",
    "day": "the UTC day of occurred_at",
    "age_band": "18-24 ... 65+ (the latest enrollment event that gave one)",
    "sex": "female, male, intersex or unknown (the latest enrollment event that gave one)",
    **{
        f"{status}_at": f"first enrollment event with status {status} (occurred_at, UTC); "
        "null if none"
        for status in STATUS_COLUMNS
    },
    "ended_at": "first withdrawn or completed event (occurred_at, UTC); null while enrolled",
    "status": "current status: that of the participant's latest enrollment event",
}
#: view -> column -> meaning, where the view gives a column its own.
_OWN: Final[dict[str, dict[str, str]]] = {
    "node_daily_reference": {
        **{status: f"enrollment events with status {status} that day" for status in STATUS_COLUMNS},
        "sessions_attended": "sessions attended that day",
        "sessions_missed": "sessions missed that day",
        "sessions_cancelled": "sessions cancelled that day",
        "exercise_minutes": "sum of duration_min of that day's attended sessions",
        "adverse_events": "that day's sessions with an adverse_event",
    },
    "arm_summary_reference": {
        "node_id": "the node of the participants' latest randomization; empty for scope network",
        "sessions_attended": "their attended sessions",
        "exercise_minutes": "sum of duration_min of their attended sessions",
    },
    "participant_arms": {
        "node_id": "the node of the latest randomization",
        "site_id": "the site of the latest randomization",
    },
    "participants": {
        "node_id": "the node of the participant's latest enrollment event",
        "site_id": "the site of the participant's latest enrollment event",
        "modality": "arm of the latest randomization (null if never randomized)",
        "adjunct": "adjunct of the latest randomization (null if never randomized)",
        "updated_at": "the newest ingested_at of the participant's enrollment events",
    },
    "site_summary": {"node_id": "the site's node, from the registry"},
}

_LOCAL_COLUMNS: Final = (
    (
        "utc_offset_min",
        "Nullable(Int16)",
        "UTC offset the site wrote occurred_at with, minutes east (-300 for -05:00); null for "
        "rows written before exnet kept it",
    ),
    (
        "local_date",
        "Nullable(Date)",
        "the day occurred_at fell on at the site: in the registry's timezone for the site, "
        "else at utc_offset_min; null for rows written before exnet kept it",
    ),
)


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _remission_threshold() -> str:
    cases = ", ".join(f"instrument = '{name}', {top}" for name, top in REMISSION_MAX.items())
    return f"multiIf({cases}, -1)"


def _outcomes(database: str) -> str:
    """``participant_outcomes`` (m0003's), following the ``study`` table's endpoint."""
    endpoint = f"""
WITH
    (SELECT argMax(instrument, loaded_at) FROM {database}.study) AS e_instrument,
    (SELECT argMax(week, loaded_at) FROM {database}.study) AS e_week,
    (SELECT argMax(response_reduction_pct, loaded_at) FROM {database}.study) AS e_pct,
    (SELECT argMax(remission_max, loaded_at) FROM {database}.study) AS e_remission"""
    counted = "(ifNull(e_instrument, '') = '' OR (instrument = e_instrument AND week = e_week))"
    responds = (
        "if(ifNull(e_instrument, '') = '', later.score * 2 <= base.baseline_score, "
        "later.score * 100 <= (100 - e_pct) * base.baseline_score)"
    )
    remits = (
        f"if(ifNull(e_instrument, '') = '' OR e_remission < 0, {_remission_threshold()}, "
        "e_remission)"
    )
    return f"""
CREATE OR REPLACE VIEW {database}.participant_outcomes AS{endpoint}
SELECT participant_id,
    max(responded) AS responded,
    max(remitted) AS remitted,
    max(updated_at) AS updated_at
FROM (
    SELECT later.participant_id AS participant_id,
        toUInt8({responds}) AS responded,
        toUInt8(0) AS remitted,
        later.ingested_at AS updated_at
    FROM (
        SELECT participant_id, toString(instrument) AS instrument, week, score, ingested_at
        FROM {database}.assessment_events FINAL WHERE week > 0 AND {counted}
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
        toUInt8(score <= {remits}) AS remitted,
        ingested_at AS updated_at
    FROM (
        SELECT participant_id, toString(instrument) AS instrument, week, score, ingested_at
        FROM {database}.assessment_events FINAL WHERE week > 0 AND {counted}
    )
)
GROUP BY participant_id
"""


def _participants(database: str) -> str:
    # The facts' columns under other names (e_*), so that the output's names, the
    # same words, are no aliases that other aggregates would then read.
    order = "(e_occurred_at, e_event_id)"
    firsts = ",\n    ".join(
        f"if(countIf(e_status = '{status}') > 0, minIf(e_occurred_at, e_status = '{status}'), "
        f"NULL) AS {status}_at"
        for status in STATUS_COLUMNS
    )
    ended = "e_status IN ('withdrawn', 'completed')"
    return f"""
CREATE OR REPLACE VIEW {database}.participants AS
SELECT participant_id,
    argMax(e_site_id, {order}) AS site_id,
    argMax(e_node_id, {order}) AS node_id,
    nullIf(argMaxIf(e_age_band, {order}, e_age_band != ''), '') AS age_band,
    nullIf(argMaxIf(e_sex, {order}, e_sex != ''), '') AS sex,
    {firsts},
    if(countIf({ended}) > 0, minIf(e_occurred_at, {ended}), NULL) AS ended_at,
    argMax(e_status, {order}) AS status,
    nullIf(argMaxIf(e_modality, {order}, e_status = 'randomized'), '') AS modality,
    nullIf(argMaxIf(e_adjunct, {order}, e_status = 'randomized'), '') AS adjunct,
    max(e_ingested_at) AS updated_at
FROM (
    SELECT participant_id,
        occurred_at AS e_occurred_at,
        event_id AS e_event_id,
        toString(site_id) AS e_site_id,
        toString(node_id) AS e_node_id,
        toString(ifNull(age_band, '')) AS e_age_band,
        toString(ifNull(sex, '')) AS e_sex,
        toString(status) AS e_status,
        toString(ifNull(modality, '')) AS e_modality,
        toString(adjunct) AS e_adjunct,
        ingested_at AS e_ingested_at
    FROM {database}.enrollment_events FINAL
)
GROUP BY participant_id
COMMENT 'one row per participant with an enrollment event: where, who (age band, sex), when \
each status was first reached, current status and arm; computed from enrollment_events'
"""


def _site_summary(database: str) -> str:
    summed = ",\n        ".join(f"sum({column}) AS {column}" for column in SUMMARY_COLUMNS)
    per_site = ",\n    ".join(f"ifNull(f.{column}, 0) AS {column}" for column in SUMMARY_COLUMNS)
    facts = m0003_views._facts_by(database, "toString(site_id) AS site_id")  # noqa: SLF001
    return f"""
CREATE OR REPLACE VIEW {database}.site_summary AS
SELECT s.node_id AS node_id,
    s.site_id AS site_id,
    s.name AS site_name,
    {per_site},
    ifNull(f.updated_at, toDateTime64(0, 3, 'UTC')) AS updated_at
FROM (
    SELECT site_id, argMax(node_id, loaded_at) AS node_id, argMax(name, loaded_at) AS name
    FROM {database}.sites GROUP BY site_id
) AS s
LEFT JOIN (
    SELECT site_id,
        {summed},
        max(updated_at) AS updated_at
    FROM ({facts})
    GROUP BY site_id
) AS f ON f.site_id = s.site_id
COMMENT 'one row per registered site: the figures of node_summary over its own events, \
computed from the fact tables at query time'
"""


#: The building blocks of the reference views (m0003) -> what each holds.
_VIEW_COMMENTS: Final[dict[str, str]] = {
    "node_facts": "per node, the figures of node_summary over the fact tables (a building "
    "block of node_summary_reference)",
    "participant_arms": "per randomized participant, the arm and node of their latest "
    "randomization (a building block of arm_summary_reference)",
    "participant_outcomes": "per participant with a later rating, whether they responded "
    "and remitted (SPEC §1, or the primary endpoint in study)",
    "participant_sessions": "per participant, their attended sessions and minutes",
    "arm_participants": "per randomized participant, their arm, sessions, minutes and "
    "outcomes (the rows arm_summary_reference sums)",
}


def _comments(database: str) -> list[str]:
    out = [
        f"ALTER TABLE {database}.{view} MODIFY COMMENT {_quoted(comment)}"
        for view, comment in _VIEW_COMMENTS.items()
    ]
    for view, columns in VIEW_COLUMNS.items():
        own = _OWN.get(view, {})
        out += [
            f"ALTER TABLE {database}.{view} COMMENT COLUMN {column} "
            f"{_quoted(own.get(column) or _MEANING[column])}"
            for column in columns
        ]
    return out


def statements(database: str) -> list[str]:
    local = [
        f"ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS {column} {kind} "
        f"COMMENT {_quoted(comment)}"
        for table in _FACT_TABLES
        for column, kind, comment in _LOCAL_COLUMNS
    ]
    return [
        *local,
        f"ALTER TABLE {database}.sites ADD COLUMN IF NOT EXISTS timezone String DEFAULT '' "
        "COMMENT 'the site''s IANA time zone from the registry (empty: not given)'",
        f"""
CREATE TABLE IF NOT EXISTS {database}.study (
    instrument String COMMENT 'primary endpoint''s instrument (empty: none, SPEC §1 applies)',
    week UInt8 COMMENT 'primary endpoint''s week (0: none)',
    response_reduction_pct UInt8 COMMENT 'response: at least this % reduction from baseline',
    remission_max Int16 COMMENT 'remission: a score at most this (-1: the instrument''s SPEC §1 \
threshold)',
    definition String COMMENT 'how responders and remitters are counted, in words',
    loaded_at DateTime64(3, 'UTC') COMMENT 'when the registry was loaded'
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY tuple()
COMMENT 'the network registry''s primary endpoint (SPEC §3), loaded by exnet init: the \
latest row is in force'
""",
        _outcomes(database),
        _participants(database),
        _site_summary(database),
        f"ALTER TABLE {database}.rejected_events COMMENT COLUMN source_partition "
        "'partition of source_topic the message was read from'",
        f"ALTER TABLE {database}.rejected_events COMMENT COLUMN source_offset "
        "'its offset: (source_topic, source_partition, source_offset) finds the original'",
        *(
            f"ALTER TABLE {database}.arm_summary COMMENT COLUMN {column} "
            f"{_quoted(_MEANING[column])}"
            for column in ("responders", "remitters")
        ),
        f"ALTER TABLE {database}.exnet_migrations COMMENT COLUMN id 'the migration applied'",
        f"ALTER TABLE {database}.exnet_migrations COMMENT COLUMN checksum "
        "'digest of its statements when applied'",
        f"ALTER TABLE {database}.exnet_migrations COMMENT COLUMN applied_at "
        "'when exnet init applied it'",
        *_comments(database),
    ]
