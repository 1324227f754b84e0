"""Every example payload goes through the real validator and ends where its file says.

Also: the examples cover what they promise (every version, every reason the
validator owns, every enum value, optional fields present and absent, offsets
and upper-case UUIDs), and the publisher's path agrees with the stream's.
"""

from __future__ import annotations

import typing
from collections import defaultdict
from typing import Any

import pytest

from contracts import EVENT_MODELS, SCHEMAS, Accepted, EventBase, Topic

from .helpers import (
    EXAMPLES,
    NOW,
    ORIGINS,
    VALIDATOR_REASONS,
    Example,
    load_examples,
    new_validator,
    rejected,
)

ALL = load_examples()
VALID = [example for example in ALL if example.valid]
INVALID = [example for example in ALL if not example.valid]
VERSIONS = {model: f"{model.EVENT_TYPE}_v{model.SCHEMA.split('/')[1]}" for model in (
    m for models in EVENT_MODELS.values() for m in models
)}  # fmt: skip
VALIDATOR = new_validator()


def _send(example: Example) -> Any:
    return VALIDATOR.validate_message(example.value, example.key, ORIGINS[example.topic], NOW)


@pytest.mark.parametrize("example", VALID, ids=[e.id for e in VALID])
def test_valid_example_is_accepted(example: Example) -> None:
    outcome = _send(example)
    assert isinstance(outcome, Accepted), f"{example.id}: {outcome!r}"
    assert outcome.topic is example.topic
    assert outcome.event_type == example.topic.event_type
    assert example.payload["schema"] == outcome.event.SCHEMA
    assert outcome.event_id == example.payload["event_id"].lower()
    assert outcome.event.occurred_at.utcoffset() is not None
    assert outcome.event.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    # Canonical JSON reads back as the same event, with the same fingerprint.
    again = VALIDATOR.validate_message(
        outcome.canonical_json(), example.key, ORIGINS[example.topic], NOW
    )
    assert isinstance(again, Accepted)
    assert again.event == outcome.event
    assert again.fingerprint() == outcome.fingerprint()


@pytest.mark.parametrize("example", VALID, ids=[e.id for e in VALID])
def test_valid_example_passes_the_publisher_check(example: Example) -> None:
    outcome = VALIDATOR.validate_record(example.value, NOW)
    assert isinstance(outcome, Accepted), f"{example.id}: {outcome!r}"
    assert outcome.topic is example.topic
    assert outcome.origin is None


@pytest.mark.parametrize("example", INVALID, ids=[e.id for e in INVALID])
def test_invalid_example_is_rejected_as_expected(example: Example) -> None:
    assert example.reason is not None
    outcome = rejected(_send(example), example.reason, *example.paths)
    assert outcome.origin == ORIGINS[example.topic]
    assert outcome.message, "a rejection says why"
    for issue in outcome.issues:
        assert issue.message and issue.type
    detail = outcome.detail()
    assert detail["reason"] == example.reason
    assert sorted(e["path"] for e in detail["errors"]) == sorted(example.paths)


def _as_the_publisher_sends_it(example: Example) -> Any:
    """The stream's verdict on the example as ``exnet publish`` would send it: keyed by
    its participant_id, on the topic its ``schema`` names (the publisher does both)."""
    payload = example.payload if isinstance(example.payload, dict) else {}
    participant = payload.get("participant_id")
    key = participant.encode() if isinstance(participant, str) else example.key
    schema = payload.get("schema")
    topic = SCHEMAS[schema][0] if isinstance(schema, str) and schema in SCHEMAS else example.topic
    return VALIDATOR.validate_message(example.value, key, ORIGINS[topic], NOW)


