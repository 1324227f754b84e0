"""The envelope every event carries (SPEC §1), as the frozen base of every event model."""

from __future__ import annotations

import operator
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

__all__ = [
    "CROSS_FIELD_ERROR",
    "EVENT_ID_PATTERN",
    "NODE_ID_PATTERN",
    "OCCURRED_AT_ERROR",
    "OCCURRED_AT_EXACT_PATTERN",
    "OCCURRED_AT_INVALID",
    "OCCURRED_AT_PATTERN",
    "OCCURRED_AT_RULE",
    "PARTICIPANT_ID_PATTERN",
    "SITE_ID_PATTERN",
    "AtMostPer",
    "AtMostPerPair",
    "EventBase",
    "EventId",
    "NullUnless",
    "PlainZero",
    "SPECIAL_UUIDS",
    "OneOfPer",
    "RequiredWhen",
    "Rule",
    "NodeId",
    "occurred_at_problem",
    "utc_or_as_written",
    "ParticipantId",
    "SiteId",
    "UtcTimestamp",
    "WholeNumber",
    "cross_field_error",
]

NODE_ID_PATTERN: Final = r"^[A-Z][A-Z0-9]{1,15}$"


def _plain_zero(value: float) -> float:
    return value + 0.0  # -0.0 + 0.0 is 0.0; every other number is unchanged


#: For a number field that may be zero: ``-0`` and ``0`` are one number (SPEC §2: the
#: spelling of a number does not matter), stored, and fingerprinted, as ``0``.
PlainZero: Final = AfterValidator(_plain_zero)
SITE_ID_PATTERN: Final = r"^[A-Z][A-Z0-9]{1,15}-[A-Z0-9]{1,15}$"
PARTICIPANT_ID_PATTERN: Final = r"^P-[0-9a-f]{10,64}$"
#: A UUID in its standard 8-4-4-4-12 hex form, either case (stored lower-case).
EVENT_ID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
#: A year from 0001 to 9999, every year ``datetime`` holds.
_YEAR: Final = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
#: ``Z`` or ``+hh:mm``/``-hh:mm`` from ``-12:00`` to ``+14:00``, but ``-00:00``: RFC 3339
#: (4.3) gives it the meaning "offset unknown", i.e. a naive time.
_UTC_OFFSET: Final = (
    r"(?:Z|\+(?:0[0-9]|1[0-3]):[0-5][0-9]|\+14:00"
    r"|-(?:00:(?:0[1-9]|[1-5][0-9])|0[1-9]:[0-5][0-9]|1[01]:[0-5][0-9])|-12:00)"
)
#: ISO-8601 date and time with a UTC offset, ``Z`` or ``+hh:mm``/``-hh:mm`` between
#: ``-12:00`` and ``+14:00``, the offsets in use on Earth (SPEC §1).
#: Seconds and their fraction are optional, a space may stand for ``T`` (as RFC 3339
#: allows). Naive times (``-00:00`` included), bare dates, other offset forms and Unix
#: timestamps are not accepted. Years run 0001..9999, as far as ``datetime`` reaches;
#: a time whose UTC equivalent lies beyond ``datetime``'s range
#: (0001-01-01T00:30+01:00, 9999-12-31T23:30-01:00) is before the network's earliest
#: date or in the future, as the later checks say (see :func:`utc_or_as_written`).
OCCURRED_AT_PATTERN: Final = (
    rf"^{_YEAR}-[0-9]{{2}}-[0-9]{{2}}"
    r"[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?"
    rf"{_UTC_OFFSET}$"
)
#: Leap years from 0004 to 9996 in the proleptic Gregorian calendar (``datetime``'s):
#: a multiple of 4 that does not end in 00, or a multiple of 400.
_LEAP_YEAR: Final = (
    r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
)
#: :data:`OCCURRED_AT_PATTERN` narrowed to real dates and times (no February 30, no
#: leap second), as one regular expression: what the exported JSON Schemas give sites'
#: validators, which have no calendar (JSON Schema's ``format: date-time`` wants seconds
#: and takes ``23:59:60``, so the export does not use it). The platform reaches the same
#: verdict with the shorter pattern and ``datetime.fromisoformat``, which words a
#: February 30 as such.
OCCURRED_AT_EXACT_PATTERN: Final = (
    rf"^(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"|{_LEAP_YEAR}-02-29)"
    r"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,9})?)?"
    rf"{_UTC_OFFSET}$"
)
#: The error type of an ``occurred_at`` that is not in that form.
OCCURRED_AT_ERROR: Final = "datetime_utc_offset"
#: What an ``occurred_at`` must be, for a site.
OCCURRED_AT_RULE: Final = (
    "must be an ISO-8601 date and time with a UTC offset ('Z' or '+hh:mm', from -12:00 "
    "to +14:00), e.g. '2025-06-01T09:30:00+02:00'"
)
#: A date, maybe a time of day with a fraction of a second of any length after a point
#: or a comma, then anything (the offset, or what stands for it): where a site's usual
#: mistakes show.
_WRITTEN: Final = re.compile(
    rf"{_YEAR}-[0-9]{{2}}-[0-9]{{2}}"
    r"(?P<time>[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:(?P<mark>[.,])(?P<fraction>[0-9]+))?)?)?"
    r"(?P<offset>.*)"
)
#: An offset with its hours in one digit, or without the colon: +2:00, +0200, -5.
_OFFSET_MISWRITTEN: Final = re.compile(r"[+-](?:[0-9]:?[0-9]{2}|[0-9]{4}|[0-9]{1,2})")
#: An offset in the form ``+hh:mm``, its range not yet checked.
_OFFSET_WRITTEN: Final = re.compile(r"[+-][0-9]{2}:[0-9]{2}")


