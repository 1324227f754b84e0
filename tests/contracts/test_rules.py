"""Each rule of SPEC §1 and each reason of SPEC §2 the validator owns, one message per rule.

Every invalid message here breaks exactly the rule under test, so the
rejection names exactly that field's path.
"""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

import orjson
import pytest
from pydantic import Field, ValidationError

from contracts import (
    FUTURE_TOLERANCE,
    INSTRUMENT_MAX,
    MAX_MESSAGE_BYTES,
    Accepted,
    AssayV1,
    AssessmentV1,
    EnrollmentV1,
    EventBase,
    FieldIssue,
    Origin,
    Reason,
    Rejected,
    SessionV1,
    Topic,
    Validator,
)
from contracts.validation import _TopicContract

from .helpers import (
    BASE,
    DROP,
    NOW,
    ORIGINS,
    PARTICIPANT,
    REGISTRY,
    accepted,
    event,
    new_validator,
    rejected,
    send,
)

S, E, A, M = Topic.SESSION, Topic.ENROLLMENT, Topic.ASSAY, Topic.ASSESSMENT
MODELS: dict[Topic, type[EventBase]] = {E: EnrollmentV1, S: SessionV1, A: AssayV1, M: AssessmentV1}


def test_every_base_event_is_valid() -> None:
    for topic in BASE:
        assert accepted(send(event(topic), topic)).topic is topic


# --- envelope --------------------------------------------------------------------------


@pytest.mark.parametrize("topic", list(BASE))
@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("node_id", ["N01"], ["n01", "N", "01", "N0123456789ABCDEF", "N-1", " N01", "N01\n"]),
        (
            "site_id",
            ["N01-S01"],
            ["N01S01", "N01-s01", "n01-S01", "N01-", "N01-S0123456789ABCDEF", "N01-S01-X"],
        ),
        (
            "event_id",
            ["3f2504e0-4f89-41d3-9a0c-0305e82c3301", "3F2504E0-4F89-41D3-9A0C-0305E82C3301"],
            [
                "3f2504e04f8941d39a0c0305e82c3301",
                "{3f2504e0-4f89-41d3-9a0c-0305e82c3301}",
                "urn:uuid:3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                "3f2504e0-4f89-41d3-9a0c-0305e82c330",
                "3f2504e0-4f89-41d3-9a0c-0305e82c3301x",
                "gf2504e0-4f89-41d3-9a0c-0305e82c3301",
                "",
            ],
        ),
    ],
)
def test_envelope_patterns(topic: Topic, field: str, good: list[str], bad: list[str]) -> None:
    for value in good:
        changes: dict[str, Any] = {field: value}
        if field in ("node_id", "site_id"):
            changes |= {"node_id": "N01", "site_id": "N01-S01"}
        accepted(send(event(topic, **changes), topic))
    for value in bad:
        rejected(send(event(topic, **{field: value}), topic), "invalid_field", field)


@pytest.mark.parametrize(
    "pseudonym",
    ["P-0123456789", "P-" + "f" * 64, "P-deadbeef00"],
)
def test_participant_id_pseudonyms_pass(pseudonym: str) -> None:
    accepted(send(event(S, participant_id=pseudonym)))


@pytest.mark.parametrize(
    "identifier",
    [
        "Jane Doe",  # a name
        "MRN-00412345",  # a record number
        "1984-02-29",  # a date of birth
        "P-012345678",  # 9 hex digits
        "P-" + "f" * 65,
        "P-0123456789AB",  # upper-case hex
        "p-0123456789ab",
        "P_0123456789ab",
        "P-0123456789ag",
    ],
)
def test_participant_id_must_be_a_pseudonym(identifier: str) -> None:
    outcome = rejected(
        send(event(S, participant_id=identifier), key=identifier.encode()),
        "invalid_field",
        "participant_id",
    )
    assert "^P-[0-9a-f]{10,64}$" in outcome.message


def test_event_id_is_stored_lower_case() -> None:
    upper = "3F2504E0-4F89-41D3-9A0C-0305E82C3301"
    outcome = accepted(send(event(S, event_id=upper)))
    assert outcome.event_id == upper.lower()
    assert outcome.event.event_id == upper.lower()


@pytest.mark.parametrize(
    ("written", "utc"),
    [
        ("2025-05-12T07:45:00Z", datetime(2025, 5, 12, 7, 45, tzinfo=UTC)),
        ("2025-05-12T09:45:00+02:00", datetime(2025, 5, 12, 7, 45, tzinfo=UTC)),
        ("2025-05-12T02:45:00-05:00", datetime(2025, 5, 12, 7, 45, tzinfo=UTC)),
        ("2025-05-12T13:15:00+05:30", datetime(2025, 5, 12, 7, 45, tzinfo=UTC)),
        ("2025-05-12T00:30:00+01:00", datetime(2025, 5, 11, 23, 30, tzinfo=UTC)),
        ("2025-05-12T07:45:00+00:00", datetime(2025, 5, 12, 7, 45, tzinfo=UTC)),
        ("2025-05-12T07:15:00-00:30", datetime(2025, 5, 12, 7, 45, tzinfo=UTC)),
        ("2025-05-12T07:45Z", datetime(2025, 5, 12, 7, 45, tzinfo=UTC)),
        ("2025-05-12 07:45:00Z", datetime(2025, 5, 12, 7, 45, tzinfo=UTC)),
        ("2025-05-12T07:45:00.5Z", datetime(2025, 5, 12, 7, 45, 0, 500000, tzinfo=UTC)),
        ("2025-05-12T07:45:00.123456789Z", datetime(2025, 5, 12, 7, 45, 0, 123456, tzinfo=UTC)),
        ("2025-05-12T08:45:00.250+01:00", datetime(2025, 5, 12, 7, 45, 0, 250000, tzinfo=UTC)),
    ],
)
def test_occurred_at_is_normalised_to_utc(written: str, utc: datetime) -> None:
    stored = accepted(send(event(S, occurred_at=written))).event.occurred_at
    assert stored == utc
    assert stored.tzinfo is UTC
    assert stored.isoformat() == utc.isoformat()


NAIVE_TIMES = ("2025-05-12T07:45:00", "2025-05-12 07:45:00", "2025-05-12T07:45:00.123")


@pytest.mark.parametrize(
    "written",
    [
        *NAIVE_TIMES,
        "2025-05-12",  # a date
        "07:45:00Z",  # a time
        "1747035900",  # Unix seconds as a string
        "2025-05-12T07:45:00+0200",  # offset without colon
        "2025-05-12T07:45:00+02",  # offset without minutes
        "2025-05-12T07:45:00z",
        "2025-05-12t07:45:00Z",
        "2025-05-12_07:45:00Z",
        "2025-05-12T07:45:00 Z",
        "2025-05-12T07:45:00+24:00",
        "2025-05-12T07:45:00+01:60",
        "12.05.2025 07:45 +02:00",
        "2025-W20-1T07:45:00Z",
        "20250512T074500Z",
        "0000-01-01T00:00:00Z",  # no year 0 in datetime's calendar
        "10000-01-01T00:00:00Z",
        "",
    ],
)
def test_occurred_at_needs_iso_8601_with_offset(written: str) -> None:
    outcome = rejected(send(event(S, occurred_at=written)), "invalid_field", "occurred_at")
    assert outcome.issues[0].type == "datetime_utc_offset"
    assert "UTC offset" in outcome.message and "from -12:00 to +14:00" in outcome.message
    assert ("naive" in outcome.message) == (written in NAIVE_TIMES)
    if written.endswith(("+24:00", "+01:60")):
        assert f"has the offset {written[-6:]}, which no place uses" in outcome.message


