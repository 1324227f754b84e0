"""Rejected messages without identifiers (SPEC §4): a redacted payload and the original's digest.

The original bytes stay on ``exnet.deadletter`` only. Rows written before this
migration kept the original payload: their digest is taken and their payload
replaced by ``"<redacted>"`` (``exnet rejects --original`` still reads them from
Kafka while the topic keeps them).
"""

from __future__ import annotations

__all__ = ["statements"]

_PAYLOAD_COMMENT = (
    "the message with the values of unknown fields and of identifier fields that failed "
    'their rules replaced by "<redacted>"; not one JSON object: "<redacted>" (SPEC §4)'
)


def statements(database: str) -> list[str]:
    table = f"{database}.rejected_events"
    return [
        f"""
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS payload_sha256 String DEFAULT ''
COMMENT 'SHA-256 (hex) of the original message bytes, which stay on exnet.deadletter only'
AFTER payload
""",
        f"""
ALTER TABLE {table}
UPDATE payload_sha256 = lower(hex(SHA256(payload))), payload = '"<redacted>"'
WHERE payload_sha256 = ''
SETTINGS mutations_sync = 2
""",
        f"ALTER TABLE {table} COMMENT COLUMN payload '{_PAYLOAD_COMMENT}'",
    ]