def occurred_at_problem(written: object) -> str:
    """The message of an ``occurred_at`` not in :data:`OCCURRED_AT_PATTERN`'s form: what
    is wrong with ``written`` where a site's usual mistakes tell (a date alone; a
    decimal comma; more than 9 digits of a second's fraction; an offset as ``+2:00``
    or ``+0200``; no offset; the offset ``-00:00``; an offset beyond -12:00..+14:00),
    then :data:`OCCURRED_AT_RULE`."""
    found = _WRITTEN.fullmatch(written) if isinstance(written, str) else None
    if found is None:
        return OCCURRED_AT_RULE
    offset, fraction = found["offset"], found["fraction"]
    if found["time"] is None and not offset:
        return f"is a date without a time of day: {OCCURRED_AT_RULE}"
    if found["mark"] == ",":
        return (
            "writes the fraction of a second after a comma: use a point "
            f"(e.g. '09:30:00.5'); {OCCURRED_AT_RULE}"
        )
    if fraction is not None and len(fraction) > 9:
        return (
            f"has {len(fraction)} digits of a second's fraction, "
            f"9 at most (nanoseconds); {OCCURRED_AT_RULE}"
        )
    if _OFFSET_MISWRITTEN.fullmatch(offset):
        return f"writes its UTC offset {offset!r}: write it '+hh:mm'; {OCCURRED_AT_RULE}"
    if found["time"] is None:
        return OCCURRED_AT_RULE
    if not offset:
        return f"has no UTC offset (a naive time): {OCCURRED_AT_RULE}"
    if _OFFSET_WRITTEN.fullmatch(offset):
        if offset == "-00:00":
            return (
                "has the offset -00:00, which means an unknown offset (RFC 3339), "
                f"i.e. a naive time: use 'Z' or '+00:00' for UTC; {OCCURRED_AT_RULE}"
            )
        minutes = int(offset[1:3]) * 60 + int(offset[4:6])
        if int(offset[4:6]) >= 60 or not -12 * 60 <= int(f"{offset[0]}1") * minutes <= 14 * 60:
            return f"has the offset {offset}, which no place uses: {OCCURRED_AT_RULE}"
    return OCCURRED_AT_RULE


#: The error type of an ``occurred_at`` in that form that is no real time (February 30).
OCCURRED_AT_INVALID: Final = "datetime_invalid"