@pytest.mark.parametrize("written", ["2025-06-01T12:00:00-00:00", "2025-06-01 12:00-00:00"])
def test_minus_zero_offset_is_an_unknown_offset(written: str) -> None:
    """RFC 3339 (4.3): ``-00:00`` says the offset is unknown, so the time is naive."""
    for outcome in (
        send(event(S, occurred_at=written)),
        new_validator().validate_record(orjson.dumps(event(S, occurred_at=written)), NOW),
    ):
        found = rejected(outcome, "invalid_field", "occurred_at")
        assert found.issues[0].type == "datetime_utc_offset"
        assert found.message.startswith(
            "occurred_at: has the offset -00:00, which means an unknown offset (RFC 3339), "
            "i.e. a naive time: use 'Z' or '+00:00' for UTC"
        ), found.message


def test_an_offset_beyond_the_world_s_is_named_and_not_called_naive() -> None:
    outcome = rejected(
        send(event(S, occurred_at="2025-06-01T12:04:00+15:00")), "invalid_field", "occurred_at"
    )
    assert outcome.message.startswith("occurred_at: has the offset +15:00, which no place uses")
    assert "naive" not in outcome.message


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("2025-05-12", "is a date without a time of day"),
        ("2025-05-12T07:45:00,5+02:00", "writes the fraction of a second after a comma"),
        ("2025-05-12 07:45:00,25Z", "writes the fraction of a second after a comma"),
        ("2025-05-12T07:45:00.1234567891Z", "has 10 digits of a second's fraction, 9 at most"),
        ("2025-05-12T07:45:00+2:00", "writes its UTC offset '+2:00': write it '+hh:mm'"),
        ("2025-05-12T07:45:00+0200", "writes its UTC offset '+0200': write it '+hh:mm'"),
        ("2025-05-12T07:45-05", "writes its UTC offset '-05': write it '+hh:mm'"),
    ],
)
def test_a_site_s_usual_time_mistakes_are_named(written: str, said: str) -> None:
    outcome = rejected(send(event(S, occurred_at=written)), "invalid_field", "occurred_at")
    assert outcome.issues[0].type == "datetime_utc_offset"
    assert outcome.message.startswith(f"occurred_at: {said}"), outcome.message
    assert "e.g. '2025-06-01T09:30:00+02:00'" in outcome.message


#: Times of year 9999, some of them with no UTC equivalent in ``datetime`` (past its max).
YEAR_9999 = [
    "9999-12-31T23:59:59Z",
    "9999-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-12:00",
    "9999-12-31T23:30-01:00",
    "9999-12-31 23:59:59.999999999-00:01",
]


@pytest.mark.parametrize("written", YEAR_9999)
def test_a_time_in_year_9999_is_in_the_future(written: str) -> None:
    """Well-formed, so past the field rules; its UTC equivalent, even one past what
    ``datetime`` holds, lies in the future, as 3000-01-01's does."""
    for outcome in (
        send(event(S, occurred_at=written)),
        new_validator().validate_record(orjson.dumps(event(S, occurred_at=written)), NOW),
    ):
        found = rejected(outcome, "future_timestamp", "occurred_at")
        assert found.message.startswith("occurred_at: 999"), found.message
        assert "more than 5 minutes after processing time" in found.message
    # SPEC §2's order: the site is looked up before the time.
    rejected(send(event(S, occurred_at=written, site_id=GONE)), "unknown_site", "site_id")


#: Times before year 1000, some of them with no UTC equivalent (before ``datetime.min``).
BEFORE_1000 = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:30:00+01:00",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01 00:00-12:00",
    "0400-02-29T12:00Z",  # a leap day (a multiple of 400)
    "0999-12-31T23:59:59.5+05:45",
]


@pytest.mark.parametrize("written", BEFORE_1000)
def test_a_time_before_year_1000_is_before_the_earliest_date(written: str) -> None:
    """Said as year 1000's typo is (not as a malformed time), beside other failing fields
    too, and without an exception where the time has no UTC equivalent; the time is not
    repeated (a date of birth typed there would reach the analysts' table)."""
    says = "occurred_at: before 2000-01-01T00:00:00Z, the earliest date of this network's events"
    found = rejected(send(event(S, occurred_at=written)), "invalid_field", "occurred_at")
    assert [issue.type for issue in found.issues] == ["before_earliest_date"]
    assert found.message.startswith(says) and written[:4] not in found.message
    with_rpe = send(event(S, occurred_at=written, rpe=99))
    found = rejected(with_rpe, "invalid_field", "occurred_at", "rpe")
    assert says in found.message


def test_the_earliest_date_begins_at_midnight_utc() -> None:
    """SPEC §1 says "not before the registry's earliest_date" and stores times in UTC:
    the bound is that day's midnight UTC, whatever offset the site wrote; the message
    says so, as a site that wrote 2000-01-01 at 00:30 in +01:00 was told its time was
    "before 2000-01-01" (an outside reviewer's find, 2026-12-05)."""
    accepted(send(event(S, occurred_at="2000-01-01T00:00:00Z")))
    accepted(send(event(S, occurred_at="1999-12-31T23:30:00-01:00")))
    found = rejected(
        send(event(S, occurred_at="2000-01-01T00:30:00+01:00")), "invalid_field", "occurred_at"
    )
    assert "before 2000-01-01T00:00:00Z" in found.message
    assert "midnight UTC" in found.message


@pytest.mark.parametrize(
    "written",
    [
        "2025-02-30T07:45:00Z",
        "0100-02-29T07:45:00Z",  # not a leap year (a century)
        "0003-02-29T07:45:00Z",
        "2025-13-01T07:45:00Z",
        "2025-05-12T24:00:00Z",
        "2025-05-12T07:60:00Z",
        "2025-05-12T07:45:60Z",
        "2025-00-12T07:45:00Z",
    ],
)
def test_occurred_at_must_be_a_real_time(written: str) -> None:
    outcome = rejected(send(event(S, occurred_at=written)), "invalid_field", "occurred_at")
    assert outcome.issues[0].type == "datetime_invalid"
    assert "not a real date and time" in outcome.message


@pytest.mark.parametrize("value", [1747035900, 1747035900.5, None, True, ["2025-05-12T07:45:00Z"]])
def test_occurred_at_must_be_a_string(value: Any) -> None:
    rejected(send(event(S, occurred_at=value)), "invalid_field", "occurred_at")


@pytest.mark.parametrize("topic", list(BASE))
def test_unknown_fields_are_invalid(topic: Topic) -> None:
    for name in ("notes", "name", "date_of_birth", "mrn", "Status", "schema_"):
        outcome = rejected(send(event(topic, **{name: "x"}), topic), "invalid_field", name)
        assert outcome.issues[0].type == "extra_forbidden"
        assert outcome.issues[0].message.startswith("unknown field: ")


@pytest.mark.parametrize("topic", list(BASE))
def test_every_required_field_is_required(topic: Topic) -> None:
    model = MODELS[topic]
    for name, field in model.model_fields.items():
        wire = field.alias or name
        if not field.is_required() or wire == "schema":
            continue
        outcome = rejected(send(event(topic, **{wire: DROP}), topic), "invalid_field", wire)
        assert outcome.issues[0].type == "missing"


# --- enums -----------------------------------------------------------------------------


def _enum_fields(model: type[EventBase]) -> list[tuple[str, tuple[Any, ...], bool]]:
    """(wire name, values, nullable) of every enum field except ``schema``."""
    found = []
    for name, field in model.model_fields.items():
        wire = field.alias or name
        annotation = field.annotation
        nullable = type(None) in typing.get_args(annotation)
        literal = next(
            (
                a
                for a in (annotation, *typing.get_args(annotation))
                if typing.get_origin(a) is Literal
            ),
            None,
        )
        if literal is not None and wire != "schema":
            found.append((wire, typing.get_args(literal), nullable))
    return found


