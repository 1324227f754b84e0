"""The sink's tables and their columns, and the one row it builds itself: a rejection.

Facts need no building: an accepted message's value is its fact row as JSON
(``contracts.wire.fact_json``, keyed by :data:`FACT_COLUMNS`), which the
writer hands to ClickHouse as it is. Nor do the stream-written views: a
message of ``exnet.views`` is one row of the table its ``exnet-table`` header
names, every column keyed by name (:data:`VIEW_COLUMNS`); :func:`view_row`
only checks it. ``tests/sinks`` checks the column tuples here against the
migrated tables.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, NamedTuple

import orjson
import pydantic_core

from contracts import headers as H
from contracts.envelope import (
    CROSS_FIELD_ERROR,
    EVENT_ID_PATTERN,
    NODE_ID_PATTERN,
    PARTICIPANT_ID_PATTERN,
    SITE_ID_PATTERN,
    EventBase,
)
from contracts.reasons import Reason
from contracts.validation import (
    EVENT_MODELS,
    event_id_named_in,
    readable_numbers,
    site_named_in,
)
from contracts.views import MINUTES_COLUMNS, VIEW_FIGURES, VIEW_KEYS
from contracts.wire import source_origin
from exnet.metrics import VIEW_REFUSALS

__all__ = [
    "FACT_COLUMNS",
    "FACT_TABLES",
    "REJECTED_COLUMNS",
    "REJECTED_TABLE",
    "VIEW_COLUMNS",
    "Headers",
    "RefusedViewRow",
    "ViewRow",
    "rejected_row",
    "view_row",
]

Headers = Mapping[str, bytes]

_LINEAGE = ("source_topic", "source_partition", "source_offset", "ingested_at")
#: Every fact row's local time: the UTC offset the site sent, the site's local date.
_LOCAL = ("utc_offset_min", "local_date")
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
        *_LOCAL,
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
KNOWN_FIELDS: Final = frozenset(name for fields in _FIELDS.values() for name in fields)


_NODE_ID = re.compile(NODE_ID_PATTERN)


def rejected_row(value: bytes | None, headers: Headers, ingested_at: datetime) -> list[Any]:
    """The ``rejected_events`` row of one dead-letter message (original bytes + headers)."""
    detail_json = headers.get(H.DETAIL, b"{}")
    detail = _loads_object(detail_json)
    payload = value or b""
    document = _loads_object(payload)
    unknown = unknown_names(document, detail)
    if unknown:
        detail = _detail_naming(detail, unknown)
        detail_json = orjson.dumps(detail)
    source = source_origin(headers)
    # The validator's, else the one the bytes name (a message that is no JSON object):
    # a site finds its record in the work list by it.
    event_id_header = headers.get(H.EVENT_ID)
    event_id = event_id_header.decode() if event_id_header else event_id_named_in(payload)
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
        event_id,
        node_id,
        site_id,
        redacted_payload(payload, detail, unknown),
        # Of the original bytes, also when the dead-letter message holds their start only.
        headers[H.ORIGINAL_SHA256].decode()
        if H.ORIGINAL_SHA256 in headers
        else hashlib.sha256(payload).hexdigest(),
        datetime.fromisoformat(headers[H.REJECTED_AT].decode()),
        ingested_at,
    ]


#: What stands for the name of the n-th unknown field (SPEC §4): a site's member name
#: is free text too ("Ann Smith MRN 12345678": 1).
UNKNOWN_NAME: Final = "<unknown field {n}>"


def unknown_names(document: Mapping[str, Any], detail: Mapping[str, Any]) -> dict[str, str]:
    """Each member name of ``document`` that no event version has, and each name an
    ``extra_forbidden`` error's path ends in (an unknown member of a known field's
    object) -> :data:`UNKNOWN_NAME`, numbered in the order they come, from 1."""
    names = [key for key in document if key and key not in KNOWN_FIELDS]
    errors = detail.get("errors")
    for error in errors if isinstance(errors, list) else ():
        if isinstance(error, dict) and error.get("type") == "extra_forbidden":
            name = str(error.get("path", "")).split(".")[-1]
            if name and name not in KNOWN_FIELDS and name not in names:
                names.append(name)
    return {name: UNKNOWN_NAME.format(n=n) for n, name in enumerate(names, start=1)}


def _detail_naming(detail: Mapping[str, Any], unknown: Mapping[str, str]) -> dict[str, Any]:
    """``detail`` with each unknown name in its errors' paths and messages (where a
    repeated member name is quoted) replaced as ``unknown`` says, its ``message``
    made again from them (``path: message; ...``, as the validator makes it)."""
    errors: list[Any] = []
    for error in detail.get("errors") or ():
        if not isinstance(error, dict):
            errors.append(error)
            continue
        path = ".".join(unknown.get(part, part) for part in str(error.get("path", "")).split("."))
        message = str(error.get("message", ""))
        for name, stands_for in unknown.items():
            message = message.replace(repr(name), repr(stands_for))
            message = message.replace(
                orjson.dumps(name).decode(), orjson.dumps(stands_for).decode()
            )
        errors.append({**error, "path": path, "message": message})
    told = [e for e in errors if isinstance(e, dict)]
    return {
        **detail,
        "message": "; ".join(
            f"{e['path']}: {e['message']}" if e["path"] else e["message"] for e in told
        ),
        "errors": errors,
    }


def redacted_payload(
    payload: bytes, detail: Mapping[str, Any], unknown: Mapping[str, str] | None = None
) -> bytes:
    """``payload`` as analysts may read it, with :data:`REDACTED` for every value that may
    name a person (``detail``: the rejection's, whose ``reason`` and ``errors`` say
    which fields were judged and how), and each unknown field's name as ``unknown``
    says (:func:`unknown_names`; names kept when None):

    - an unknown field's value;
    - when every field was judged by its own rule (``invalid_field`` and the reasons
      checked after the fields): a failing identifier field's value, and a failing
      field's text (a string, an object or an array: ``"status": "Jane Doe DOB 1970"``)
      unless the error judged a well-formed value (a cross-field rule, a time in the
      future, an unregistered node or site, a key that is not the participant_id;
      not a time before the network's earliest date, which may be a date of
      birth typed in the wrong field); a failing number, boolean or
      null is kept: the value to fix (``"rpe": 99``);
    - when the fields were not judged (``too_large``, ``malformed_json``,
      ``unknown_schema``: another topic's event, a repeated member name): every text
      but a ``schema`` name and the pseudonymous identifiers that match their
      patterns (``node_id``, ``site_id``, ``participant_id``, ``event_id``).

    A payload that is not one JSON object cannot be told apart into fields: it is
    stored as the JSON string ``"<redacted>"`` (the original stays on the
    dead-letter topic: ``exnet rejects --original``).
    """
    document = _loads(payload)
    if not isinstance(document, dict):
        return orjson.dumps(REDACTED)
    if unknown:
        document = {unknown.get(key, key): value for key, value in document.items()}
    if detail.get("reason") in _FIELDS_NOT_JUDGED:
        return orjson.dumps(
            _writable(
                {
                    key: value if _shown_unjudged(key, value) else REDACTED
                    for key, value in document.items()
                }
            )
        )
    errors = detail.get("errors")
    malformed: set[str] = set()  # fields whose value itself broke its rule
    for error in errors if isinstance(errors, list) else ():
        if isinstance(error, dict) and error.get("type") not in _WELL_FORMED_ERRORS:
            malformed.add(str(error.get("path", "")).split(".")[0])
    return orjson.dumps(
        _writable(
            {
                key: REDACTED if _may_identify(key, value, key in malformed) else value
                for key, value in document.items()
            }
        )
    )


#: Reasons of messages whose fields were not each judged by their rules.
_FIELDS_NOT_JUDGED: Final = frozenset(
    {Reason.TOO_LARGE.value, Reason.MALFORMED_JSON.value, Reason.UNKNOWN_SCHEMA.value}
)
#: Error types that judge a well-formed value (it matched its own rule): not free text.
#: The key and the site are checked after every field passed its rule (SPEC §2's
#: order), so an unknown_site's node_id or site_id and a key_mismatch's participant_id
#: match their identifier patterns: pseudonyms, kept as SPEC §4 says.
_WELL_FORMED_ERRORS: Final = frozenset(
    {
        CROSS_FIELD_ERROR,
        Reason.KEY_MISMATCH.value,
        Reason.UNKNOWN_SITE.value,
        Reason.FUTURE_TIMESTAMP.value,
        Reason.CONFLICTING_DUPLICATE.value,
    }
)
#: Text an unjudged message may keep: a schema name, pseudonymous identifiers.
_SHOWN_UNJUDGED: Final = {
    "schema": re.compile(r"[a-z]{1,32}/[0-9]{1,6}"),
    "node_id": re.compile(NODE_ID_PATTERN),
    "site_id": re.compile(SITE_ID_PATTERN),
    "participant_id": re.compile(PARTICIPANT_ID_PATTERN),
    "event_id": re.compile(EVENT_ID_PATTERN),
}


def _shown_unjudged(key: str, value: Any) -> bool:
    if key not in KNOWN_FIELDS:
        return False
    if not isinstance(value, str | dict | list):
        return True
    pattern = _SHOWN_UNJUDGED.get(key)
    return isinstance(value, str) and pattern is not None and pattern.fullmatch(value) is not None


def _may_identify(key: str, value: Any, malformed: bool) -> bool:
    """Whether a judged field's value may name a person: any unknown field's; a failed
    identifier field's; a malformed field's text (a site's free text where an enum, a
    time or a number was due: SPEC §1 lets no free text in, so none may reach the
    analysts either)."""
    if key not in KNOWN_FIELDS:
        return True
    if not malformed:
        return False
    return key in _IDENTIFIER_FIELDS or isinstance(value, str | dict | list)


def _loads_object(data: bytes) -> dict[str, Any]:
    document = _loads(data)
    return document if isinstance(document, dict) else {}


def _loads(data: bytes) -> Any:
    """``data``'s JSON document, None when it is not JSON.

    A number beyond a double's range (``1e400``) is JSON, which orjson refuses to
    read: such a document is read as the validator reads it, by pydantic-core after
    :func:`~contracts.validation.readable_numbers` (a number of thousands of digits
    as the double it is), infinity for a number beyond a double (and an integer past
    64 bits as a Python int: see :func:`_writable`).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return pydantic_core.from_json(readable_numbers(data))
    except ValueError:
        return None


def _writable(value: Any) -> Any:
    """``value`` with each number orjson cannot write (infinite, or an integer past 64
    bits) as the double it reads as, or that double's text when it is infinite
    (``"inf"``)."""
    if isinstance(value, dict):
        return {key: _writable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_writable(item) for item in value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    try:
        number = float(value)
    except OverflowError:  # an integer of 309 digits or more
        number = math.inf if value > 0 else -math.inf
    return number if math.isfinite(number) else repr(number)


# --- the stream-written views -------------------------------------------------------

#: The stream-written view tables (SPEC §4) -> every column, in the tables' order: the
#: key columns, ``node_name`` (node_summary), the figures, then the bookkeeping.
VIEW_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    table: (
        *keys,
        *(("node_name",) if table == "node_summary" else ()),
        *VIEW_FIGURES[table],
        "updated_at",
        "version",
        "is_deleted",
    )
    for table, keys in VIEW_KEYS.items()
}

#: The reasons of a refusal (one home: the metric's label values).
_UNKNOWN_TABLE, _INVALID_ROW = VIEW_REFUSALS
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_UINT64_END: Final = 2**64


class ViewRow(NamedTuple):
    """A message of ``exnet.views`` to write: the table, and its value as it came."""

    table: str
    value: bytes


class RefusedViewRow(NamedTuple):
    """A message of ``exnet.views`` the sink does not write (a bug of its producer)."""

    #: One of :data:`exnet.metrics.VIEW_REFUSALS` (``exnet_sink_view_rows_refused_total``).
    reason: str
    #: What is wrong, for the log (no value of the row beyond its table's name).
    detail: str


def view_row(headers: Headers, value: bytes | None) -> ViewRow | RefusedViewRow:
    """Check one message of ``exnet.views`` against the table its header names.

    A row is written as it came (JSONEachRow), so everything ClickHouse would
    refuse is refused here instead: an insert that fails is retried forever,
    and one bad row would stop the whole sink. The value must be one JSON
    object holding exactly the table's columns (:data:`VIEW_COLUMNS`): key
    columns and ``node_name`` strings (``day`` as ``YYYY-MM-DD``), counts
    non-negative integers, minutes numbers, ``updated_at`` an ISO-8601 time,
    ``version`` a non-negative integer, ``is_deleted`` 0 or 1.
    """
    raw_table = headers.get(H.TABLE)
    table = raw_table.decode("utf-8", "replace") if raw_table is not None else None
    if table is None or table not in VIEW_COLUMNS:
        named = "no exnet-table header" if table is None else f"exnet-table {table[:80]!r}"
        return RefusedViewRow(_UNKNOWN_TABLE, f"{named} is not one of {sorted(VIEW_COLUMNS)}")
    problem = _view_row_problem(table, value)
    if problem is not None:
        return RefusedViewRow(_INVALID_ROW, f"{table}: {problem}")
    assert value is not None  # noqa: S101  # checked above
    return ViewRow(table, value)


def _view_row_problem(table: str, value: bytes | None) -> str | None:
    if value is None:
        return "no value (a tombstone)"
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "the value is not JSON"
    if not isinstance(row, dict):
        return "the value is not one JSON object"
    columns = VIEW_COLUMNS[table]
    if row.keys() != set(columns):
        missing = sorted(set(columns) - row.keys())
        extra = sorted(key[:40] for key in row.keys() - set(columns))
        return f"columns missing {missing}, not columns {extra}"
    keys = set(VIEW_KEYS[table]) | {"node_name"}
    for column in columns:
        cell = row[column]
        if column in keys:
            fine = isinstance(cell, str) and (column != "day" or _DAY.fullmatch(cell) is not None)
        elif column in MINUTES_COLUMNS:
            fine = isinstance(cell, int | float) and not isinstance(cell, bool)
        elif column == "updated_at":
            fine = isinstance(cell, str) and _is_time(cell)
        elif column == "is_deleted":
            fine = isinstance(cell, int) and not isinstance(cell, bool) and cell in (0, 1)
        else:  # counts and version
            fine = isinstance(cell, int) and not isinstance(cell, bool) and 0 <= cell < _UINT64_END
        if not fine:
            return f"column {column} holds {type(cell).__name__} {str(cell)[:40]!r}"
    return None


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True
