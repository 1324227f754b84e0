"""The sink's tables and their columns, and the one row it builds itself: a rejection.

Facts need no building: an accepted message's value is its fact row as JSON
(``contracts.wire.fact_json``, keyed by :data:`FACT_COLUMNS`), which the
writer hands to ClickHouse as it is. ``tests/sinks`` checks the column
tuples here against the migrated tables.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import orjson

from contracts import headers as H
from contracts.envelope import NODE_ID_PATTERN, EventBase
from contracts.validation import EVENT_MODELS, site_named_in
from contracts.wire import source_origin

__all__ = [
    "FACT_COLUMNS",
    "FACT_TABLES",
    "REJECTED_COLUMNS",
    "REJECTED_TABLE",
    "Headers",
    "rejected_row",
]

Headers = Mapping[str, bytes]

_LINEAGE = ("source_topic", "source_partition", "source_offset", "ingested_at")
#: Lead every fact row, as in the migrations: the row's identity and its contract version.
_LEADING = ("event_id", "schema")
#: Columns the sink adds to an event type's fields: ``assay`` values in the canonical unit.
_DERIVED: Final[dict[str, tuple[str, ...]]] = {"assay": ("value_canonical", "unit_canonical")}


def _event_fields(models: tuple[type[EventBase], ...]) -> tuple[str, ...]:
    """The wire names of the fields of every version of one event type, oldest first.

    ``event_id`` and ``schema`` lead; then the envelope's other fields and the
    type's own, in the models' order (a later version's new fields last).
    """
    names = dict.fromkeys(_LEADING)
    for model in models:
        names |= dict.fromkeys(info.alias or name for name, info in model.model_fields.items())
    return tuple(names)


#: event type -> fact table.
FACT_TABLES: Final[dict[str, str]] = {
    models[0].EVENT_TYPE: f"{models[0].EVENT_TYPE}_events" for models in EVENT_MODELS.values()
}

#: event type -> the event fields that become columns, in insert order.
_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    models[0].EVENT_TYPE: _event_fields(models) for models in EVENT_MODELS.values()
}

#: event type -> insert column list of its fact table.
FACT_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    event_type: (
        *fields,
        *_DERIVED.get(event_type, ()),
        *_LINEAGE,
    )
    for event_type, fields in _FIELDS.items()
}

REJECTED_TABLE: Final = "rejected_events"
REJECTED_COLUMNS: Final = (
    "reason",
    "detail",
    "message",
    "source_topic",
    "source_partition",
    "source_offset",
    "event_id",
    "node_id",
    "site_id",
    "payload",
    "payload_sha256",
    "rejected_at",
    "ingested_at",
)
#: What stands for a value that may identify a person (SPEC §4).
REDACTED: Final = "<redacted>"
#: Fields whose values are identifiers: a value that failed its pattern may be a name,
#: a record number or a date of birth.
_IDENTIFIER_FIELDS: Final = frozenset(
    {"event_id", "participant_id", "node_id", "site_id", "specimen_id", "lab_id", "batch_id"}
)
#: Every field some event version has (by wire name).
_KNOWN_FIELDS: Final = frozenset(name for fields in _FIELDS.values() for name in fields)


_NODE_ID = re.compile(NODE_ID_PATTERN)


def rejected_row(value: bytes | None, headers: Headers, ingested_at: datetime) -> list[Any]:
    """The ``rejected_events`` row of one dead-letter message (original bytes + headers)."""
    detail_json = headers.get(H.DETAIL, b"{}")
    detail = _loads_object(detail_json)
    payload = value or b""
    document = _loads_object(payload)
    source = source_origin(headers)
    event_id = headers.get(H.EVENT_ID)
    # The site the bytes name, even when they are no JSON object (an object in an
    # array, Python-style quotes): the coordinators' work lists go by site.
    site_id = site_named_in(payload)
    node_id = document.get("node_id")
    if not (isinstance(node_id, str) and _NODE_ID.fullmatch(node_id)):
        node_id = site_id.split("-")[0] if site_id is not None else None
    return [
        headers[H.REASON].decode(),
        detail_json.decode("utf-8", "replace"),
        str(detail.get("message", "")),
        source.topic,
        source.partition,
        source.offset,
        event_id.decode() if event_id else None,
        node_id,
        site_id,
        redacted_payload(payload, detail),
        hashlib.sha256(payload).hexdigest(),
        datetime.fromisoformat(headers[H.REJECTED_AT].decode()),
        ingested_at,
    ]


def redacted_payload(payload: bytes, detail: Mapping[str, Any]) -> bytes:
    """``payload`` as analysts may read it: the values of unknown fields, and of
    identifier fields that failed their rules, replaced by :data:`REDACTED`.

    A payload that is not one JSON object cannot be told apart into fields: it is
    stored as the JSON string ``"<redacted>"`` (the original stays on the
    dead-letter topic: ``exnet rejects --original``).
    """
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, dict):
        return orjson.dumps(REDACTED)
    errors = detail.get("errors")
    failing = {
        str(error.get("path", "")).split(".")[0]
        for error in (errors if isinstance(errors, list) else ())
        if isinstance(error, dict)
    }
    redacted = {
        key: REDACTED
        if key not in _KNOWN_FIELDS or (key in _IDENTIFIER_FIELDS and key in failing)
        else value
        for key, value in document.items()
    }
    return orjson.dumps(redacted)


def _loads_object(data: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}