ENUM_CASES = [
    (topic, wire, values, nullable)
    for topic, model in MODELS.items()
    for wire, values, nullable in _enum_fields(model)
]


def _consistent(topic: Topic, wire: str, value: Any) -> dict[str, Any]:
    """A valid event with ``wire`` set to ``value`` and the fields it depends on fitted."""
    changes: dict[str, Any] = {wire: value}
    if topic is E and wire == "status":
        changes["modality"] = "aerobic" if value == "randomized" else DROP
    if topic is E and wire == "modality" and value is None:
        changes["status"] = "consented"
    if topic is E and wire == "reason":
        changes |= {"status": "withdrawn", "modality": DROP}
    if topic is A and wire == "analyte" and value is not None:
        changes["unit"] = next(iter(_CANONICAL[value]))
    if topic is A and wire == "unit" and value is not None:
        changes["analyte"] = next(a for a, units in _CANONICAL.items() if value in units)
    if topic is M and wire == "instrument":
        changes["score"] = 0
    return event(topic, **changes)


_CANONICAL = {
    "BDNF": ("ng/mL", "pg/mL"),
    "cortisol": ("nmol/L", "ug/dL"),
    "IL6": ("pg/mL", "ng/mL"),
    "TNFA": ("pg/mL", "ng/mL"),
    "CRP": ("mg/L", "ng/mL"),
    "serotonin": ("ng/mL", "nmol/L"),
    "norepinephrine": ("pg/mL", "nmol/L"),
    "kynurenine": ("nmol/L", "ng/mL"),
}


@pytest.mark.parametrize(
    ("topic", "wire", "values", "nullable"),
    ENUM_CASES,
    ids=[f"{t.event_type}.{w}" for t, w, _, _ in ENUM_CASES],
)
def test_enum_accepts_each_value_and_nothing_else(
    topic: Topic, wire: str, values: tuple[Any, ...], nullable: bool
) -> None:
    for value in values:
        outcome = accepted(send(_consistent(topic, wire, value), topic))
        assert getattr(outcome.event, wire) == value
    if nullable:
        accepted(send(_consistent(topic, wire, None), topic))
    else:
        rejected(send(_consistent(topic, wire, None) | {wire: None}, topic), "invalid_field", wire)
    for wrong in ("bogus", values[0].upper() + "x", 1, True, [values[0]]):
        refused = rejected(send(event(topic, **{wire: wrong}), topic), "invalid_field", wire)
        assert "Input should be" in refused.message


def test_spec_enums_are_the_models_enums() -> None:
    spec = {
        (E, "status"): {"screened", "consented", "randomized", "withdrawn", "completed"},
        (E, "modality"): {"aerobic", "resistance", "combined", "control"},
        (E, "adjunct"): {
            "none", "psychotherapy", "pharmacotherapy", "nutrition_counseling", "brain_stimulation"
        },
        (E, "age_band"): {"18-24", "25-34", "35-44", "45-54", "55-64", "65+"},
        (E, "sex"): {"female", "male", "intersex", "unknown"},
        (E, "reason"): {
            "adverse_event", "lost_to_follow_up", "participant_choice", "investigator_decision",
            "other",
        },
        (S, "status"): {"attended", "missed", "cancelled"},
        (S, "modality"): {"aerobic", "resistance", "combined"},
        (S, "adverse_event"): {"mild", "moderate", "severe", "serious"},
        (A, "specimen_type"): {
            "serum", "plasma", "whole_blood", "saliva", "urine", "pbmc", "muscle"
        },
        (A, "timepoint"): {"baseline", "acute_pre", "acute_post", "mid", "post", "follow_up"},
        (A, "analyte"): {
            "BDNF", "cortisol", "IL6", "TNFA", "CRP", "serotonin", "norepinephrine", "kynurenine"
        },
        (A, "unit"): {"pg/mL", "ng/mL", "ug/dL", "mg/L", "nmol/L"},
        (M, "instrument"): {"PHQ9", "HAMD17", "MADRS", "BDI2"},
    }  # fmt: skip
    found = {(topic, wire): set(values) for topic, wire, values, _ in ENUM_CASES}
    assert found == spec


# --- cross-field rules -----------------------------------------------------------------

STATUSES = ("screened", "consented", "randomized", "withdrawn", "completed")


@pytest.mark.parametrize("status", STATUSES)
def test_modality_is_required_exactly_when_randomized(status: str) -> None:
    with_arm = event(E, status=status, modality="combined")
    without = event(E, status=status, modality=DROP)
    null_arm = event(E, status=status, modality=None)
    if status == "randomized":
        accepted(send(with_arm, E))
        for message in (without, null_arm):
            outcome = rejected(send(message, E), "invalid_field", "modality")
            assert "required when status is 'randomized'" in outcome.message
    else:
        accepted(send(without, E))
        accepted(send(null_arm, E))
        outcome = rejected(send(with_arm, E), "invalid_field", "modality")
        assert "must be null or absent unless status is 'randomized'" in outcome.message


@pytest.mark.parametrize("status", STATUSES)
def test_withdrawal_reason_only_when_withdrawn(status: str) -> None:
    arm = "aerobic" if status == "randomized" else DROP
    with_reason = event(E, status=status, modality=arm, reason="participant_choice")
    if status == "withdrawn":
        assert accepted(send(with_reason, E)).event.reason == "participant_choice"  # type: ignore[attr-defined]
    else:
        outcome = rejected(send(with_reason, E), "invalid_field", "reason")
        assert "unless status is 'withdrawn'" in outcome.message
    accepted(send(event(E, status=status, modality=arm, reason=None), E))
    accepted(send(event(E, status=status, modality=arm, reason=DROP), E))


@pytest.mark.parametrize("status", ["attended", "missed", "cancelled"])
def test_duration_is_required_when_attended(status: str) -> None:
    accepted(send(event(S, status=status, duration_min=0)))
    for absent in (DROP, None):
        message = event(S, status=status, duration_min=absent)
        if status == "attended":
            outcome = rejected(send(message), "invalid_field", "duration_min")
            assert outcome.message == "duration_min: required when status is 'attended'"
        else:
            accepted(send(message))


@pytest.mark.parametrize(("instrument", "top"), sorted(INSTRUMENT_MAX.items()))
def test_score_range_per_instrument(instrument: str, top: int) -> None:
    assert {"PHQ9": 27, "HAMD17": 52, "MADRS": 60, "BDI2": 63}[instrument] == top  # SPEC §1
    for score in (0, 1, top - 1, top):
        accepted(send(event(M, instrument=instrument, score=score), M))
    outcome = rejected(
        send(event(M, instrument=instrument, score=top + 1), M), "invalid_field", "score"
    )
    assert outcome.message == f"score: {instrument} scores run 0..{top}"
    rejected(send(event(M, instrument=instrument, score=-1), M), "invalid_field", "score")
    huge = orjson.dumps(event(M, instrument=instrument, score=123456789))
    huge = huge.replace(b"123456789", b"1" + b"0" * 30)
    rejected(send(huge, M), "invalid_field", "score")


