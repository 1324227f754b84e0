"""Rejected messages without the names of unknown fields or a time before the earliest date.

Until this migration, ``rejected_events`` kept the name of each unknown field as
a site sent it, in ``payload``, ``detail`` and ``message`` (``"Ann Smith MRN
12345678": 1`` reached the analysts, its value alone redacted), and the time of
an ``occurred_at`` before the network's earliest date (a date of birth typed in
the wrong field) in all three. Rows written since follow
``sinks.rows.rejected_row`` (each unknown name is ``<unknown field n>``). Rows
written before that hold an unknown name or such a time have their ``payload``
replaced by ``"<redacted>"`` and their ``message`` and ``detail`` by a line that
says why; ``exnet rejects --original`` still reads the original from Kafka while
the topic keeps it.
"""

from __future__ import annotations

from sinks.rows import KNOWN_FIELDS

__all__ = ["statements"]

_WITHHELD = (
    "withheld: it named an unknown field or a time before the earliest date, which may "
    "identify a person (exnet rejects --original shows the message)"
)


_PAYLOAD_COMMENT = (
    "the message with each unknown field named <unknown field n> and its value, the values "
    "of identifier fields that failed their rules and of any field whose text or time "
    'before the earliest date broke its rule replaced by "<redacted>" (a message whose '
    "fields were not judged keeps only its schema name and identifiers); not one JSON "
    'object: "<redacted>" (SPEC §4)'
)


def statements(database: str) -> list[str]:
    table = f"{database}.rejected_events"
    known = ", ".join(f"'{name}'" for name in sorted(KNOWN_FIELDS))
    return [
        f"""
ALTER TABLE {table}
UPDATE payload = '"<redacted>"',
       message = '{_WITHHELD}',
       detail = concat('{{"reason":"', reason, '","message":"{_WITHHELD}","errors":[]}}')
WHERE message != '{_WITHHELD}' AND (
    arrayExists(k -> k != '' AND k NOT IN ({known}), JSONExtractKeys(payload))
    OR arrayExists(
        e -> JSONExtractString(e, 'type') IN ('extra_forbidden', 'before_earliest_date'),
        JSONExtractArrayRaw(detail, 'errors')
    )
)
SETTINGS mutations_sync = 2
""",
        f"ALTER TABLE {table} COMMENT COLUMN payload '{_PAYLOAD_COMMENT}'",
    ]
