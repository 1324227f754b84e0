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