def test_cross_field_and_field_failures_are_named_together() -> None:
    # The model stops before its cross-field rules when a field fails; the detail still names both.
    rejected(send(event(S, duration_min=DROP, rpe=30)), "invalid_field", "duration_min", "rpe")
    rejected(
        send(event(M, instrument="PHQ9", score=28, week=105), M), "invalid_field", "score", "week"
    )
    rejected(send(event(A, unit="mg/L", lab_id="?"), A), "invalid_field", "unit", "lab_id")
    rejected(
        send(event(E, status="screened", reason="other", sex="x"), E),
        "invalid_field",
        "modality",
        "reason",
        "sex",
    )


def test_a_cross_field_rule_over_a_failing_field_is_not_guessed() -> None:
    # With the status itself invalid, modality's rule cannot be judged: only status is named.
    rejected(send(event(E, status="enrolled"), E), "invalid_field", "status")
    rejected(send(event(S, status="late", duration_min=DROP)), "invalid_field", "status")
    rejected(send(event(A, analyte="IL-6"), A), "invalid_field", "analyte")
    rejected(send(event(M, instrument="PHQ-9", score=40), M), "invalid_field", "instrument")
    rejected(send(event(M, score=28.5), M), "invalid_field", "score")


# --- numbers ---------------------------------------------------------------------------

RANGES = [
    # (topic, field, inside, outside)
    (S, "session_number", [1, 2, 250, 499, 500], [0, -1, 501, 10**6]),
    (S, "duration_min", [0, 0.0, 0.5, 45, 299.99, 300, 300.0], [-0.01, -1, 300.01, 301, 1e9]),
    (S, "mean_hr_pct_max", [30, 30.0, 64.5, 100, 100.0], [29.99, 0, 100.01, 220]),
    (S, "rpe", [6, 13, 20], [5, 0, 21, -6]),
    (A, "value", [0, 0.0, 1e-12, 2.75, 1e9, 1e300], [-0.0001, -1, -1e300]),
    (M, "week", [0, 1, 52, 104], [-1, 105, 1000]),
]


@pytest.mark.parametrize(
    ("topic", "field", "inside", "outside"), RANGES, ids=[r[1] for r in RANGES]
)
def test_numeric_ranges(topic: Topic, field: str, inside: list[Any], outside: list[Any]) -> None:
    for value in inside:
        stored = getattr(accepted(send(event(topic, **{field: value}), topic)).event, field)
        assert stored == value
    for value in outside:
        outcome = rejected(send(event(topic, **{field: value}), topic), "invalid_field", field)
        assert outcome.issues[0].type in {"greater_than_equal", "less_than_equal"}


INTS = [(S, "session_number", 5), (S, "rpe", 12), (M, "score", 12), (M, "week", 4)]
NUMBERS = [(S, "duration_min", 45), (S, "mean_hr_pct_max", 70), (A, "value", 2)]
BOOLS = [(S, "supervised"), (A, "below_lloq")]


@pytest.mark.parametrize(("topic", "field", "value"), INTS, ids=[f for _, f, _ in INTS])
def test_ints_are_ints(topic: Topic, field: str, value: int) -> None:
    accepted(send(event(topic, **{field: value}), topic))
    # SPEC §1: any JSON number whose value is whole is the integer, however spelt.
    for spelling in (f"{value}.0", f"{value}.000", f"{value / 10}e1", f"{value * 10}E-1"):
        document = event(topic, **{field: 999_999})
        message = orjson.dumps(document).replace(b"999999", spelling.encode())
        stored = getattr(accepted(send(message, topic)).event, field)
        assert stored == value and type(stored) is int, spelling
        assert (
            accepted(send(message, topic)).fingerprint()
            == accepted(send(event(topic, **{field: value}), topic)).fingerprint()
        )
    for wrong in (value + 0.5, value + 1e-9, str(value), True, None if field != "rpe" else "x"):
        rejected(send(event(topic, **{field: wrong}), topic), "invalid_field", field)


@pytest.mark.parametrize(("topic", "field", "value"), NUMBERS, ids=[f for _, f, _ in NUMBERS])
def test_numbers_are_numbers(topic: Topic, field: str, value: int) -> None:
    assert getattr(accepted(send(event(topic, **{field: value}), topic)).event, field) == value
    assert isinstance(
        getattr(accepted(send(event(topic, **{field: value}), topic)).event, field), float
    )
    for wrong in (str(value), f"{value}.0", True, False, [value], {"value": value}):
        outcome = rejected(send(event(topic, **{field: wrong}), topic), "invalid_field", field)
        assert outcome.issues[0].type in {"float_type"}


@pytest.mark.parametrize(("topic", "field"), BOOLS, ids=[f for _, f in BOOLS])
def test_bools_are_bools(topic: Topic, field: str) -> None:
    for value in (True, False):
        assert getattr(accepted(send(event(topic, **{field: value}), topic)).event, field) is value
    for wrong in (1, 0, "true", "false", "yes", 1.0):
        outcome = rejected(send(event(topic, **{field: wrong}), topic), "invalid_field", field)
        assert outcome.issues[0].type == "bool_type"


def _raw(topic: Topic, field: str, literal: str) -> bytes:
    """The base event with ``field``'s value written as ``literal`` (not valid Python JSON)."""
    document = orjson.dumps(event(topic, **{field: 123456789}))
    return document.replace(b"123456789", literal.encode())


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "1e309"])
def test_value_must_be_finite(literal: str) -> None:
    outcome = rejected(send(_raw(A, "value", literal), A), "invalid_field", "value")
    assert outcome.issues[0].type == "finite_number"
    assert outcome.message == (
        "value: Input should be a number, got one too large to read (beyond about ±1.8e308)"
    )


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "1e309"])
@pytest.mark.parametrize(("topic", "field"), [(S, "session_number"), (S, "rpe"), (M, "score")])
def test_an_int_field_says_a_number_read_as_infinite_is_too_large(
    topic: Topic, field: str, literal: str
) -> None:
    """1e400 reads as infinity, which has no fraction: not "a number with a fraction";
    nor "not finite", which the site did not write."""
    outcome = rejected(send(_raw(topic, field, literal), topic), "invalid_field", field)
    assert outcome.message == (
        f"{field}: Input should be a valid integer, got a number too large to read "
        "(beyond about ±1.8e308)"
    )


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(literal: str) -> None:
    outcome = rejected(send(_raw(A, "value", literal), A), "malformed_json", "")
    assert "NaN and Infinity are not JSON numbers" in outcome.message
    rejected(new_validator().validate_record(_raw(A, "value", literal), NOW), "malformed_json", "")


def test_huge_integers_are_numbers_out_of_range() -> None:
    rejected(send(_raw(S, "session_number", "1" + "0" * 40)), "invalid_field", "session_number")
    accepted(send(_raw(A, "value", "1" + "0" * 40), A))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("specimen_id", "SP-1"),
        ("specimen_id", "a" * 64),
        ("specimen_id", "sp-2025-0001-b"),
        ("lab_id", "L1"),
        ("lab_id", "L" * 32),
        ("lab_id", "n01-biobank"),
        ("batch_id", "B"),
        ("batch_id", "b" * 64),
    ],
)
def test_assay_identifier_patterns_accept(field: str, value: str) -> None:
    accepted(send(event(A, **{field: value}), A))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("specimen_id", "SP1"),
        ("specimen_id", "a" * 65),
        ("specimen_id", "SP_0001"),
        ("specimen_id", "SP 0001"),
        ("specimen_id", "SP-0001é"),
        ("specimen_id", 12345),
        ("lab_id", "L"),
        ("lab_id", "L" * 33),
        ("lab_id", "LAB 1"),
        ("lab_id", "LAB/1"),
        ("batch_id", ""),
        ("batch_id", "b" * 65),
        ("batch_id", 17),
    ],
)
def test_assay_identifier_patterns_reject(field: str, value: Any) -> None:
    rejected(send(event(A, **{field: value}), A), "invalid_field", field)


