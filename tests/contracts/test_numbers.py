"""Number spellings do not make two events differ (SPEC §2): the fingerprint is of the
validated values, so the same event sent as ``-0.0`` and as ``0`` is a duplicate."""

from __future__ import annotations

import orjson
import pytest

from contracts import Accepted, Topic

from .helpers import NOW, accepted, event, new_validator, rejected, send

#: Every number field whose range includes zero, with its topic.
ZERO_FIELDS = [(Topic.ASSAY, "value"), (Topic.SESSION, "duration_min")]


def _both(topic: Topic, field: str, value: int, one: str, other: str) -> tuple[Accepted, Accepted]:
    """The same event with ``field`` spelled ``one`` and ``other`` (``value`` in the base)."""
    base = event(topic, **{field: value})
    plain = orjson.dumps(base)
    written = f'"{field}":{value}'.encode()
    assert written in plain
    key = base["participant_id"].encode()
    first = send(plain.replace(written, f'"{field}":{one}'.encode()), topic, key)
    second = send(plain.replace(written, f'"{field}":{other}'.encode()), topic, key)
    assert isinstance(first, Accepted) and isinstance(second, Accepted), (first, second)
    return first, second


@pytest.mark.parametrize(("topic", "field"), ZERO_FIELDS)
@pytest.mark.parametrize("spelling", ["-0.0", "-0", "0.0", "0e0", "-0e5", "0E-3"])
def test_every_spelling_of_zero_is_the_same_event(topic: Topic, field: str, spelling: str) -> None:
    first, second = _both(topic, field, 0, "0", spelling)
    assert first.fingerprint() == second.fingerprint()
    assert first.canonical_json() == second.canonical_json()
    stored = getattr(second.event, field)
    assert stored == 0 and str(stored) == "0.0"  # not "-0.0"


@pytest.mark.parametrize(("topic", "field"), ZERO_FIELDS)
@pytest.mark.parametrize(("one", "other"), [("5e1", "50"), ("50.0", "50"), ("500e-1", "50")])
def test_number_spellings_of_one_value_are_the_same_event(
    topic: Topic, field: str, one: str, other: str
) -> None:
    first, second = _both(topic, field, 50, one, other)
    assert first.fingerprint() == second.fingerprint()
    assert first.event == second.event


def _written(topic: Topic, field: str, literal: str, **changes: object) -> bytes:
    """The base event (with ``changes``) with ``field`` written as the JSON text ``literal``."""
    document = orjson.dumps(event(topic, **{field: 123456789}, **changes))
    assert document.count(b"123456789") == 1
    return document.replace(b"123456789", literal.encode())


#: Numbers of more digits than Python turns into an int (``sys.int_info``: 4,300): JSON
#: and I-JSON all the same (RFC 7493 only advises against numbers beyond a double).
LONG_NUMBERS = [
    "9" * 5000,
    "1" + "0" * 4300,
    "-" + "9" * 5000,
    "9" * 5000 + ".5",
    "9" * 4301 + "e2",
]
NOT_FINITE = "Input should be a valid integer, got a number too large to read"


@pytest.mark.parametrize("literal", LONG_NUMBERS, ids=lambda t: f"{len(t)} characters")
@pytest.mark.parametrize(
    ("topic", "field", "says"),
    [
        (Topic.ASSESSMENT, "score", NOT_FINITE),
        (Topic.SESSION, "session_number", NOT_FINITE),
        (Topic.SESSION, "duration_min", None),
        (Topic.ASSAY, "value", "Input should be a number, got one too large to read"),
    ],
)
def test_a_number_of_thousands_of_digits_reaches_the_field_rules(
    topic: Topic, field: str, says: str | None, literal: str
) -> None:
    """Not malformed_json: the field it was given to is named, by the stream and the
    publisher alike."""
    value = _written(topic, field, literal)
    for outcome in (send(value, topic), new_validator().validate_record(value, NOW)):
        found = rejected(outcome, "invalid_field", field)
        if says is not None:
            assert found.message.startswith(f"{field}: {says}"), found.message


def test_a_long_number_in_another_field_and_the_rest_of_the_message_are_judged_as_usual() -> None:
    # Beside another failing field, and digits in a string stay text.
    value = _written(Topic.ASSESSMENT, "score", "9" * 5000, week=105, instrument="9" * 5000)
    rejected(send(value, Topic.ASSESSMENT), "invalid_field", "score", "week", "instrument")
    # A finite number however long: 1 and 5,000 zeros, times 10^-5000.
    value = _written(Topic.ASSAY, "value", "1" + "0" * 5000 + "e-5000")
    assert accepted(send(value, Topic.ASSAY)).event.value == 1.0  # type: ignore[attr-defined]
    # 4,000 digits Python reads as an int: a score out of the instrument's range.
    value = _written(Topic.ASSESSMENT, "score", "9" * 4000)
    found = rejected(send(value, Topic.ASSESSMENT), "invalid_field", "score")
    assert found.message == "score: MADRS scores run 0..60"


def test_a_long_number_does_not_hide_what_makes_a_message_malformed() -> None:
    value = _written(Topic.ASSESSMENT, "score", "9" * 5000)
    # A repeated member name (SPEC §2: malformed_json comes before the field rules).
    twice = value[:-1] + b',"week":3}'
    found = rejected(send(twice, Topic.ASSESSMENT), "malformed_json", "")
    assert found.issues[0].type == "repeated_name"
    rejected(new_validator().validate_record(twice, NOW), "malformed_json", "")
    # Broken grammar after the number: named where it is, at its column.
    broken = value[:-1] + b",}"
    found = rejected(send(broken, Topic.ASSESSMENT), "malformed_json", "")
    assert f"column {len(broken)}" in found.message, found.message
