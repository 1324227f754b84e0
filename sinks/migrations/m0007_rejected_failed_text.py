"""Rejected messages without a site's free text: a field that failed with text is redacted too.

Until this migration, ``payload`` kept the value of a known, non-identifier field
that failed its rule, text included: ``"status": "Jane Doe DOB 1970"`` reached
the analysts. Rows written since keep a failing number, boolean or null (the
value to fix) and redact failing text (``sinks.rows.redacted_payload``). Rows
written before that hold such text have their whole payload replaced by
``"<redacted>"``, as ``m0004`` did; ``detail`` and the original's digest stay,
and ``exnet rejects --original`` still reads the original from Kafka while the
topic keeps it.
"""

from __future__ import annotations

__all__ = ["statements"]

_PAYLOAD_COMMENT = (
    "the message with the values of unknown fields, of identifier fields that failed their "
    "rules and of any field that failed with text (a string, an object or an array) replaced "
    'by "<redacted>"; not one JSON object: "<redacted>" (SPEC §4)'
)

#: The top-level field of each failing path in ``detail`` (an empty path: the message).
_FAILED_FIELDS = (
    "arrayFilter(f -> f != '', arrayMap(e -> splitByChar('.', JSONExtractString(e, 'path'))[1], "
    "JSONExtractArrayRaw(detail, 'errors')))"
)


def statements(database: str) -> list[str]:
    table = f"{database}.rejected_events"
    return [
        f"""
ALTER TABLE {table}
UPDATE payload = '"<redacted>"'
WHERE payload != '"<redacted>"' AND arrayExists(
    f -> toString(JSONType(payload, f)) IN ('String', 'Array', 'Object')
        AND JSONExtractString(payload, f) != '<redacted>',
    {_FAILED_FIELDS}
)
SETTINGS mutations_sync = 2
""",
        f"ALTER TABLE {table} COMMENT COLUMN payload '{_PAYLOAD_COMMENT}'",
    ]