@pytest.mark.parametrize("example", INVALID, ids=[e.id for e in INVALID])
def test_publisher_check_agrees_with_the_stream(example: Example) -> None:
    """``validate_record`` reaches the stream's verdict on what the publisher sends: a
    message rejected for its key or its topic alone is, as a record, a valid event."""
    record = VALIDATOR.validate_record(example.value, NOW)
    sent = _as_the_publisher_sends_it(example)
    if isinstance(sent, Accepted):
        assert example.reason in ("key_mismatch", "unknown_schema"), example.id
        assert isinstance(record, Accepted), record
        assert record.event == sent.event
        return
    paths = [issue.path for issue in sent.issues]
    if sent.reason.value == "unknown_schema" and '"schema"' not in example.value.decode():
        # With no schema, the publisher cannot tell which event type's fields to judge.
        paths = ["schema"]
    rejected(record, sent.reason.value, *paths)


# --- what the examples promise ---------------------------------------------------------


def test_every_event_version_has_valid_and_invalid_examples() -> None:
    folders = {path.name for path in EXAMPLES.iterdir() if path.is_dir()}
    assert folders == set(VERSIONS.values())
    for version in VERSIONS.values():
        assert len([e for e in VALID if e.version == version]) >= 5, version
        assert len([e for e in INVALID if e.version == version]) >= 10, version


def test_examples_cover_every_reason_the_validator_owns() -> None:
    assert {example.reason for example in INVALID} == VALIDATOR_REASONS


def _literal_values(annotation: Any) -> set[Any]:
    """The values of a ``Literal`` (possibly inside ``X | None``)."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    values: set[Any] = set()
    for arg in typing.get_args(annotation):
        values |= _literal_values(arg)
    return values


@pytest.mark.parametrize("model", list(VERSIONS), ids=list(VERSIONS.values()))
def test_valid_examples_cover_every_enum_value(model: type[EventBase]) -> None:
    seen: dict[str, set[Any]] = defaultdict(set)
    for example in VALID:
        if example.version == VERSIONS[model]:
            for name, value in example.payload.items():
                seen[name].add(value)
    for name, field in model.model_fields.items():
        wire = field.alias or name
        if wire == "schema":
            continue
        missing = _literal_values(field.annotation) - seen[wire]
        if wire == "adjunct":
            missing.discard("none")  # the default; covered when absent too
            assert any("adjunct" not in e.payload for e in VALID if e.version == "enrollment_v1")
        assert not missing, f"{model.SCHEMA} {wire}: no valid example with {sorted(missing)}"


@pytest.mark.parametrize("model", list(VERSIONS), ids=list(VERSIONS.values()))
def test_valid_examples_have_optional_fields_present_and_absent(model: type[EventBase]) -> None:
    payloads = [e.payload for e in VALID if e.version == VERSIONS[model]]
    for name, field in model.model_fields.items():
        if field.is_required():
            continue
        wire = field.alias or name
        assert any(p.get(wire) is not None for p in payloads), f"{wire} never given"
        assert any(wire not in p for p in payloads), f"{wire} never left out"


@pytest.mark.parametrize("model", list(VERSIONS), ids=list(VERSIONS.values()))
def test_valid_examples_use_offsets_and_upper_case_uuids(model: type[EventBase]) -> None:
    payloads = [e.payload for e in VALID if e.version == VERSIONS[model]]
    assert any(p["occurred_at"].endswith("Z") for p in payloads)
    assert any(p["occurred_at"][-6] in "+-" for p in payloads), "no +hh:mm offset"
    assert any(p["event_id"] != p["event_id"].lower() for p in payloads), "no upper-case UUID"


def test_the_boundary_of_the_future_is_exemplified() -> None:
    names = {e.path.name for e in ALL if e.version == "session_v1"}
    assert {"attended_4_min_ahead.json", "occurred_at_6_min_ahead.json"} <= names


def test_topic_of_each_version_is_its_events_topic() -> None:
    for model, version in VERSIONS.items():
        assert SCHEMAS[model.SCHEMA][0] is Topic.for_event_type(version.rsplit("_v", 1)[0])
