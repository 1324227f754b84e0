"""Rejected messages without a site's free text: a field that failed with text is redacted too.

Until this migration, ``payload`` kept the value of a known, non-identifier field
that failed its rule, text included (``"status": "Jane Doe DOB 1970"`` reached
the analysts), and every known field's text of a message whose fields were not
judged (``too_large``, ``malformed_json``, ``unknown_schema``). Rows written since
follow ``sinks.rows.redacted_payload``. Rows written before of those three
reasons, and ``invalid_field`` rows that hold a malformed field's text (not a
value a cross-field rule or the earliest date refused: those are well formed),
have their whole payload replaced by ``"<redacted>"``, as ``m0004`` did;
``detail`` and the original's digest stay, and ``exnet rejects --original``
still reads the original from Kafka while the topic keeps it.
"""

from __future__ import annotations

__all__ = ["statements"]

_PAYLOAD_COMMENT = (
    "the message with the values of unknown fields, of identifier fields that failed their "
    'rules and of any field whose text broke its rule replaced by "<redacted>" (a message '
    "whose fields were not judged keeps only its schema name and identifiers); not one JSON "
    'object: "<redacted>" (SPEC §4)'
)

#: The top-level field an error's path names ('' for the whole message).
_FIELD = "splitByChar('.', JSONExtractString(e, 'path'))[1]"


def statements(database: str) -> list[str]:
    table = f"{database}.rejected_events"
    return [
        f"""
ALTER TABLE {table}
UPDATE payload = '"<redacted>"'
WHERE payload != '"<redacted>"' AND (
    reason IN ('too_large', 'malformed_json', 'unknown_schema')
    OR (reason = 'invalid_field' AND arrayExists(
        e -> JSONExtractString(e, 'type') NOT IN ('cross_field', 'before_earliest_date')
            AND {_FIELD} != ''
            AND toString(JSONType(payload, {_FIELD})) IN ('String', 'Array', 'Object')
            AND JSONExtractString(payload, {_FIELD}) != '<redacted>',
        JSONExtractArrayRaw(detail, 'errors')
    ))
)
SETTINGS mutations_sync = 2
""",
        f"ALTER TABLE {table} COMMENT COLUMN payload '{_PAYLOAD_COMMENT}'",
    ]