NodeId = Annotated[str, StringConstraints(pattern=NODE_ID_PATTERN)]
SiteId = Annotated[str, StringConstraints(pattern=SITE_ID_PATTERN)]
ParticipantId = Annotated[str, StringConstraints(pattern=PARTICIPANT_ID_PATTERN)]
#: The nil and the max UUID (RFC 9562): what a failed generator writes, never an identity.
SPECIAL_UUIDS: Final = frozenset(
    {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"}
)


def _not_special(value: str) -> str:
    if value in SPECIAL_UUIDS:
        raise PydanticCustomError(
            "special_uuid",
            "{value} is the nil or the max UUID, which a failed generator writes: "
            "give the event a UUID of its own",
            {"value": value},
        )
    return value


#: Lower-cased before the pattern runs, so ``ABC...`` and ``abc...`` are one identity.
EventId = Annotated[
    str,
    StringConstraints(to_lower=True, pattern=EVENT_ID_PATTERN),
    AfterValidator(_not_special),
    Field(
        json_schema_extra={
            "not": {
                "pattern": "^(0{8}-0{4}-0{4}-0{4}-0{12}|[fF]{8}-[fF]{4}-[fF]{4}-[fF]{4}-[fF]{12})$"
            }
        }
    ),
]


def utc_or_as_written(value: datetime) -> datetime:
    """An aware ``value`` in UTC; as written when its UTC equivalent lies beyond
    ``datetime``'s range (9999-12-31T23:30-01:00, 0001-01-01T00:30+01:00).

    Such a time still compares rightly with any aware time (Python compares aware
    times by their UTC offsets without converting them), so the later checks find it
    before the network's earliest date or in the future; no such time is accepted.
    """
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return value


class _UtcTimestampSchema:
    """``occurred_at``: checked, parsed and converted to UTC.

    From JSON: a string in :data:`OCCURRED_AT_PATTERN`'s form (pydantic-core's
    regex), parsed by ``datetime.fromisoformat``, a C function that pydantic-core
    calls directly, and converted by ``datetime.astimezone(UTC)`` in
    :func:`utc_or_as_written` (a time at the ends of year 0001 or 9999 has no UTC
    equivalent). (pydantic-core's own datetimes carry a tzinfo implemented in
    Rust whose conversion to UTC costs more than the rest of the event's validation.)
    From Python: an aware ``datetime`` that has a UTC equivalent, converted to UTC.
    """

    def __get_pydantic_core_schema__(
        self, source: type[Any], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        to_utc = core_schema.no_info_plain_validator_function(
            operator.methodcaller("astimezone", UTC)
        )
        from_json = core_schema.chain_schema(
            [
                core_schema.custom_error_schema(
                    core_schema.str_schema(pattern=OCCURRED_AT_PATTERN, strict=True),
                    OCCURRED_AT_ERROR,
                    custom_error_message=OCCURRED_AT_RULE,
                ),
                core_schema.custom_error_schema(
                    core_schema.no_info_plain_validator_function(datetime.fromisoformat),
                    OCCURRED_AT_INVALID,
                    custom_error_message=(
                        "is not a real date and time (a month, day, hour, minute or second "
                        "is out of range)"
                    ),
                ),
                core_schema.no_info_plain_validator_function(utc_or_as_written),
            ]
        )
        from_python = core_schema.chain_schema(
            [
                core_schema.datetime_schema(
                    strict=True, tz_constraint="aware", ge=_EARLIEST, le=_LATEST
                ),
                to_utc,
            ]
        )
        return core_schema.json_or_python_schema(
            from_json,
            from_python,
            serialization=core_schema.simple_ser_schema("datetime"),
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "pattern": OCCURRED_AT_EXACT_PATTERN,
            "description": (
                "ISO-8601 date and time with a UTC offset ('Z' or '+hh:mm', -12:00 to "
                "+14:00), seconds optional, e.g. '2025-06-01T09:30:00+02:00'"
            ),
        }


#: Python ``occurred_at`` values must have a UTC equivalent.
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
_LATEST: Final = datetime.max.replace(tzinfo=UTC)

#: An aware timestamp as SPEC §1 writes it; stored in UTC.
UtcTimestamp = Annotated[datetime, _UtcTimestampSchema()]


def _whole(value: float) -> int:
    if not value.is_integer():
        raise ValueError("not whole")
    return int(value)


@dataclass(frozen=True, slots=True)
class WholeNumber:
    """An ``int`` field as SPEC §1 and JSON Schema's ``integer`` read one, from ``ge`` to ``le``.

    Any JSON number whose value is whole: ``12``, ``12.0`` and ``1.2e1`` are the
    integer 12 (tools such as pandas write whole numbers with a fraction);
    ``12.5``, strings and booleans are not integers. An ``int`` passes without
    running Python code; only a whole number spelt with a fraction is converted
    by a Python call. The bounds are checked on the integer, with pydantic's
    own error types (``greater_than_equal``, ``less_than_equal``).
    """

    ge: int
    le: int | None = None

    def __get_pydantic_core_schema__(
        self, source: type[Any], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        integer = core_schema.union_schema(
            [
                core_schema.int_schema(strict=True),
                core_schema.chain_schema(
                    [
                        core_schema.float_schema(strict=True, allow_inf_nan=False),
                        core_schema.no_info_plain_validator_function(_whole),
                    ]
                ),
            ],
            mode="left_to_right",
            custom_error_type="int_type",  # "Input should be a valid integer"
        )
        bounded = core_schema.int_schema(strict=True, ge=self.ge, le=self.le)
        return core_schema.chain_schema([integer, bounded])

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        bounds = {"minimum": self.ge} | ({} if self.le is None else {"maximum": self.le})
        return {"type": "integer", **bounds}


#: The error type of a rule that spans fields; its context names every failing path.
CROSS_FIELD_ERROR: Final = "cross_field"


def cross_field_error(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """One error for the rules spanning fields that failed, as (field path, message) pairs.

    A model validator cannot set an error's location, so the paths travel in
    the error's context and the validator expands them (``validation.py``).
    """
    summary = "; ".join(f"{path}: {message}" for path, message in problems)
    return PydanticCustomError(CROSS_FIELD_ERROR, summary, {"problems": problems})


# --- the rules that span fields, as data ------------------------------------------------
#
# Each event type lists its rules in ``RULES``: the model checks them after its
# fields (``EventBase._rules``) and ``rule_problems`` words what a failing one
# means. Field names are the models' attribute names.


@dataclass(frozen=True, slots=True)
class _OnValue:
    """A rule on ``field`` that depends on whether ``when`` equals ``value``."""

    field: str
    when: str
    value: str


@dataclass(frozen=True, slots=True)
class RequiredWhen(_OnValue):
    """``field`` is set (not None) when ``when`` equals ``value``."""

    def holds(self, fields: Mapping[str, Any]) -> bool:
        return fields[self.when] != self.value or fields[self.field] is not None


@dataclass(frozen=True, slots=True)
class NullUnless(_OnValue):
    """``field`` is None unless ``when`` equals ``value``."""

    def holds(self, fields: Mapping[str, Any]) -> bool:
        return fields[self.when] == self.value or fields[self.field] is None


@dataclass(frozen=True, slots=True)
class OneOfPer:
    """``field`` is one of ``allowed[fields[by]]``."""

    field: str
    by: str
    allowed: Mapping[str, Collection[str]]

    def holds(self, fields: Mapping[str, Any]) -> bool:
        return fields[self.field] in self.allowed[fields[self.by]]


@dataclass(frozen=True, slots=True)
class AtMostPer:
    """``field`` is at most ``top[fields[by]]``."""

    field: str
    by: str
    top: Mapping[str, int]

    def holds(self, fields: Mapping[str, Any]) -> bool:
        return bool(fields[self.field] <= self.top[fields[self.by]])


@dataclass(frozen=True, slots=True)
class AtMostPerPair:
    """``field`` is at most ``top[fields[by[0]]][fields[by[1]]]``, where the table has a bound."""

    field: str
    by: tuple[str, str]
    top: Mapping[str, Mapping[str, float]]

    def holds(self, fields: Mapping[str, Any]) -> bool:
        bound = self.top.get(fields[self.by[0]], {}).get(fields[self.by[1]])
        return bound is None or bool(fields[self.field] <= bound)


Rule = RequiredWhen | NullUnless | OneOfPer | AtMostPer | AtMostPerPair


class EventBase(BaseModel):
    """Fields and rules shared by every event type.

    Strict: a JSON string is not a number, ``5.0`` is not an int, ``1`` is not
    a bool, a timestamp needs its UTC offset; unknown fields are invalid (no
    free text can smuggle identifiers in), and so is a field under its Python
    name instead of its wire name (``schema_`` for ``schema``).

    The rules that span fields are each event type's :attr:`RULES` (data, so
    that the compiled accepting path checks the very same rules) and its
    :meth:`rule_problems`, a pure function of the field values that words
    what fails. The model tests ``RULES`` after its fields validated (a cheap
    test, since it runs for every event) and calls ``rule_problems`` for the
    messages; the validator also runs ``rule_problems`` over a rejected
    message's readable fields, so that a rejection names every failing path.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        validate_by_alias=True,
        validate_by_name=False,
        allow_inf_nan=False,
        serialize_by_alias=True,
        # Our strings are mostly unique (ids, timestamps): caching them costs more than it saves.
        cache_strings=False,
    )

    #: ``enrollment`` etc.; set by each event type.
    EVENT_TYPE: ClassVar[str]
    #: ``enrollment/1`` etc.; set by each event type.
    SCHEMA: ClassVar[str]
    #: The fields :meth:`rule_problems` reads (by wire name).
    RULE_FIELDS: ClassVar[frozenset[str]] = frozenset()
    #: The rules that span fields, checked after the fields validated.
    RULES: ClassVar[tuple[Rule, ...]] = ()

    event_id: EventId
    occurred_at: UtcTimestamp
    node_id: NodeId
    site_id: SiteId
    participant_id: ParticipantId

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The cross-field rules that ``values`` (valid field values) break, as (path, message).

        ``values`` maps wire names to values; absent optional fields may be missing.
        """
        return []

    @model_validator(mode="after")
    def _rules(self) -> Self:
        """The quick test of :attr:`RULES`; :meth:`rule_problems` says what failed."""
        fields = self.__dict__
        for rule in self.RULES:
            if not rule.holds(fields):
                raise cross_field_error(self.rule_problems(fields))
        return self

    def row_fields(self) -> dict[str, Any]:
        """The event's fields by their wire names (``schema`` included), Python values."""
        return self.model_dump(by_alias=True)
