"""The pure validation stage: raw message bytes in, an accepted event or a rejection out.

Everything a message can be rejected for without state is decided here, in
SPEC §2's order: ``too_large``, ``malformed_json``, ``unknown_schema``,
``invalid_field``, ``key_mismatch``, ``unknown_site``, ``future_timestamp``.
The two duplicate outcomes need state and belong to the stream processors.

Nothing here does I/O or raises for bad input: every message gets an outcome.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from exnet.contracts.assay import AssayV1
from exnet.contracts.assessment import AssessmentV1
from exnet.contracts.enrollment import EnrollmentV1
from exnet.contracts.envelope import CROSS_FIELD_ERROR, EVENT_ID_PATTERN, EventBase
from exnet.contracts.reasons import Reason
from exnet.contracts.registry import NetworkRegistry
from exnet.contracts.session import SessionV1
from exnet.contracts.topics import INPUT_TOPICS, Topic, topic_name

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
]

#: Larger messages are rejected unread (SPEC §1).
MAX_MESSAGE_BYTES: Final = 64 * 1024
#: How far ``occurred_at`` may lie ahead of processing time, for clock skew (SPEC §1).
FUTURE_TOLERANCE: Final = timedelta(minutes=5)

_EVENT_ID = re.compile(EVENT_ID_PATTERN)

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


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message was read: physical topic, partition, offset."""

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


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message that passed every stateless check."""

    event: EventBase
    topic: Topic
    origin: Origin | None

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

    def fingerprint(self) -> str:
        """A 128-bit digest of :meth:`canonical_json`: the event's content identity."""
        return hashlib.blake2b(self.canonical_json(), digest_size=16).hexdigest()


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


