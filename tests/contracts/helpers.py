"""Shared test data for the contract tests: valid events, the example files, a validator."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

import contracts
from contracts import (
    Accepted,
    NetworkRegistry,
    Origin,
    Outcome,
    Rejected,
    Topic,
    Validator,
    load_registry,
    topic_name,
)
from contracts.registry import DEMO_REGISTRY

#: Processing time of every test (the examples' README says so too).
NOW: Final = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EXAMPLES: Final = Path(contracts.__file__).parent / "examples"
REGISTRY: Final[NetworkRegistry] = load_registry(DEMO_REGISTRY)
#: The validator's own reasons (``conflicting_duplicate`` needs state: not the validator's).
VALIDATOR_REASONS: Final = frozenset(
    {
        "too_large",
        "malformed_json",
        "unknown_schema",
        "invalid_field",
        "key_mismatch",
        "unknown_site",
        "future_timestamp",
    }
)

#: Marks a field to leave out in :func:`event`.
DROP: Final = object()

PARTICIPANT: Final = "P-0a1b2c3d4e5f"
#: One valid event per topic, every field that matters filled in.
BASE: Final[dict[Topic, dict[str, Any]]] = {
    Topic.ENROLLMENT: {
        "schema": "enrollment/1",
        "event_id": "7d0c8a44-51b6-4c1e-9a70-3f0e2b8d6c11",
        "occurred_at": "2025-05-02T10:15:00+02:00",
        "node_id": "N01",
        "site_id": "N01-S02",
        "participant_id": PARTICIPANT,
        "status": "randomized",
        "modality": "aerobic",
        "adjunct": "psychotherapy",
        "age_band": "25-34",
        "sex": "female",
    },
    Topic.SESSION: {
        "schema": "session/1",
        "event_id": "8e1d9b55-62c7-4d2f-8b81-4f1f3c9e7d22",
        "occurred_at": "2025-05-12T07:45:00Z",
        "node_id": "N02",
        "site_id": "N02-S01",
        "participant_id": PARTICIPANT,
        "session_number": 7,
        "status": "attended",
        "modality": "combined",
        "supervised": True,
        "duration_min": 42.5,
        "mean_hr_pct_max": 71.0,
        "rpe": 13,
    },
    Topic.ASSAY: {
        "schema": "assay/1",
        "event_id": "9f2eac66-73d8-4e30-9c92-5a2a4daf8e33",
        "occurred_at": "2025-05-03T08:00:00-04:00",
        "node_id": "N03",
        "site_id": "N03-S01",
        "participant_id": PARTICIPANT,
        "specimen_id": "SP-7781",
        "specimen_type": "serum",
        "timepoint": "baseline",
        "analyte": "IL6",
        "value": 2.75,
        "unit": "pg/mL",
        "lab_id": "CYTO1",
        "batch_id": "B-17",
    },
    Topic.ASSESSMENT: {
        "schema": "assessment/1",
        "event_id": "a03fbd77-84e9-4f41-8da3-6b3b5eb09f44",
        "occurred_at": "2025-05-05T09:00:00Z",
        "node_id": "N01",
        "site_id": "N01-S01",
        "participant_id": PARTICIPANT,
        "instrument": "MADRS",
        "score": 31,
        "week": 0,
    },
}
ORIGINS: Final = {topic: Origin(topic_name(topic, ""), 3, 1042) for topic in BASE}


def event(topic: Topic, **changes: Any) -> dict[str, Any]:
    """A copy of ``BASE[topic]`` with ``changes`` applied (:data:`DROP` removes a field)."""
    document = copy.deepcopy(BASE[topic])
    for name, value in changes.items():
        if value is DROP:
            document.pop(name, None)
        else:
            document[name] = value
    return document


def new_validator() -> Validator:
    """A validator over the demo registry whose clock reads :data:`NOW`."""
    return Validator(REGISTRY, clock=lambda: NOW)


_VALIDATOR: Final = new_validator()


def send(
    value: bytes | dict[str, Any] | None,
    topic: Topic = Topic.SESSION,
    key: bytes | None | str = "participant_id",
    now: datetime = NOW,
) -> Outcome:
    """Validate one message read from ``topic`` (key: by default the payload's participant_id)."""
    if isinstance(value, dict):
        if key == "participant_id":
            key = str(value.get("participant_id", "")).encode()
        value = orjson.dumps(value)
    elif key == "participant_id":
        key = PARTICIPANT.encode()
    assert not isinstance(key, str)
    return _VALIDATOR.validate_message(value, key, ORIGINS[topic], now)


def accepted(outcome: Outcome) -> Accepted:
    assert isinstance(outcome, Accepted), f"expected Accepted, got {outcome!r}"
    return outcome


def rejected(outcome: Outcome, reason: str, *paths: str) -> Rejected:
    """Assert ``outcome`` is a rejection for ``reason`` naming exactly ``paths`` (any order)."""
    assert isinstance(outcome, Rejected), f"expected {reason}, got {outcome!r}"
    got = (outcome.reason.value, sorted(issue.path for issue in outcome.issues))
    assert got == (reason, sorted(paths)), f"{got} != {(reason, sorted(paths))}: {outcome.message}"
    return outcome


@dataclass(frozen=True)
class Example:
    """One example file, ready to send."""

    path: Path
    #: ``session_v1`` etc.
    version: str
    valid: bool
    key: bytes | None
    value: bytes
    #: The JSON payload when it is one (``payload`` or a parseable ``payload_raw``).
    payload: Any
    reason: str | None
    paths: tuple[str, ...]
    description: str

    @property
    def topic(self) -> Topic:
        return Topic.for_event_type(self.version.rsplit("_v", 1)[0])

    @property
    def id(self) -> str:
        return str(self.path.relative_to(EXAMPLES))


def _load(path: Path) -> Example:
    version, kind = path.parts[-3], path.parts[-2]
    document = json.loads(path.read_text(encoding="utf-8"))
    if kind == "valid":
        return Example(
            path, version, True, document["participant_id"].encode(), orjson.dumps(document),
            document, None, (), "",
        )  # fmt: skip
    assert kind == "invalid", path
    payload: Any = None
    if "payload" in document:
        payload = document["payload"]
        value = orjson.dumps(payload)
    elif "payload_raw" in document:
        value = document["payload_raw"].encode()
        try:
            payload = json.loads(value)
        except ValueError:
            payload = None
    else:
        value = base64.b64decode(document["payload_base64"])
    key = document["key"]
    expect = document["expect"]
    return Example(
        path,
        version,
        False,
        None if key is None else key.encode(),
        value,
        payload,
        expect["reason"],
        tuple(expect["paths"]),
        document["description"],
    )


def load_examples() -> list[Example]:
    """Every example file, in a stable order."""
    return [_load(path) for path in sorted(EXAMPLES.glob("*/*/*.json"))]
