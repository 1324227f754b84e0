"""A right comment on ``rejected_events.payload``: an identifier is redacted when it failed its pattern.

``m0007`` and ``m0009`` said "identifier fields that failed their rules". Since
this migration's day the sink keeps the ``node_id`` and ``site_id`` of an
``unknown_site`` rejection and the ``participant_id`` of a ``key_mismatch``:
those checks run after every field passed its own rule (SPEC §2), so the values
are pseudonymous identifiers, shown in the same row's ``site_id`` and
``message`` anyway (SPEC §4). Rows written before keep their redaction. A comment
only: no data changes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["statements"]

_PAYLOAD_COMMENT: Final = (
    "the message with each unknown field named <unknown field n> and its value, the values "
    "of identifier fields that failed their patterns and of any field whose text or time "
    'before the earliest date broke its rule replaced by "<redacted>" (a message whose '
    "fields were not judged keeps only its schema name and identifiers); not one JSON "
    'object: "<redacted>" (SPEC §4)'
)


def statements(database: str) -> list[str]:
    return [f"ALTER TABLE {database}.rejected_events COMMENT COLUMN payload '{_PAYLOAD_COMMENT}'"]