class _TopicContract:
    """How to read one input topic: its versions, behind one JSON parser."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.models = EVENT_MODELS[topic]
        self.schemas = tuple(model.SCHEMA for model in self.models)
        if len(self.models) == 1:
            self.parse: Callable[[bytes], EventBase] = self.models[0].model_validate_json
        else:  # several versions side by side: the `schema` field picks one
            adapter: TypeAdapter[Any] = TypeAdapter(self.models)
            self.parse = adapter.validate_json


class Validator:
    """Validates messages against the contracts and, when given, the network registry.

    Thread-safe and reusable; build one per process. ``clock`` gives processing
    time for the ``future_timestamp`` check (a batch may pass ``now`` instead).
    """

    def __init__(
        self,
        registry: NetworkRegistry | None,
        topic_prefix: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._contracts: dict[str, _TopicContract] = {
            topic_name(topic, topic_prefix): _TopicContract(topic) for topic in INPUT_TOPICS
        }
        self._by_topic = {contract.topic: contract for contract in self._contracts.values()}

    def validate_message(
        self,
        value: bytes | None,
        key: bytes | None,
        origin: Origin,
        now: datetime | None = None,
    ) -> Outcome:
        """Check one Kafka message read from ``origin`` (a physical topic name)."""
        contract = self._contracts.get(origin.topic)
        if contract is None:
            return Rejected(
                Reason.UNKNOWN_SCHEMA,
                (FieldIssue("", f"topic {origin.topic!r} carries no exnet events", "topic"),),
                origin,
            )
        return self._validate(contract, value, key, origin, now, check_key=True)

    def validate_record(self, value: bytes, now: datetime | None = None) -> Outcome:
        """Check one event before it is published: its ``schema`` picks the topic.

        The key is not checked (the publisher sets it from ``participant_id``).
        """
        if len(value) > MAX_MESSAGE_BYTES:
            return _too_large(value, None)
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Rejected(Reason.MALFORMED_JSON, (_not_json(str(exc)),), None)
        schema = document.get("schema") if isinstance(document, dict) else None
        known = SCHEMAS.get(schema) if isinstance(schema, str) else None
        if known is None:
            # Let the parser say what is wrong (not an object, no schema, unknown one).
            return self._validate(self._by_topic[Topic.ENROLLMENT], value, None, None, now, False)
        return self._validate(self._by_topic[known[0]], value, None, None, now, check_key=False)

    def _validate(
        self,
        contract: _TopicContract,
        value: bytes | None,
        key: bytes | None,
        origin: Origin | None,
        now: datetime | None,
        check_key: bool,
    ) -> Outcome:
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
            return _rejection(exc.errors(include_url=False), contract, value, origin)

        event_id = event.event_id
        if check_key and key != event.participant_id.encode():
            shown = "missing" if key is None else repr(key.decode("utf-8", "replace"))
            issue = FieldIssue(
                "participant_id",
                f"the message key ({shown}) must be the event's participant_id "
                f"{event.participant_id!r}",
                "key_mismatch",
            )
            return Rejected(Reason.KEY_MISMATCH, (issue,), origin, event_id)

        if self._registry is not None:
            problem = self._registry.site_problem(event.node_id, event.site_id)
            if problem is not None:
                issue = FieldIssue(problem[0], problem[1], "unknown_site")
                return Rejected(Reason.UNKNOWN_SITE, (issue,), origin, event_id)

        processing_time = now if now is not None else self._clock()
        if event.occurred_at > processing_time + FUTURE_TOLERANCE:
            issue = FieldIssue(
                "occurred_at",
                f"{event.occurred_at.isoformat()} is more than "
                f"{FUTURE_TOLERANCE.total_seconds() / 60:g} minutes after processing time "
                f"{processing_time.isoformat(timespec='seconds')}",
                "future_timestamp",
            )
            return Rejected(Reason.FUTURE_TIMESTAMP, (issue,), origin, event_id)

        return Accepted(event, contract.topic, origin)


def _too_large(value: bytes, origin: Origin | None) -> Rejected:
    issue = FieldIssue(
        "", f"{len(value)} bytes is over the limit of {MAX_MESSAGE_BYTES} bytes", "too_large"
    )
    return Rejected(Reason.TOO_LARGE, (issue,), origin)


def _not_json(why: str) -> FieldIssue:
    return FieldIssue("", f"not UTF-8 JSON: {why}", "json_invalid")


def _path(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def _rejection(
    errors: list[ErrorDetails], contract: _TopicContract, value: bytes, origin: Origin | None
) -> Rejected:
    """Name the first failing check of SPEC §2 from the parser's errors."""
    for err in errors:
        if err["type"] == "json_invalid":
            return Rejected(Reason.MALFORMED_JSON, (_not_json(err["msg"]),), origin)
        if not err["loc"] and err["type"] in {"model_type", "model_attributes_type", "dict_type"}:
            issue = FieldIssue("", "not a JSON object", "not_an_object")
            return Rejected(Reason.MALFORMED_JSON, (issue,), origin)

    event_id = _readable_event_id(value)
    expected = " or ".join(repr(schema) for schema in contract.schemas)
    for err in errors:
        if err["loc"][:1] == ("schema",):
            if err["type"] == "missing":
                message = f"missing; this topic carries {expected}"
            else:
                message = f"{err.get('input')!r} is not this topic's schema ({expected})"
            issue = FieldIssue("schema", message, "unknown_schema")
            return Rejected(Reason.UNKNOWN_SCHEMA, (issue,), origin, event_id)

    issues: list[FieldIssue] = []
    for err in errors:
        if err["type"] == CROSS_FIELD_ERROR:
            problems = err.get("ctx", {}).get("problems", [])
            issues.extend(FieldIssue(path, msg, CROSS_FIELD_ERROR) for path, msg in problems)
        else:
            issues.append(FieldIssue(_path(err["loc"]), err["msg"], err["type"]))
    return Rejected(Reason.INVALID_FIELD, tuple(issues), origin, event_id)


def _readable_event_id(value: bytes) -> str | None:
    """The message's event_id when it is a well-formed UUID (rejections only: not hot)."""
    try:
        document = orjson.loads(value)
        candidate = document["event_id"].lower()
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    return candidate if _EVENT_ID.match(candidate) else None
