"""No string field holds a control character or free text (SPEC §1), on every event type."""

from __future__ import annotations

import pytest

from contracts import Rejected, Topic

from .helpers import event, send

#: The string fields that take more than a fixed set of words, per event type.
STRING_FIELDS = {
    topic: ["event_id", "occurred_at", "node_id", "site_id", "participant_id"]
    for topic in (Topic.ENROLLMENT, Topic.SESSION, Topic.ASSAY, Topic.ASSESSMENT)
}
STRING_FIELDS[Topic.ASSAY] += ["specimen_id", "lab_id", "batch_id"]
#: Control characters (U+0000-U+001F, U+007F), and the newline that Python's `$` lets through.
CONTROLS = ["\x00", "\x01", "\t", "\n", "\x1f", "\x7f"]


@pytest.mark.parametrize(
    ("topic", "field"), [(t, f) for t, fields in STRING_FIELDS.items() for f in fields]
)
@pytest.mark.parametrize("control", CONTROLS, ids=repr)
def test_a_control_character_in_a_string_field_is_invalid(
    topic: Topic, field: str, control: str
) -> None:
    base = event(topic)
    for spoiled in (base[field] + control, control + base[field]):
        outcome = send(event(topic, **{field: spoiled}), topic, base["participant_id"].encode())
        assert isinstance(outcome, Rejected), (field, spoiled)
        assert outcome.reason.value == "invalid_field", outcome
        assert [issue.path for issue in outcome.issues] == [field], outcome
        assert outcome.event_id in (None, base["event_id"].lower()), outcome


def test_a_batch_label_is_no_place_for_free_text() -> None:
    outcome = send(
        event(Topic.ASSAY, batch_id="Smith, Ann DOB 1979-03-02 MRN 00412345"), Topic.ASSAY
    )
    assert isinstance(outcome, Rejected) and outcome.reason.value == "invalid_field"
    assert [issue.path for issue in outcome.issues] == ["batch_id"]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("participant_id", "John Smith", "a pseudonym, 'P-' then 10 to 64 digits"),
        ("event_id", "42", "a UUID, 32 hex digits grouped 8-4-4-4-12"),
        ("node_id", "n01", "a node's code, a capital letter"),
        ("site_id", "N01_S01", "a site's code, its node's code, '-'"),
    ],
)
def test_an_identifier_that_breaks_its_pattern_is_told_in_words(
    field: str, value: str, says: str
) -> None:
    """A site's data manager, given "String should match pattern '^P-[0-9a-f]{10,64}$'"
    for "John Smith", was puzzled (an outside check): the pattern stays, its meaning
    follows."""
    outcome = send(event(Topic.SESSION, **{field: value}), Topic.SESSION, b"P-0123456789")
    assert isinstance(outcome, Rejected) and outcome.reason.value == "invalid_field", outcome
    (issue,) = [issue for issue in outcome.issues if issue.path == field]
    assert issue.message.startswith("String should match pattern '^"), issue
    assert says in issue.message, issue


@pytest.mark.parametrize(
    ("topic", "field", "value", "says"),
    [
        (Topic.SESSION, "mean_hr_pct_max", 0.72, "greater than or equal to 30: the mean heart"),
        (Topic.SESSION, "mean_hr_pct_max", 152, "less than or equal to 100: the mean heart"),
        (Topic.SESSION, "duration_min", 400, "less than or equal to 300: the session's length"),
        (Topic.SESSION, "rpe", 3, "greater than or equal to 6: the Borg rating"),
        (Topic.SESSION, "session_number", 0, "greater than or equal to 1: the session's place"),
        (Topic.ASSESSMENT, "week", 105, "less than or equal to 104: weeks since baseline"),
    ],
)
def test_a_number_out_of_its_bounds_is_told_what_it_measures(
    topic: Topic, field: str, value: float, says: str
) -> None:
    """A heart rate of 0.72 (a fraction where a percentage was meant) got "Input should be
    greater than or equal to 30" alone, which left a site's data manager guessing."""
    outcome = send(event(topic, **{field: value}), topic)
    assert isinstance(outcome, Rejected) and outcome.reason.value == "invalid_field", outcome
    (issue,) = [issue for issue in outcome.issues if issue.path == field]
    assert issue.message.startswith("Input should be "), issue
    assert says in issue.message, issue