# --- schema ----------------------------------------------------------------------------


@pytest.mark.parametrize("topic", list(BASE))
def test_schema_missing_unknown_or_of_another_topic(topic: Topic) -> None:
    own = BASE[topic]["schema"]
    others = [BASE[t]["schema"] for t in BASE if t is not topic]
    outcome = rejected(send(event(topic, schema=DROP), topic), "unknown_schema", "schema")
    assert outcome.message == f"schema: missing; this topic carries {own!r}"
    for wrong in [
        own.replace("/1", "/2"),
        own.replace("/1", ""),
        own.upper(),
        "x/1",
        1,
        None,
        *others,
    ]:
        outcome = rejected(send(event(topic, schema=wrong), topic), "unknown_schema", "schema")
        shown = {1: "a JSON number", None: "a JSON null"}.get(wrong, repr(wrong))
        assert outcome.message == f"schema: {shown} is not this topic's schema ({own!r})"


@pytest.mark.parametrize("value", ["Jane Doe DOB 1970", "Jane_Doe", "JaneDoe", "Jane/1", "Doe_J/2"])
def test_a_schema_value_that_names_no_schema_is_not_repeated_in_the_detail(value: str) -> None:
    # The detail reaches the analysts' rejected_events: a site's free text stays out,
    # as it does from the payload there (an outside review quoted "Jane_Doe" so).
    outcome = rejected(send(event(S, schema=value)), "unknown_schema", "schema")
    assert "Jane" not in outcome.message and "Doe" not in outcome.message
    assert outcome.message.startswith(f"schema: a text of {len(value)} characters (not shown")


@pytest.mark.parametrize("value", ["visit/2", "SESSION", "Session/1", "assessment", "enrollment/7"])
def test_a_schema_name_or_a_slip_of_one_is_quoted(value: str) -> None:
    outcome = rejected(send(event(S, schema=value)), "unknown_schema", "schema")
    assert outcome.message == f"schema: {value!r} is not this topic's schema ('session/1')"


def test_schema_under_its_python_name_is_not_the_schema() -> None:
    message = event(S, schema=DROP, schema_="session/1")
    # The first failing check names the reason; the detail names every failing path.
    rejected(send(message), "unknown_schema", "schema", "schema_")
    with pytest.raises(ValidationError):
        SessionV1.model_validate_json(orjson.dumps(message))


def test_message_on_a_topic_without_events() -> None:
    validator = new_validator()
    outcome = validator.validate_message(
        orjson.dumps(BASE[S]), PARTICIPANT.encode(), Origin("exnet.other", 0, 7), NOW
    )
    rejected(outcome, "unknown_schema", "")
    assert "carries no exnet events" in outcome.message  # type: ignore[union-attr]
    assert outcome.origin == Origin("exnet.other", 0, 7)


def test_topic_prefix_names_the_physical_topics() -> None:
    validator = Validator(REGISTRY, topic_prefix="site7.", clock=lambda: NOW)
    value, key = orjson.dumps(BASE[S]), PARTICIPANT.encode()
    accepted(validator.validate_message(value, key, Origin("site7.exnet.session", 0, 0)))
    rejected(
        validator.validate_message(value, key, Origin("exnet.session", 0, 0)), "unknown_schema", ""
    )


# --- key, registry, time ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (None, "missing"),
        (b"", "0 bytes, not a pseudonym, not shown"),
        (b"P-ffffffffff", "'P-ffffffffff'"),
        # A key that is no pseudonym may be a name: the detail reaches analysts.
        (PARTICIPANT.upper().encode(), "14 bytes, not a pseudonym, not shown"),
        (PARTICIPANT.encode() + b" ", "15 bytes, not a pseudonym, not shown"),
        (b"Jane Doe", "8 bytes, not a pseudonym, not shown"),
        (b"\xff\xfe", "2 bytes, not a pseudonym, not shown"),
    ],
)
def test_key_must_be_the_participant_id(key: bytes | None, shown: str) -> None:
    outcome = rejected(send(event(S), key=key), "key_mismatch", "participant_id")
    assert outcome.message == (
        f"participant_id: the message key ({shown}) must be the event's participant_id "
        f"{PARTICIPANT!r}"
    )
    assert outcome.event_id == BASE[S]["event_id"]


@pytest.mark.parametrize(
    ("node", "site", "path", "message"),
    [
        ("N09", "N09-S01", "node_id", "node 'N09' is not registered"),
        ("N09", "N01-S01", "node_id", "node 'N09' is not registered"),
        ("N01", "N01-S09", "site_id", "site 'N01-S09' is not registered"),
        ("N01", "N02-S01", "site_id", "site 'N02-S01' is registered under node 'N02', not 'N01'"),
        ("N03", "N01-S03", "site_id", "site 'N01-S03' is registered under node 'N01', not 'N03'"),
    ],
)
def test_site_must_be_registered_under_its_node(
    node: str, site: str, path: str, message: str
) -> None:
    outcome = rejected(send(event(S, node_id=node, site_id=site)), "unknown_site", path)
    assert outcome.message == f"{path}: {message}"


def test_every_registered_site_is_accepted_under_its_node() -> None:
    for node_id, site in REGISTRY.sites():
        accepted(send(event(S, node_id=node_id, site_id=site.id)))


def test_without_a_registry_sites_are_not_checked() -> None:
    validator = Validator(None, clock=lambda: NOW)
    message = event(S, node_id="N09", site_id="N09-S01")
    accepted(validator.validate_message(orjson.dumps(message), PARTICIPANT.encode(), ORIGINS[S]))


@pytest.mark.parametrize(
    ("ahead", "ok"),
    [
        (timedelta(days=-400), True),
        (timedelta(0), True),
        (timedelta(minutes=4), True),
        (timedelta(minutes=5), True),
        (timedelta(minutes=5, microseconds=1), False),
        (timedelta(minutes=6), False),
        (timedelta(days=365), False),
    ],
)
def test_future_timestamps(ahead: timedelta, ok: bool) -> None:
    when = NOW + ahead
    for written in (
        when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        when.astimezone(timedelta_zone(+2)).isoformat(timespec="microseconds"),
        when.astimezone(timedelta_zone(-7)).isoformat(timespec="microseconds"),
    ):
        outcome = send(event(S, occurred_at=written))
        if ok:
            accepted(outcome)
        else:
            found = rejected(outcome, "future_timestamp", "occurred_at")
            assert (
                "is more than 5 minutes after processing time 2025-06-01T12:00:00" in found.message
            )


