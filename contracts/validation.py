"""The pure validation stage: raw message bytes in, an accepted event or a rejection out.

Everything a message can be rejected for without state is decided here, in
SPEC §2's order: ``too_large``, ``malformed_json``, ``unknown_schema``,
``invalid_field``, ``key_mismatch``, ``unknown_site``, ``future_timestamp``.
The two duplicate outcomes need state and belong to the stream processors.

Nothing here does I/O or raises for bad input: every message gets an outcome.

pydantic is the one validator: pydantic-core reads the message (patterns,
ranges, enums and the UTC conversion run there; one Python call for the rules
that span fields), then the key, site and time checks run in Python.
Rejections take their time to say exactly what is wrong, and name every
failing field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Annotated, Any, Final, NamedTuple, Union

import orjson
import pydantic_core
from pydantic import Field, TypeAdapter, ValidationError

from contracts.assay import AssayV1
from contracts.assessment import AssessmentV1
from contracts.enrollment import EnrollmentV1
from contracts.envelope import (
    CROSS_FIELD_ERROR,
    EVENT_ID_PATTERN,
    NODE_ID_PATTERN,
    OCCURRED_AT_ERROR,
    PARTICIPANT_ID_PATTERN,
    SITE_ID_PATTERN,
    SPECIAL_UUIDS,
    EventBase,
    occurred_at_problem,
)
from contracts.reasons import Reason
from contracts.registry import DEFAULT_EARLIEST_DATE, NetworkRegistry
from contracts.session import SessionV1
from contracts.topics import INPUT_TOPICS, Topic, topic_name

__all__ = [
    "EVENT_MODELS",
    "FUTURE_TOLERANCE",
    "MAX_MESSAGE_BYTES",
    "SCHEMAS",
    "Accepted",
    "FieldIssue",
    "Origin",
    "Outcome",
    "Rejected",
    "Validator",
    "readable_numbers",
    "site_named_in",
]

#: Larger messages are rejected unread (SPEC §1: "larger than 64 KiB"; 65536 bytes pass).
MAX_MESSAGE_BYTES: Final = 64 * 1024
#: How far ``occurred_at`` may lie ahead of processing time, for clock skew (SPEC §1).
FUTURE_TOLERANCE: Final = timedelta(minutes=5)

_EVENT_ID: Final = re.compile(EVENT_ID_PATTERN)
_PARTICIPANT_ID: Final = re.compile(PARTICIPANT_ID_PATTERN)

#: Every version of each input topic's events, oldest first.
EVENT_MODELS: Final[dict[Topic, tuple[type[EventBase], ...]]] = {
    Topic.ENROLLMENT: (EnrollmentV1,),
    Topic.SESSION: (SessionV1,),
    Topic.ASSAY: (AssayV1,),
    Topic.ASSESSMENT: (AssessmentV1,),
}
#: ``schema`` value -> (topic, model).
SCHEMAS: Final[dict[str, tuple[Topic, type[EventBase]]]] = {
    model.SCHEMA: (topic, model) for topic, models in EVENT_MODELS.items() for model in models
}

#: Event type (``session``) -> its topic.
_TYPES: Final[dict[str, Topic]] = {
    model.EVENT_TYPE: topic for topic, models in EVENT_MODELS.items() for model in models
}


class Origin(NamedTuple):
    """Where a message was read: physical topic, partition, offset.

    A named tuple, not a frozen dataclass: one is built for every message, and
    a tuple costs a third as much.
    """

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class FieldIssue:
    """One failing rule: the field path (empty for the whole message) and why."""

    path: str
    message: str
    type: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "type": self.type, "message": self.message}


class Accepted:
    """A message that passed every stateless check. Immutable.

    (A hand-written class rather than a frozen dataclass: it is built for
    every accepted event, and a frozen dataclass's ``__init__`` costs twice as
    much as the rest of this stage's own work per event.)
    """

    __slots__ = ("_event", "_origin", "_topic")
    __match_args__ = ("event", "topic", "origin")

    def __init__(self, event: EventBase, topic: Topic, origin: Origin | None) -> None:
        self._event = event
        self._topic = topic
        self._origin = origin

    @property
    def event(self) -> EventBase:
        return self._event

    @property
    def topic(self) -> Topic:
        return self._topic

    @property
    def origin(self) -> Origin | None:
        return self._origin

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Accepted):
            return NotImplemented
        return (self._event, self._topic, self._origin) == (
            other._event,
            other._topic,
            other._origin,
        )

    def __hash__(self) -> int:
        return hash((self._event, self._topic, self._origin))

    def __repr__(self) -> str:
        return f"Accepted(event={self._event!r}, topic={self._topic!r}, origin={self._origin!r})"

    @property
    def event_type(self) -> str:
        return self.event.EVENT_TYPE

    @property
    def event_id(self) -> str:
        return self.event.event_id

    def canonical_json(self) -> bytes:
        """The validated event as JSON: UTC times, defaults filled in, fixed key order.

        Two messages carry the same event exactly when these bytes are equal,
        however the sites formatted or ordered them.
        """
        return self.event.__pydantic_serializer__.to_json(self.event, by_alias=True)

    def fingerprint(self, canonical: bytes | None = None) -> str:
        """A 128-bit digest of :meth:`canonical_json` (pass it when you have it): the
        event's content identity."""
        data = self.canonical_json() if canonical is None else canonical
        return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that failed a check: the reason code and every failing field path."""

    reason: Reason
    issues: tuple[FieldIssue, ...]
    origin: Origin | None
    #: The message's event_id when it could be read, for the analysts' look-ups.
    event_id: str | None = None

    @property
    def message(self) -> str:
        """One line for people: ``path: message; path: message``."""
        return "; ".join(
            f"{issue.path}: {issue.message}" if issue.path else issue.message
            for issue in self.issues
        )

    def detail(self) -> dict[str, Any]:
        """The ``exnet-detail`` header and ``rejected_events.detail`` content."""
        return {
            "reason": self.reason.value,
            "message": self.message,
            "errors": [issue.as_dict() for issue in self.issues],
        }

    def detail_json(self) -> str:
        return orjson.dumps(self.detail()).decode()


Outcome = Accepted | Rejected


def _member_named(name: str, pattern: str) -> re.Pattern[bytes]:
    """``"<name>": "<a value of pattern>"`` in a message's bytes, JSON's or Python's
    quotes; the value is the match's group 1."""
    return re.compile(
        rb"""["']%s["'][ \t\r\n]*:[ \t\r\n]*["'](%s)["']"""
        % (name.encode(), pattern.strip("^$").encode())
    )


def _first_named(member: re.Pattern[bytes], value: bytes | None) -> str | None:
    """Group 1 of ``member``'s first match in ``value``'s first 64 KiB, or None."""
    if not value:
        return None
    found = member.search(value, 0, MAX_MESSAGE_BYTES)
    return found.group(1).decode() if found is not None else None


#: ``"site_id": "N01-S02"`` in a message's bytes.
_SITE_NAMED: Final = _member_named("site_id", SITE_ID_PATTERN)


def site_named_in(value: bytes | None) -> str | None:
    """The ``site_id`` a message names, whatever else is wrong with it, or None.

    Read from the bytes (their first 64 KiB), so that a rejection is attributed
    to the site that sent it even when the message is not JSON (an object in an
    array, Python-style quotes): the first ``site_id`` member whose value has a
    site id's form, registered or not.
    """
    return _first_named(_SITE_NAMED, value)


#: ``"event_id": "<a UUID>"`` in a message's bytes.
_EVENT_ID_NAMED: Final = _member_named("event_id", EVENT_ID_PATTERN)


def event_id_named_in(value: bytes | None) -> str | None:
    """The ``event_id`` a message names, whatever else is wrong with it, or None:
    as :func:`site_named_in`, the first ``event_id`` member whose value is a UUID
    (lower-cased, as stored; not the nil or the max UUID)."""
    named = _first_named(_EVENT_ID_NAMED, value)
    return _identity(named) if named is not None else None


class _TopicContract:
    """How to read one input topic: its versions, behind one JSON parser.

    With several versions side by side, ``schema`` is the tag of a union that
    pydantic-core dispatches on; its errors' paths then start with the tag.
    """

    def __init__(self, topic: Topic, models: tuple[type[EventBase], ...]) -> None:
        self.topic = topic
        self.models = models
        self.schemas = tuple(model.SCHEMA for model in models)
        self.model_of = {model.SCHEMA: model for model in models}
        self.tagged = len(models) > 1
        #: pydantic's JSON reader for the topic's versions; raises ValidationError.
        self.parse: Callable[[bytes], EventBase]
        if self.tagged:
            union: Any = Annotated[Union[models], Field(discriminator="schema_")]  # noqa: UP007  # a runtime tuple of types
            self.parse = TypeAdapter[EventBase](union).validator.validate_json
        else:
            self.parse = models[0].__pydantic_validator__.validate_json


class Validator:
    """Validates messages against the contracts and, when given, the network registry.

    Thread-safe and reusable; build one per process. ``clock`` gives processing
    time for the ``future_timestamp`` check; a caller that handles a batch
    passes ``now`` once (``streams.validate`` does).
    """

    def __init__(
        self,
        registry: NetworkRegistry | None,
        topic_prefix: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._registry = registry
        self._node_of_site = dict(registry.node_of_site) if registry is not None else None
        self._clock = clock
        earliest = registry.earliest_date if registry is not None else DEFAULT_EARLIEST_DATE
        #: No event happened before this instant (the registry's earliest_date, UTC).
        self._earliest = datetime(earliest.year, earliest.month, earliest.day, tzinfo=UTC)
        self._contracts: dict[str, _TopicContract] = {
            topic_name(topic, topic_prefix): _TopicContract(topic, EVENT_MODELS[topic])
            for topic in INPUT_TOPICS
        }
        self._by_topic = {contract.topic: contract for contract in self._contracts.values()}
        #: site_id -> the registry's IANA time zone of the site (SPEC §3), where it gives one.
        self.site_zones: dict[str, tzinfo] = {
            site.id: zoneinfo.ZoneInfo(site.timezone)
            for _, site in (registry.sites() if registry is not None else ())
            if site.timezone is not None
        }

    def validate_message(
        self,
        value: bytes | None,
        key: bytes | None,
        origin: Origin,
        now: datetime | None = None,
    ) -> Outcome:
        """Check one Kafka message read from ``origin`` (a physical topic name);
        ``now`` is processing time (aware), by default the validator's clock."""
        contract = self._contracts.get(origin.topic)
        if contract is None:
            return _unknown_topic(origin)
        if now is None:
            now = self._clock()
        return self._validate(contract, value, key, origin, now + FUTURE_TOLERANCE, True)

    def validate_record(self, value: bytes, now: datetime | None = None) -> Outcome:
        """Check one event before it is published: its ``schema`` picks the topic.

        The key is not checked (the publisher sets it from ``participant_id``).
        """
        if len(value) > MAX_MESSAGE_BYTES:
            return _too_large(value, None)
        document = _document(value)
        if isinstance(document, FieldIssue):
            return Rejected(Reason.MALFORMED_JSON, (document,), None)
        if not isinstance(document, dict):
            return Rejected(Reason.MALFORMED_JSON, (_not_an_object(document),), None)
        schema = document.get("schema")
        known = SCHEMAS.get(schema) if isinstance(schema, str) else None
        limit = (self._clock() if now is None else now) + FUTURE_TOLERANCE
        if known is None and isinstance(schema, str) and schema.partition("/")[0] in _TYPES:
            # An unknown version of a known type ("session/9"): judged as its topic
            # judges it, so the detail names the other failing fields too.
            contract = self._by_topic[_TYPES[schema.partition("/")[0]]]
            return self._validate(contract, value, None, None, limit, False)
        if known is None:
            if (repeated := _repeated_name(value)) is not None:  # SPEC §2: malformed first
                return Rejected(Reason.MALFORMED_JSON, (repeated,), None)
            expected = " or ".join(map(repr, SCHEMAS))
            message = (
                f"missing; an exnet event carries {expected}"
                if "schema" not in document
                else f"{_shown_schema(schema)} is not a known schema ({expected})"
            )
            return Rejected(
                Reason.UNKNOWN_SCHEMA,
                (FieldIssue("schema", message, "unknown_schema"),),
                None,
                _readable_event_id(document),
            )
        return self._validate(self._by_topic[known[0]], value, None, None, limit, False)

    def _validate(
        self,
        contract: _TopicContract,
        value: bytes | None,
        key: bytes | None,
        origin: Origin | None,
        limit: datetime,
        check_key: bool,
    ) -> Outcome:
        """Every check after the topic's, in SPEC §2's order."""
        if value is None:
            return Rejected(
                Reason.MALFORMED_JSON,
                (FieldIssue("", "the message has no value (a tombstone)", "no_value"),),
                origin,
            )
        if len(value) > MAX_MESSAGE_BYTES:
            return _too_large(value, origin)
        try:
            event = contract.parse(value)
        except ValidationError as exc:
            readable = readable_numbers(value)
            if readable == value:
                return _rejection(exc, contract, value, origin, self._earliest)
            # A number of thousands of digits, which the parser refuses: read as a double.
            value = readable
            try:
                event = contract.parse(value)
            except ValidationError as again:
                return _rejection(again, contract, value, origin, self._earliest)
        # pydantic keeps the last of repeated member names. An accepted event's values
        # hold no quotes (patterns and enums), so each member name is one `"...":`
        # in the text: more of them than fields set means a name came twice.
        if len(_MEMBER.findall(value)) != len(event.__pydantic_fields_set__):
            repeated = _repeated_name(value)
            if repeated is not None:
                return Rejected(Reason.MALFORMED_JSON, (repeated,), origin, event.event_id)
        return self._after_fields(contract, event, key, origin, limit, check_key)

    def _after_fields(
        self,
        contract: _TopicContract,
        event: EventBase,
        key: bytes | None,
        origin: Origin | None,
        limit: datetime,
        check_key: bool,
    ) -> Outcome:
        """The checks after the fields': key, site, time (SPEC §2's order)."""
        fields = event.__dict__
        if fields["occurred_at"] < self._earliest:
            issue = _before_earliest(self._earliest)
            return Rejected(Reason.INVALID_FIELD, (issue,), origin, event.event_id)
        if check_key and key != fields["participant_id"].encode():
            return _key_mismatch(event, key, origin)
        node_of_site = self._node_of_site
        if node_of_site is not None and node_of_site.get(fields["site_id"]) != fields["node_id"]:
            return self._unknown_site(event, origin)
        if fields["occurred_at"] > limit:
            return _future(event, limit, origin)
        return Accepted(event, contract.topic, origin)

    def _unknown_site(self, event: EventBase, origin: Origin | None) -> Rejected:
        assert self._registry is not None  # noqa: S101  # only called with a registry
        problem = self._registry.site_problem(event.node_id, event.site_id)
        assert problem is not None  # noqa: S101  # the look-up above found a mismatch
        issue = FieldIssue(problem[0], problem[1], "unknown_site")
        return Rejected(Reason.UNKNOWN_SITE, (issue,), origin, event.event_id)


# --- rejections: off the hot path ----------------------------------------------------


#: What a schema name looks like (``session/1``, ``visit/2``: the rejected payload keeps
#: the same, ``sinks.rows``), or a slip of one of this network's (``SESSION``,
#: ``Session/1``); a ``schema`` value that does not (``Jane Doe DOB 1970``, ``Jane_Doe``)
#: is not repeated in the detail, which analysts read: it may be anything a site typed.
_SCHEMA_NAME: Final = re.compile(
    r"[a-z]{1,32}/[0-9]{1,6}|(?i:enrollment|session|assay|assessment)(?:/[0-9]{1,6})?"
)


def _shown_schema(schema: object) -> str:
    """A ``schema`` value as a detail may quote it."""
    if isinstance(schema, str) and _SCHEMA_NAME.fullmatch(schema):
        return repr(schema)
    if isinstance(schema, str):
        return f"a text of {len(schema)} characters (not shown: it names no schema)"
    kinds = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
    return f"a JSON {kinds.get(type(schema), 'null')}"


def _not_an_object(document: Any) -> FieldIssue:
    kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(document), "number"
    )
    return FieldIssue(
        "", f"a JSON {kind}, not an object: one event is one JSON object", "not_an_object"
    )


def _unknown_topic(origin: Origin) -> Rejected:
    issue = FieldIssue("", f"topic {origin.topic!r} carries no exnet events", "topic")
    return Rejected(Reason.UNKNOWN_SCHEMA, (issue,), origin)


def _too_large(value: bytes, origin: Origin | None) -> Rejected:
    issue = FieldIssue(
        "", f"{len(value)} bytes is over the limit of {MAX_MESSAGE_BYTES} bytes", "too_large"
    )
    return Rejected(Reason.TOO_LARGE, (issue,), origin)


def _key_mismatch(event: EventBase, key: bytes | None, origin: Origin | None) -> Rejected:
    if key is None:
        shown = "missing"
    elif _PARTICIPANT_ID.fullmatch(text := key.decode("utf-8", "replace")):
        shown = repr(text)
    else:  # a key that is no pseudonym may be a name: the detail reaches analysts
        shown = f"{len(key)} bytes, not a pseudonym, not shown"
    issue = FieldIssue(
        "participant_id",
        f"the message key ({shown}) must be the event's participant_id {event.participant_id!r}",
        "key_mismatch",
    )
    return Rejected(Reason.KEY_MISMATCH, (issue,), origin, event.event_id)


def _future(event: EventBase, limit: datetime, origin: Origin | None) -> Rejected:
    processing_time = limit - FUTURE_TOLERANCE
    issue = FieldIssue(
        "occurred_at",
        f"{event.occurred_at.isoformat()} is more than "
        f"{FUTURE_TOLERANCE.total_seconds() / 60:g} minutes after processing time "
        f"{processing_time.isoformat(timespec='seconds')}",
        "future_timestamp",
    )
    return Rejected(Reason.FUTURE_TIMESTAMP, (issue,), origin, event.event_id)


def _not_json(why: str, kind: str = "json_invalid") -> FieldIssue:
    return FieldIssue("", why, kind)


#: What a message may not start with (RFC 7493 2.1, I-JSON: no byte-order mark).
_BOM: Final = b"\xef\xbb\xbf"
#: Arrays and objects within one another that pydantic-core reads (it refuses deeper).
_NESTING_LIMIT: Final = 200
_TOO_DEEP: Final = FieldIssue(
    "",
    f"nested too deeply to be an event (over {_NESTING_LIMIT} arrays or objects within "
    "one another)",
    "too_deep",
)
#: What may spell a Unicode noncharacter (U+FDD0-U+FDEF, U+FFFE and U+FFFF of every
#: plane) in a JSON text: as UTF-8, or as a \\u escape (a pair of them past plane 0).
#: A cheap look at the bytes; a match is confirmed in the parsed document.
_NONCHARACTER_SPELLING: Final = re.compile(
    rb"\xef\xb7[\x90-\xaf]|\xef\xbf[\xbe\xbf]|[\xf0-\xf4][\x8f\x9f\xaf\xbf]\xbf[\xbe\xbf]"
    rb"|\\u(?:[fF][dD][dDeE][0-9a-fA-F]|[fF]{3}[eEfF]|[dD][89abAB][37bfBF][fF]\\u[dD][fF]{2}[eEfF])"
)
#: The byte-order marks of UTF-16 (little- and big-endian; UTF-32's start the same).
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")
#: A member name in a JSON text: a string followed by a colon.
_MEMBER: Final = re.compile(rb'"[ \t\r\n]*:')


#: Digits of a number's integer part past which the parsers refuse it: Python's limit on
#: converting a decimal text to an int (``sys.int_info``), which pydantic-core's reader
#: applies to every number ("number out of range") and Python's ``json`` to integers.
_NUMBER_DIGITS: Final = sys.int_info.default_max_str_digits
_TOO_MANY_DIGITS: Final = re.compile(rb"[0-9]{%d}" % (_NUMBER_DIGITS + 1))
#: A JSON string (passed over: digits in it are text), or a number whose integer part
#: has more than :data:`_NUMBER_DIGITS` digits (not in another number's fraction or
#: exponent: the look-behind).
_STRING_OR_LONG_NUMBER: Final = re.compile(
    rb'"(?:[^"\\]|\\.)*"|(?<![0-9eE.+-])-?[1-9][0-9]{%d,}(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?'
    % _NUMBER_DIGITS,
    re.DOTALL,
)
#: What stands for a number beyond a double's range: JSON readers read it as infinity.
_INFINITY: Final = b"1e400"


def _as_double(found: re.Match[bytes]) -> bytes:
    token = found.group()
    if token.startswith(b'"'):
        return token
    number = float(token)  # no digit limit on floats; beyond a double's range: +-inf
    if math.isfinite(number):  # 1 and 5,000 zeros, e-5000
        return repr(number).encode().ljust(len(token))
    return (b"-" + _INFINITY if number < 0 else _INFINITY).ljust(len(token))


def readable_numbers(value: bytes) -> bytes:
    """``value`` with each number of more than :data:`_NUMBER_DIGITS` digits before its
    point written as the double it is (``1e400``, infinity, when beyond a double's
    range), padded with spaces to its length so that positions in the text stay.

    Such a number is JSON and I-JSON (RFC 7493 only advises against numbers beyond a
    double), but the parsers refuse it; read as a double, it reaches the field rules,
    which name the field (an integer field takes no infinity, nor does ``value``).
    """
    if _TOO_MANY_DIGITS.search(value) is None:
        return value
    return _STRING_OR_LONG_NUMBER.sub(_as_double, value)


def _json_int(text: str) -> int | float:
    """An integer of JSON as Python's ``json`` reads it, but a double past the digit limit."""
    try:
        return int(text)
    except ValueError:  # over sys.int_info's digit limit
        return float(text)


def _strict_json(value: bytes) -> Any:
    """The document, read as the validator reads it but refusing NaN and Infinity.

    pydantic-core's parser takes ``NaN``/``Infinity`` (no event field accepts
    them, so such a message never passes); RFC 8259 has no such tokens, so they
    make a message ``malformed_json``. Returns a :class:`FieldIssue` when not JSON.
    """
    try:
        return pydantic_core.from_json(value, allow_inf_nan=False, cache_strings=False)
    except ValueError as exc:
        try:
            pydantic_core.from_json(value, allow_inf_nan=True, cache_strings=False)
        except ValueError:
            return _not_json(f"not JSON: {exc}")
        return _not_json(f"NaN and Infinity are not JSON numbers ({exc})", "not_a_number")


def _nul_beside_each_character(value: bytes) -> bool:
    """Whether the bytes at even or at odd positions are mostly NUL, as in UTF-16 or
    UTF-32 text of Latin letters (a line after the first starts with the NUL of the
    line break before it)."""
    if b"\x00" not in value:
        return False
    half = len(value) // 2
    return half > 0 and max(value[0::2].count(0), value[1::2].count(0)) * 4 >= half * 3


#: A position in the first line, as the parsers and :func:`_read_document` give it.
_FIRST_LINE_AT: Final = re.compile(r"\bline 1,? column (\d+)")


def _document(value: bytes) -> Any:
    """The message's JSON document, or the :class:`FieldIssue` that says why it is not
    I-JSON (RFC 7493): a byte-order mark, bytes that are not UTF-8, a lone surrogate,
    a noncharacter, data after the document, NaN or Infinity, or any other break of JSON's grammar.
    (A repeated member name: :func:`_repeated_name`.)

    A position in a message of one line is given as a column: `exnet publish`
    names each JSON Lines line by its number in the file, and "bad.jsonl:13: ...
    at line 1 column 107" read as a contradiction.
    """
    document = _read_document(value)
    if isinstance(document, FieldIssue) and b"\n" not in value:
        message = _FIRST_LINE_AT.sub(r"column \1", document.message)
        if message != document.message:
            return replace(document, message=message)
    return document


def _read_document(value: bytes) -> Any:
    """:func:`_document`, positions as line and column."""
    if not value.strip(b" \t\r\n"):  # the parser would say "EOF while parsing a value"
        return _not_json(
            f"the message is empty ({len(value)} bytes"
            + (", all of them spaces or line ends" if value else "")
            + "): one JSON object per message",
            "empty",
        )
    if value.startswith(_BOM):
        return _not_json(
            "starts with a byte-order mark (U+FEFF), which I-JSON forbids: "
            "save the file as UTF-8 without BOM",
            "byte_order_mark",
        )
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        error = exc
    else:
        # pydantic-core (the stream's reader) stops at a nesting depth orjson allows;
        # only a text with that many brackets can reach it.
        if value.count(b"[") + value.count(b"{") > _NESTING_LIMIT:
            try:
                pydantic_core.from_json(value)
            except ValueError as exc:
                if "recursion" in str(exc):
                    return _TOO_DEEP
        if _NONCHARACTER_SPELLING.search(value):
            found = noncharacter(document)
            if found is not None:
                return _not_json(
                    f"a string holds the Unicode noncharacter U+{ord(found):04X}, which I-JSON "
                    "forbids",
                    "noncharacter",
                )
        return document
    if value.startswith(_UTF16_BOMS) or _nul_beside_each_character(value):
        return _not_json(
            "not UTF-8: the message looks like UTF-16 or UTF-32 (a byte-order mark, or NUL "
            "bytes beside each character): save the file as UTF-8",
            "not_utf8",
        )
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = value.count(b"\n", 0, exc.start) + 1
        column = exc.start - (value.rfind(b"\n", 0, exc.start) + 1) + 1
        return _not_json(
            f"not UTF-8: the byte {value[exc.start]:#04x} at line {line} column {column} "
            "(counted in bytes) starts no UTF-8 character: save the file as UTF-8",
            "not_utf8",
        )
    if "surrogate" in error.msg:
        return _not_json(
            f"a string holds a lone surrogate (line {error.lineno} column {error.colno}), "
            "which I-JSON forbids",
            "lone_surrogate",
        )
    if "after document" in error.msg:
        return _not_json(
            f"data after the JSON document (line {error.lineno} column {error.colno}): "
            "one JSON object per message",
            "trailing_data",
        )
    # NaN, Infinity, numbers beyond a double (1e400) or of thousands of digits, grammar
    return _strict_json(readable_numbers(value))


def noncharacter(value: Any) -> str | None:
    """The first Unicode noncharacter (U+FDD0-U+FDEF, or U+xFFFE/U+xFFFF of any plane)
    in a parsed JSON ``value``'s strings and member names, None if none: RFC 7493 2.1."""
    if isinstance(value, str):
        for char in value:
            code = ord(char)
            if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
                return char
        return None
    if isinstance(value, dict):
        value = [item for pair in value.items() for item in pair]
    if isinstance(value, list):
        for item in value:
            found = noncharacter(item)
            if found is not None:
                return found
    return None


class _RepeatedName(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _RepeatedName(name)
            seen.add(name)
    return document


def _repeated_name(value: bytes) -> FieldIssue | None:
    """The issue of a member name that appears twice in one object, if one does.

    Parsers disagree on which copy wins (pydantic and orjson keep the last), so
    I-JSON (RFC 7493 2.3) forbids it; the detail names the member.
    """
    try:
        json.loads(value, object_pairs_hook=_unique_members, parse_int=_json_int)
    except _RepeatedName as exc:
        return _not_json(
            f"the member name {exc.name!r} appears more than once in one object; I-JSON "
            "forbids it, as readers disagree on which value counts",
            "repeated_name",
        )
    except ValueError:  # not JSON: the other checks say why
        return None
    return None


def _too_deep(errors: list[Any]) -> FieldIssue | None:
    for err in errors:
        if err["type"] == "json_invalid":
            return _TOO_DEEP if "recursion" in err["msg"] else _not_json(f"not JSON: {err['msg']}")
    return None


def _path(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def _before_earliest(earliest: datetime) -> FieldIssue:
    return FieldIssue(
        "occurred_at",
        # Not the value: a date of birth typed here would reach the analysts' table.
        f"before {earliest.date().isoformat()}T00:00:00Z, the earliest date of this "
        "network's events, at midnight UTC (a typo in the year?)",
        "before_earliest_date",
    )


def _too_early(document: dict[str, Any], earliest: datetime) -> FieldIssue | None:
    """The issue of a readable ``occurred_at`` before ``earliest``, when other fields failed."""
    text = document.get("occurred_at")
    if not isinstance(text, str):
        return None
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        return None
    if instant.tzinfo is None or instant >= earliest:
        return None
    return _before_earliest(earliest)


def _rejection(
    exc: ValidationError,
    contract: _TopicContract,
    value: bytes,
    origin: Origin | None,
    earliest: datetime,
) -> Rejected:
    """Name the first failing check of SPEC §2 from the parser's errors."""
    errors = exc.errors(include_url=False, include_input=True)
    document = _document(value)
    if not isinstance(document, FieldIssue):
        unreadable = _repeated_name(value) or _too_deep(errors)
        document = unreadable if unreadable is not None else document
    if isinstance(document, FieldIssue):
        return Rejected(Reason.MALFORMED_JSON, (document,), origin)
    if not isinstance(document, dict):
        return Rejected(Reason.MALFORMED_JSON, (_not_an_object(document),), origin)

    event_id = _readable_event_id(document)
    schema = document.get("schema")
    model = contract.model_of.get(schema) if isinstance(schema, str) else None
    if model is None:
        expected = " or ".join(map(repr, contract.schemas))
        if "schema" not in document:
            message = f"missing; this topic carries {expected}"
        else:
            message = f"{_shown_schema(schema)} is not this topic's schema ({expected})"
        issue = FieldIssue("schema", message, "unknown_schema")
        # A topic of one version judged every field by it, as a JSON Schema validator
        # given the topic's schema does: the other failing fields are named beside,
        # unless the message is another topic's event (its fields are not wrong, its
        # topic is). (Several versions' union stops at the tag: nothing else to name.)
        elsewhere = isinstance(schema, str) and _TYPES.get(schema.partition("/")[0]) not in (
            None,
            contract.topic,
        )
        beside = [] if contract.tagged or elsewhere else _field_issues(errors, tagged=False)[0]
        others = (i for i in beside if i.path != "schema")
        return Rejected(Reason.UNKNOWN_SCHEMA, (issue, *others), origin, event_id)

    issues, failing, rules_ran = _field_issues(errors, tagged=contract.tagged)
    if "occurred_at" not in failing and (too_early := _too_early(document, earliest)):
        issues.append(too_early)
    if not rules_ran:
        issues.extend(_rules_beside(model, document, failing))
    return Rejected(Reason.INVALID_FIELD, tuple(issues), origin, event_id)


def _field_issues(errors: list[Any], *, tagged: bool) -> tuple[list[FieldIssue], set[str], bool]:
    """The parser's errors as issues: (issues, the top-level fields that failed, whether
    the cross-field rules ran). ``tagged``: the paths start with the union's tag."""
    issues: list[FieldIssue] = []
    failing: set[str] = set()
    rules_ran = False
    for err in errors:
        loc = err["loc"][1:] if tagged else err["loc"]
        if err["type"] == CROSS_FIELD_ERROR:
            rules_ran = True
            problems = err.get("ctx", {}).get("problems", [])
            issues.extend(FieldIssue(path, msg, CROSS_FIELD_ERROR) for path, msg in problems)
        else:
            message = err["msg"]
            if err["type"] == OCCURRED_AT_ERROR:  # say which mistake, where it can tell
                message = occurred_at_problem(err.get("input"))
            elif err["type"] == "finite_number":  # JSON has no infinity: a literal too large
                message = f"Input should be a number, got one {_TOO_LARGE}"
            elif words := _in_words(err, loc):
                message = f"{message}: {words}"
            elif err["type"] == "extra_forbidden":  # the parser's words name no field
                message = "unknown field: this event type and version has no such field"
            elif err["type"] in _TYPE_ERRORS and "got" not in message and "input" in err:
                message = f"{message}, got {_json_kind(err['input'])}"
            issues.append(FieldIssue(_path(loc), message, err["type"]))
            if loc:
                failing.add(str(loc[0]))
    return issues, failing, rules_ran


def _in_words(err: Any, loc: tuple[Any, ...]) -> str | None:
    """What the pattern or the bounds that ``err`` (a parser's error at ``loc``) broke
    ask for, in words; None for other errors and fields."""
    if err["type"] == "string_pattern_mismatch":
        return _PATTERN_WORDS.get(err.get("ctx", {}).get("pattern"))
    if err["type"] in _RANGE_ERRORS and loc:
        return _RANGE_WORDS.get(str(loc[-1]))
    return None


#: What each identifier's pattern asks for, in words, after the parser's message (which
#: names the pattern alone: "String should match pattern '^P-[0-9a-f]{10,64}$'" for
#: "John Smith" puzzled a site's data manager, an outside check).
_PATTERN_WORDS: Final = {
    PARTICIPANT_ID_PATTERN: (
        "a pseudonym, 'P-' then 10 to 64 digits or letters a-f (P-3f9a1c0b2e), never a "
        "name or a record number"
    ),
    EVENT_ID_PATTERN: (
        "a UUID, 32 hex digits grouped 8-4-4-4-12 (1b4e28ba-2fa1-41d2-883f-0016d3cca427), "
        "made once for the event and sent with every copy of it"
    ),
    NODE_ID_PATTERN: "a node's code, a capital letter then 1 to 15 capitals or digits (N01)",
    SITE_ID_PATTERN: (
        "a site's code, its node's code, '-', then 1 to 15 capitals or digits (N01-S01)"
    ),
}

#: The parser's errors for a number outside its field's bounds.
_RANGE_ERRORS: Final = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
)

#: What a bounded number measures, in words, after the parser's bound (which names the
#: bound alone: "Input should be greater than or equal to 30" for a heart rate of 0.72,
#: a fraction where a percentage was meant, left a site's data manager guessing).
_RANGE_WORDS: Final = {
    "duration_min": "the session's length in minutes, 0 to 300 (90 for an hour and a half)",
    "mean_hr_pct_max": (
        "the mean heart rate as a percentage of the age-predicted maximum, 30 to 100 "
        "(72 for 72%, not 0.72; not beats a minute)"
    ),
    "rpe": "the Borg rating of perceived exertion, a whole number from 6 to 20",
    "week": "weeks since baseline, a whole number from 0 (baseline) to 104",
    "session_number": (
        "the session's place in the participant's programme, a whole number from 1 to 500"
    ),
}

#: The parser's errors that a value of the wrong JSON type gives: their messages
#: say what was expected, and the issue adds what came ("12" for 12, "yes" for true).
_TYPE_ERRORS: Final = frozenset(
    {
        "int_type",
        "int_parsing",
        "float_type",
        "float_parsing",
        "string_type",
        "bool_type",
        "bool_parsing",
        "uuid_type",
        "datetime_type",
        "date_type",
        "dict_type",
        "model_type",
        "list_type",
    }
)


#: A JSON number the parser read as infinite, in words: JSON has no infinity, so the
#: site wrote it finite (1e400, an integer of thousands of digits), too large for a
#: double (not "not finite", which it did not write).
_TOO_LARGE: Final = "too large to read (beyond about ±1.8e308)"

#: The JSON kinds of parsed values, in words, ``bool`` before ``int`` (its subclass).
_JSON_KINDS: Final = (
    (bool, "true or false"),
    (int, "a whole number"),
    (float, "a number with a fraction"),
    (str, "a string"),
    (dict, "an object"),
    (list, "an array"),
)


def _json_kind(value: Any) -> str:
    """What JSON value ``value`` is, in words (never the value: it may be a name)."""
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):  # 1e400, 5,000 nines
        return f"a number {_TOO_LARGE}"
    return next((words for kind, words in _JSON_KINDS if isinstance(value, kind)), "a value")


def _rules_beside(
    model: type[EventBase], document: dict[str, Any], failing: set[str]
) -> list[FieldIssue]:
    """The cross-field rules broken by the fields that did not fail themselves.

    The model stops before its rules when a field fails, so they run here over
    the valid fields alone (a failed field counts as absent), so that the
    detail names every failing path: a ``reason`` given while ``screened`` is
    named beside an unknown ``modality``. A rule whose deciding field failed
    or is missing (``status``, ``analyte``, ``unit``) cannot be judged and says
    nothing; a field already named is not named twice.
    """
    readable = {name: value for name, value in document.items() if name not in failing}
    try:
        problems = model.rule_problems(readable)
    except KeyError:  # a field a rule depends on failed or is missing
        return []
    return [
        FieldIssue(path, message, CROSS_FIELD_ERROR)
        for path, message in problems
        if path not in failing
    ]


def _readable_event_id(document: dict[str, Any]) -> str | None:
    """The message's event_id when it is a well-formed UUID (lower-cased, as stored)."""
    candidate = document.get("event_id")
    # fullmatch: Python's `$` also matches before a final newline.
    if isinstance(candidate, str) and _EVENT_ID.fullmatch(candidate):
        return _identity(candidate)
    return None


def _identity(event_id: str) -> str | None:
    """A UUID-shaped ``event_id`` as stored (lower-cased); None for the nil or the max
    UUID, which are never an identity."""
    lowered = event_id.lower()
    return None if lowered in SPECIAL_UUIDS else lowered
