"""Rejected messages (SPEC §2, §4) and the network registry as tables (SPEC §3)."""

from __future__ import annotations

__all__ = ["statements"]


def statements(database: str) -> list[str]:
    return [
        f"""
CREATE TABLE IF NOT EXISTS {database}.rejected_events (
    reason LowCardinality(String) COMMENT 'reason code (SPEC §2): too_large, malformed_json, ...',
    detail String COMMENT 'JSON: {{"reason", "message", "errors": [{{"path", "type", "message"}}]}}',
    message String COMMENT 'the detail in one line: field.path: what is wrong; ...',
    source_topic LowCardinality(String) COMMENT 'topic the message was read from',
    source_partition UInt32,
    source_offset UInt64,
    event_id Nullable(String) COMMENT 'the message''s event_id, when readable',
    node_id Nullable(String) COMMENT 'the message''s node_id, when readable (for work lists)',
    site_id Nullable(String) COMMENT 'the message''s site_id, when readable (for work lists)',
    payload String COMMENT 'the original message bytes',
    rejected_at DateTime64(3, 'UTC') COMMENT 'when the stream processor rejected it',
    ingested_at DateTime64(3, 'UTC') COMMENT 'when exnet wrote the row'
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY (source_topic, source_partition, source_offset)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'every rejected message, one row per source message (read with FINAL)'
""",
        f"""
CREATE TABLE IF NOT EXISTS {database}.nodes (
    node_id String COMMENT 'registered node',
    name String COMMENT 'its name',
    loaded_at DateTime64(3, 'UTC') COMMENT 'when the registry was loaded'
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY node_id
COMMENT 'the network registry''s nodes (SPEC §3), loaded by exnet init'
""",
        f"""
CREATE TABLE IF NOT EXISTS {database}.sites (
    site_id String COMMENT 'registered site',
    node_id String COMMENT 'its node',
    name String COMMENT 'its name',
    loaded_at DateTime64(3, 'UTC') COMMENT 'when the registry was loaded'
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY site_id
COMMENT 'the network registry''s sites (SPEC §3), loaded by exnet init'
""",
    ]