def timedelta_zone(hours: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


def test_processing_time_comes_from_the_clock_unless_given() -> None:
    value, key = orjson.dumps(event(S, occurred_at="2025-06-01T12:06:00Z")), PARTICIPANT.encode()
    late = Validator(REGISTRY, clock=lambda: NOW + timedelta(minutes=2))
    accepted(late.validate_message(value, key, ORIGINS[S]))
    rejected(late.validate_message(value, key, ORIGINS[S], NOW), "future_timestamp", "occurred_at")
    accepted(late.validate_record(value))
    rejected(late.validate_record(value, NOW), "future_timestamp", "occurred_at")
    assert timedelta(minutes=5) == FUTURE_TOLERANCE


# --- size and JSON ---------------------------------------------------------------------


def _padded(size: int) -> bytes:
    """A valid session event, padded with whitespace to exactly ``size`` bytes."""
    value = orjson.dumps(BASE[S])
    padded = value[:-1] + b" " * (size - len(value)) + b"}"
    assert len(padded) == size
    return padded


def test_64_kib_is_the_largest_message() -> None:
    assert MAX_MESSAGE_BYTES == 65536
    accepted(send(_padded(65536)))
    accepted(new_validator().validate_record(_padded(65536), NOW))
    for size in (65537, 70000, 1024 * 1024):
        outcome = rejected(send(_padded(size)), "too_large", "")
        assert outcome.message == f"{size} bytes is over the limit of 65536 bytes"
        rejected(new_validator().validate_record(_padded(size), NOW), "too_large", "")


@pytest.mark.parametrize(
    ("value", "kind", "says"),
    [
        (b"", "empty", "the message is empty (0 bytes): one JSON object per message"),
        (b" \r\n", "empty", "the message is empty (3 bytes, all of them spaces or line ends)"),
        (b"{", "json_invalid", "not JSON: "),
        (b'{"schema": "session/1",}', "json_invalid", "not JSON: "),
        (b"{'schema': 'session/1'}", "json_invalid", "not JSON: "),
        (b'{"schema": "session/1"} {}', "trailing_data", "data after the JSON document"),
        (
            b"\xef\xbb\xbf" + orjson.dumps(BASE[S]),
            "byte_order_mark",
            "starts with a byte-order mark",
        ),
        (
            orjson.dumps(BASE[S]).replace(b"combined", b"comb\xffned"),
            "not_utf8",
            "not UTF-8: the byte 0xff at column ",  # one line: no "line 1" beside a file's line
        ),
        (
            b'{"schema": "session/1",\n  "modality": "comb\xe9ned"}',
            "not_utf8",
            "not UTF-8: the byte 0xe9 at line 2 column 20 (counted in bytes)",
        ),
        (
            orjson.dumps(BASE[S]).decode().encode("utf-16"),  # with its byte-order mark
            "not_utf8",
            "not UTF-8: the message looks like UTF-16",
        ),
        (
            orjson.dumps(BASE[S]).decode().encode("utf-16-le"),  # a line after the first
            "not_utf8",
            "not UTF-8: the message looks like UTF-16",
        ),
        (
            orjson.dumps(BASE[S]) + b"\x00" * 8,  # NULs, but not beside each character
            "trailing_data",
            "data after the JSON document",
        ),
        (
            orjson.dumps(BASE[S]).replace(b"combined", b"comb\\ud800ned"),
            "lone_surrogate",
            "a string holds a lone surrogate",
        ),
        (
            orjson.dumps(BASE[S]).replace(b"combined", b"comb\\uFFFEned"),
            "noncharacter",
            "a string holds the Unicode noncharacter U+FFFE, which I-JSON forbids",
        ),
        (
            orjson.dumps(BASE[S]).replace(b"combined", "comb\ufdd0ned".encode()),
            "noncharacter",
            "a string holds the Unicode noncharacter U+FDD0",
        ),
        (
            orjson.dumps(BASE[S]).replace(b'"rpe"', b'"\\ud83f\\udfff"'),  # a member name
            "noncharacter",
            "a string holds the Unicode noncharacter U+1FFFF",
        ),
        (orjson.dumps(BASE[S]).replace(b'"rpe":13', b'"rpe":013'), "json_invalid", "not JSON: "),
        (
            orjson.dumps(BASE[S]).replace(b'"rpe":13', b'"rpe":NaN'),
            "not_a_number",
            "NaN and Infinity are not JSON numbers",
        ),
        ("\u00e9".encode("latin-1"), "not_utf8", "not UTF-8: the byte 0xe9 at column 1 "),
        (
            b'{"schema": "session/1",',
            "json_invalid",
            "not JSON: EOF while parsing a value at column 23",
        ),
        (
            b'{"schema":\n "session/1",',
            "json_invalid",
            "not JSON: EOF while parsing a value at line 2",
        ),
        (b"[" * 300 + b"]" * 300, "too_deep", "nested too deeply"),
    ],
)
def test_malformed_json_says_what_is_wrong(value: bytes, kind: str, says: str) -> None:
    outcome = rejected(send(value), "malformed_json", "")
    assert outcome.message.startswith(says), outcome.message
    assert [issue.type for issue in outcome.issues] == [kind]
    assert outcome.event_id is None
    record = rejected(new_validator().validate_record(value, NOW), "malformed_json", "")
    assert record.message.startswith(says), record.message


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"[]", "array"),
        (b"null", "null"),
        (b"1", "number"),
        (b'"session/1"', "string"),
        (b"true", "boolean"),
        (b"[{}]", "array"),
    ],
)
def test_json_that_is_not_an_object_is_malformed(value: bytes, kind: str) -> None:
    outcome = rejected(send(value), "malformed_json", "")
    assert outcome.message == f"a JSON {kind}, not an object: one event is one JSON object"
    rejected(new_validator().validate_record(value, NOW), "malformed_json", "")


@pytest.mark.parametrize(
    ("topic", "name"), [(topic, name) for topic, event in BASE.items() for name in event]
)
def test_a_repeated_member_name_is_malformed_and_named(topic: Topic, name: str) -> None:
    # I-JSON: readers disagree on which copy counts (pydantic keeps the last, others the
    # first), so whichever copy comes last, the message is malformed_json.
    body = orjson.dumps(BASE[topic])
    again = b"," + orjson.dumps({name: BASE[topic][name]})[1:-1] + b"}"
    for value in (body[:-1] + again, body[:-1] + again.replace(b":", b" : ", 1)):
        outcome = rejected(send(value, topic), "malformed_json", "")
        assert [issue.type for issue in outcome.issues] == ["repeated_name"], outcome
        assert repr(name) in outcome.message, outcome.message
        record = rejected(new_validator().validate_record(value, NOW), "malformed_json", "")
        assert repr(name) in record.message


@pytest.mark.parametrize(
    "value",
    [
        b'{"a": 1, "a": 2}',  # no schema at all
        orjson.dumps(BASE[S])[:-1] + b',"schema":"sesion/1"}',  # the second copy unknown
    ],
)
def test_a_repeated_name_is_malformed_before_the_schema_is_looked_at(value: bytes) -> None:
    # SPEC §2's order: malformed_json before unknown_schema, for the sites' tool as for
    # the stream (publish said unknown_schema for these).
    for outcome in (send(value), new_validator().validate_record(value, NOW)):
        assert [i.type for i in rejected(outcome, "malformed_json", "").issues] == ["repeated_name"]


def test_a_repeated_score_is_malformed_whichever_value_comes_last() -> None:
    # The issue's case: "score": 99 and later "score": 5 was accepted with 5.
    body = orjson.dumps({**BASE[Topic.ASSESSMENT], "score": 99})
    value = body[:-1] + b',"score":5}'
    outcome = rejected(send(value, Topic.ASSESSMENT), "malformed_json", "")
    assert "'score' appears more than once" in outcome.message


def test_a_tombstone_is_malformed() -> None:
    outcome = rejected(send(None), "malformed_json", "")
    assert "no value" in outcome.message


# --- order of checks -------------------------------------------------------------------


def test_reasons_are_in_spec_order() -> None:
    assert [reason.value for reason in Reason] == [
        "too_large", "malformed_json", "unknown_schema", "invalid_field", "key_mismatch",
        "unknown_site", "future_timestamp", "conflicting_duplicate",
    ]  # fmt: skip


