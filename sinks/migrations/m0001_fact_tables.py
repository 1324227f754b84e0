"""The four fact tables: one row per accepted event (SPEC §4)."""

from __future__ import annotations

__all__ = ["statements"]

#: Recent insert blocks whose tokens are remembered, so that a replayed batch is a no-op.
_DEDUP_WINDOW = 1000

_ENVELOPE = """
    event_id String COMMENT 'the event''s identity forever (a lower-case UUID); one row per event_id when read with FINAL',
    schema LowCardinality(String) COMMENT 'contract version, e.g. session/1',
    occurred_at DateTime64(6, 'UTC') COMMENT 'when it happened, in UTC',
    node_id LowCardinality(String) COMMENT 'academic medical centre (network node)',
    site_id LowCardinality(String) COMMENT 'clinical treatment site under node_id',
    participant_id String COMMENT 'participant pseudonym (P-...); never a name or record number',"""

_LINEAGE = """
    source_topic LowCardinality(String) COMMENT 'Kafka topic the site published to',
    source_partition UInt32 COMMENT 'its partition',
    source_offset UInt64 COMMENT 'its offset: (topic, partition, offset) finds the original message',
    ingested_at DateTime64(3, 'UTC') COMMENT 'when exnet wrote the row'"""


def _fact_table(database: str, name: str, columns: str, comment: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {database}.{name} ({_ENVELOPE}{columns}{_LINEAGE}
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY event_id
SETTINGS non_replicated_deduplication_window = {_DEDUP_WINDOW}
COMMENT '{comment}'
"""


def statements(database: str) -> list[str]:
    return [
        _fact_table(
            database,
            "enrollment_events",
            """
    status LowCardinality(String) COMMENT 'screened, consented, randomized, withdrawn or completed',
    modality LowCardinality(Nullable(String)) COMMENT 'arm (aerobic, resistance, combined, control); set when randomized',
    adjunct LowCardinality(String) COMMENT 'none, psychotherapy, pharmacotherapy, nutrition_counseling or brain_stimulation',
    age_band LowCardinality(Nullable(String)) COMMENT '18-24 ... 65+',
    sex LowCardinality(Nullable(String)) COMMENT 'female, male, intersex or unknown',
    reason LowCardinality(Nullable(String)) COMMENT 'withdrawal reason, when withdrawn',""",
            "enrollment/1 events: participants screened, consented, randomized, withdrawn, completed",
        ),
        _fact_table(
            database,
            "session_events",
            """
    session_number UInt16 COMMENT '1..500',
    status LowCardinality(String) COMMENT 'attended, missed or cancelled',
    modality LowCardinality(String) COMMENT 'aerobic, resistance or combined',
    supervised Bool COMMENT 'delivered under supervision',
    duration_min Nullable(Float64) COMMENT 'minutes (0..300); set when attended',
    mean_hr_pct_max Nullable(Float64) COMMENT 'mean heart rate, % of age-predicted maximum (30..100)',
    rpe Nullable(UInt8) COMMENT 'Borg rating of perceived exertion (6..20)',
    adverse_event LowCardinality(Nullable(String)) COMMENT 'mild, moderate, severe or serious',""",
            "session/1 events: exercise sessions attended, missed or cancelled",
        ),
        _fact_table(
            database,
            "assay_events",
            """
    specimen_id String COMMENT 'the specimen',
    specimen_type LowCardinality(String) COMMENT 'serum, plasma, whole_blood, saliva, urine, pbmc or muscle',
    timepoint LowCardinality(String) COMMENT 'baseline, acute_pre, acute_post, mid, post or follow_up',
    analyte LowCardinality(String) COMMENT 'BDNF, cortisol, IL6, TNFA, CRP, serotonin, norepinephrine, kynurenine',
    value Float64 COMMENT 'as reported, in unit',
    unit LowCardinality(String) COMMENT 'as reported',
    value_canonical Float64 COMMENT 'value in the analyte''s canonical unit: compare these',
    unit_canonical LowCardinality(String) COMMENT 'the analyte''s canonical unit',
    lab_id LowCardinality(String) COMMENT 'the lab that measured it',
    batch_id Nullable(String) COMMENT 'the lab''s batch',
    below_lloq Bool COMMENT 'below the lower limit of quantification',""",
            "assay/1 events: one analyte measured in one specimen",
        ),
        _fact_table(
            database,
            "assessment_events",
            """
    instrument LowCardinality(String) COMMENT 'PHQ9 (0..27), HAMD17 (0..52), MADRS (0..60) or BDI2 (0..63)',
    score UInt8 COMMENT 'total score on the instrument',
    week UInt8 COMMENT 'weeks since baseline; 0 is baseline',""",
            "assessment/1 events: depression ratings",
        ),
    ]