FUTURE = "2025-06-01T13:00:00Z"
GONE = "N01-S09"  # a site that is not registered
K = b"P-ffffffffff"  # another participant's key
ORDER = [
    # (what is broken, message, key, expected reason, expected paths)
    ("too large + malformed", b"{" + b" " * 65536, None, "too_large", [""]),
    ("malformed + unknown schema", b'{"schema": "x/1",', None, "malformed_json", [""]),
    ("unknown schema + invalid field", event(S, schema="session/2", rpe=99), None,
     "unknown_schema", ["schema", "rpe"]),
    ("unknown schema + key", event(S, schema=DROP), K, "unknown_schema", ["schema"]),
    ("invalid field + key", event(S, rpe=99), K, "invalid_field", ["rpe"]),
    ("invalid field + unknown site", event(S, rpe=99, site_id=GONE), None,
     "invalid_field", ["rpe"]),
    ("invalid field + future", event(S, rpe=99, occurred_at=FUTURE), None,
     "invalid_field", ["rpe"]),
    ("key + unknown site", event(S, site_id=GONE), K, "key_mismatch", ["participant_id"]),
    ("key + future", event(S, occurred_at=FUTURE), K, "key_mismatch", ["participant_id"]),
    ("unknown site + future", event(S, site_id=GONE, occurred_at=FUTURE), None,
     "unknown_site", ["site_id"]),
    ("unknown node + future", event(S, node_id="N09", occurred_at=FUTURE), None,
     "unknown_site", ["node_id"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "key", "reason", "paths"), [o[1:] for o in ORDER], ids=[o[0] for o in ORDER]
)
def test_the_first_failing_check_names_the_reason(
    value: bytes | dict[str, Any], key: bytes | None, reason: str, paths: list[str]
) -> None:
    rejected(send(value, key=key if key is not None else "participant_id"), reason, *paths)


# --- identity --------------------------------------------------------------------------


def test_same_event_formatted_differently_has_one_identity() -> None:
    base = event(E, adjunct=DROP)
    variants = [
        orjson.dumps(base),
        orjson.dumps(dict(reversed(list(base.items())))),
        orjson.dumps(base, option=orjson.OPT_INDENT_2),
        json.dumps(base, separators=(" ,\n\t ", " :  "), ensure_ascii=True).encode(),
        orjson.dumps(event(E, adjunct="none")),
        orjson.dumps(event(E, adjunct=DROP, occurred_at="2025-05-02T08:15:00Z")),
        orjson.dumps(event(E, adjunct=DROP, occurred_at="2025-05-02T08:15:00.000000Z")),
        orjson.dumps(event(E, adjunct=DROP, occurred_at="2025-05-02T03:15-05:00")),
        orjson.dumps(event(E, adjunct=DROP, event_id=BASE[E]["event_id"].upper())),
        orjson.dumps(event(E, adjunct=DROP, reason=None, age_band="25-34")),
    ]
    outcomes = [accepted(send(v, E, key=PARTICIPANT.encode())) for v in variants]
    assert len({o.canonical_json() for o in outcomes}) == 1
    assert len({o.fingerprint() for o in outcomes}) == 1
    assert len({o.event for o in outcomes}) == 1
    canonical = orjson.loads(outcomes[0].canonical_json())
    assert canonical["occurred_at"] == "2025-05-02T08:15:00Z"
    assert canonical["adjunct"] == "none"
    assert canonical["schema"] == "enrollment/1"
    assert canonical["event_id"] == BASE[E]["event_id"].lower()


def test_numbers_written_differently_are_one_value() -> None:
    one = accepted(send(event(S, duration_min=45)))
    two = accepted(send(orjson.dumps(event(S, duration_min=45.0))))
    three = accepted(send(orjson.dumps(event(S, duration_min=45)).replace(b":45,", b":4.5e1,")))
    assert one.fingerprint() == two.fingerprint() == three.fingerprint()


@pytest.mark.parametrize("topic", list(BASE))
def test_a_different_value_has_a_different_fingerprint(topic: Topic) -> None:
    first = accepted(send(event(topic), topic))
    changes: dict[Topic, dict[str, Any]] = {
        E: {"sex": "male"},
        S: {"rpe": 14},
        A: {"value": 2.7500001},
        M: {"week": 1},
    }
    changed = changes[topic]
    second = accepted(send(event(topic, **changed), topic))
    later = accepted(send(event(topic, occurred_at="2025-05-05T09:00:00.000001Z"), topic))
    assert len({first.fingerprint(), second.fingerprint(), later.fingerprint()}) == 3
    assert len(first.fingerprint()) == 32


# --- the publisher's path --------------------------------------------------------------


@pytest.mark.parametrize("topic", list(BASE))
def test_validate_record_lets_the_schema_pick_the_topic(topic: Topic) -> None:
    outcome = accepted(new_validator().validate_record(orjson.dumps(BASE[topic]), NOW))
    assert outcome.topic is topic
    assert outcome.origin is None


def test_validate_record_does_not_check_the_key_but_checks_everything_else() -> None:
    validator = new_validator()
    accepted(validator.validate_record(orjson.dumps(event(S, participant_id="P-ffffffffff")), NOW))
    rejected(validator.validate_record(orjson.dumps(event(S, rpe=0)), NOW), "invalid_field", "rpe")
    rejected(
        validator.validate_record(orjson.dumps(event(S, site_id="N01-S01")), NOW),
        "unknown_site",
        "site_id",
    )
    rejected(
        validator.validate_record(orjson.dumps(event(S, occurred_at="2025-06-01T12:06:00Z")), NOW),
        "future_timestamp",
        "occurred_at",
    )


def test_validate_record_names_the_known_schemas() -> None:
    validator = new_validator()
    known = "'enrollment/1' or 'session/1' or 'assay/1' or 'assessment/1'"
    outcome = rejected(
        validator.validate_record(orjson.dumps(event(S, schema=DROP)), NOW),
        "unknown_schema",
        "schema",
    )
    assert outcome.message == f"schema: missing; an exnet event carries {known}"
    assert outcome.event_id == BASE[S]["event_id"]
    outcome = rejected(
        validator.validate_record(orjson.dumps(event(S, schema="session/2")), NOW),
        "unknown_schema",
        "schema",
    )
    # A known event type's unknown version: judged as that type's topic judges it.
    assert outcome.message == "schema: 'session/2' is not this topic's schema ('session/1')"
    outcome = rejected(
        validator.validate_record(orjson.dumps(event(S, schema="session/2", rpe=3)), NOW),
        "unknown_schema",
        "schema",
        "rpe",
    )
    outcome = rejected(
        validator.validate_record(orjson.dumps(event(S, schema="visit/1")), NOW),
        "unknown_schema",
        "schema",
    )
    assert outcome.message == f"schema: 'visit/1' is not a known schema ({known})"
    # Another topic's schema sends it there: then its fields do not fit.
    outcome = rejected(
        validator.validate_record(orjson.dumps(event(M, schema="session/1")), NOW),
        "invalid_field",
        "instrument", "score", "week", "session_number", "status", "modality", "supervised",
    )  # fmt: skip


# --- processing time -------------------------------------------------------------------


def test_now_is_the_processing_time_the_future_is_judged_against() -> None:
    """A batch's events are checked at one processing time, given once (``now``)."""
    validator = new_validator()
    soon = orjson.dumps(event(S, occurred_at="2025-06-01T12:06:00Z"))
    outcome = validator.validate_message(soon, PARTICIPANT.encode(), ORIGINS[S], NOW)
    assert isinstance(outcome, Rejected) and outcome.reason.value == "future_timestamp"
    later = NOW + timedelta(minutes=2)
    assert isinstance(
        validator.validate_message(soon, PARTICIPANT.encode(), ORIGINS[S], later), Accepted
    )


# --- outcome objects -------------------------------------------------------------------


def test_accepted_is_immutable_and_describes_its_event() -> None:
    outcome = accepted(send(event(A), A))
    assert outcome.event_type == "assay"
    assert outcome.event_id == BASE[A]["event_id"]
    assert outcome.topic is A
    assert outcome.origin == ORIGINS[A]
    assert isinstance(outcome.event, AssayV1)
    for name in ("event", "topic", "origin"):
        with pytest.raises(AttributeError):
            setattr(outcome, name, None)
    with pytest.raises(ValidationError):
        outcome.event.value = 3.0  # type: ignore[misc]
    assert outcome == accepted(send(event(A), A))
    assert hash(outcome) == hash(accepted(send(event(A), A)))
    assert outcome != accepted(send(event(A, value=3), A))
    assert "Accepted(event=AssayV1(" in repr(outcome)
    match outcome:
        case Accepted(event=AssayV1(analyte=analyte), topic=Topic.ASSAY):
            assert analyte == "IL6"
        case _:
            pytest.fail("Accepted does not match by its fields")


def test_rejected_detail_names_every_issue() -> None:
    outcome = rejected(
        send(event(S, rpe=3, mean_hr_pct_max=101)), "invalid_field", "rpe", "mean_hr_pct_max"
    )
    detail = outcome.detail()
    assert detail["reason"] == "invalid_field"
    assert detail["message"] == outcome.message
    assert {e["path"]: e["type"] for e in detail["errors"]} == {
        "rpe": "greater_than_equal",
        "mean_hr_pct_max": "less_than_equal",
    }
    assert orjson.loads(outcome.detail_json()) == detail
    assert outcome.event_id == BASE[S]["event_id"]
    assert outcome.origin == ORIGINS[S]
    assert FieldIssue("rpe", "m", "t").as_dict() == {"path": "rpe", "type": "t", "message": "m"}


def test_rejection_event_id_only_when_readable() -> None:
    assert (
        rejected(
            send(event(S, event_id="nope", rpe=0)), "invalid_field", "event_id", "rpe"
        ).event_id
        is None
    )
    upper = BASE[S]["event_id"].upper()
    assert (
        rejected(send(event(S, event_id=upper, rpe=0)), "invalid_field", "rpe").event_id
        == upper.lower()
    )
    assert (
        rejected(send(event(S, event_id=7, rpe=0)), "invalid_field", "event_id", "rpe").event_id
        is None
    )


# --- models used directly --------------------------------------------------------------


def test_models_from_python_values_convert_to_utc() -> None:
    from datetime import timezone

    fields = event(S) | {
        "occurred_at": datetime(2025, 5, 12, 9, 45, tzinfo=timezone(timedelta(hours=2)))
    }
    model = SessionV1.model_validate(fields)
    assert model.occurred_at == datetime(2025, 5, 12, 7, 45, tzinfo=UTC)
    assert model.occurred_at.tzinfo is UTC
    assert model.row_fields()["schema"] == "session/1"
    with pytest.raises(ValidationError, match="timezone"):
        SessionV1.model_validate(fields | {"occurred_at": datetime(2025, 5, 12, 9, 45)})
    with pytest.raises(ValidationError, match="greater than or equal"):
        SessionV1.model_validate(
            fields | {"occurred_at": datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))}
        )
    with pytest.raises(ValidationError, match="required when status is 'attended'"):
        SessionV1.model_validate(fields | {"duration_min": None})


@pytest.mark.parametrize("topic", list(BASE))
def test_rule_problems_is_a_pure_function_of_values(topic: Topic) -> None:
    model = MODELS[topic]
    assert model.rule_problems(BASE[topic]) == []
    assert set(model.RULE_FIELDS) <= {f.alias or n for n, f in model.model_fields.items()}


# --- versions side by side -------------------------------------------------------------


class SessionV2(SessionV1):
    """A made-up next version, to check that versions can sit side by side on one topic."""

    SCHEMA: ClassVar[str] = "session/2"
    schema_: Literal["session/2"] = Field(alias="schema")  # type: ignore[assignment]
    venue: Literal["clinic", "home"]


def test_two_versions_on_one_topic() -> None:
    validator = new_validator()
    two = _TopicContract(Topic.SESSION, (SessionV1, SessionV2))
    validator._contracts["exnet.session"] = two
    v1, v2 = event(S), event(S, schema="session/2", venue="home")
    assert type(accepted(send_to(validator, v1)).event) is SessionV1
    assert type(accepted(send_to(validator, v2)).event) is SessionV2
    rejected(send_to(validator, event(S, venue="home")), "invalid_field", "venue")
    rejected(send_to(validator, event(S, schema="session/2")), "invalid_field", "venue")
    rejected(
        send_to(validator, event(S, schema="session/2", venue="gym", rpe=0)),
        "invalid_field",
        "venue",
        "rpe",
    )
    rejected(
        send_to(validator, event(S, schema="session/2", venue="home", duration_min=DROP)),
        "invalid_field",
        "duration_min",
    )
    outcome = rejected(send_to(validator, event(S, schema="session/3")), "unknown_schema", "schema")
    assert (
        outcome.message
        == "schema: 'session/3' is not this topic's schema ('session/1' or 'session/2')"
    )
    rejected(send_to(validator, event(S, schema=DROP)), "unknown_schema", "schema")
    rejected(send_to(validator, b"[]"), "malformed_json", "")


def send_to(validator: Validator, value: bytes | dict[str, Any]) -> Any:
    raw = orjson.dumps(value) if isinstance(value, dict) else value
    return validator.validate_message(raw, PARTICIPANT.encode(), ORIGINS[S], NOW)


# --- the models' quick rule tests agree with rule_problems ------------------------------


def _grid(topic: Topic) -> list[dict[str, Any]]:
    """Every combination of the values the topic's cross-field rules read."""
    if topic is E:
        return [
            event(E, status=status, modality=arm, reason=reason)
            for status in STATUSES
            for arm in (None, "aerobic", "control")
            for reason in (None, "other")
        ]
    if topic is S:
        return [
            event(S, status=status, duration_min=duration)
            for status in ("attended", "missed", "cancelled")
            for duration in (None, 0, 30)
        ]
    if topic is A:
        units = ("pg/mL", "ng/mL", "ug/dL", "mg/L", "nmol/L")
        return [event(A, analyte=a, unit=u) for a in _CANONICAL for u in units]
    return [
        event(M, instrument=i, score=score)
        for i, top in INSTRUMENT_MAX.items()
        for score in (0, top, top + 1, 64)
    ]


@pytest.mark.parametrize("topic", list(BASE))
def test_quick_rule_test_agrees_with_rule_problems(topic: Topic) -> None:
    model = MODELS[topic]
    for payload in _grid(topic):
        problems = model.rule_problems(payload)
        outcome = send(payload, topic)
        if problems:
            found = rejected(outcome, "invalid_field", *(path for path, _ in problems))
            assert [(i.path, i.message) for i in found.issues] == problems
        else:
            accepted(outcome)


@pytest.mark.parametrize(
    ("topic", "field", "value", "says"),
    [
        (M, "score", "12", "Input should be a valid integer, got a string"),
        (M, "score", 12.5, "Input should be a valid integer, got a number with a fraction"),
        (M, "score", None, "Input should be a valid integer, got null"),
        (S, "supervised", "yes", "Input should be a valid boolean, got a string"),
        (S, "node_id", 5, "Input should be a valid string, got a whole number"),
        (S, "rpe", [13], "Input should be a valid integer, got an array"),
    ],
)
def test_a_value_of_the_wrong_type_is_told_what_came(
    topic: Topic, field: str, value: Any, says: str
) -> None:
    """The kind of JSON value that came, never the value (it may be a name)."""
    outcome = rejected(send(event(topic, **{field: value}), topic), "invalid_field", field)
    (issue,) = outcome.issues
    assert issue.message == says
