"""Number spellings do not make two events differ (SPEC §2): the fingerprint is of the
validated values, so the same event sent as ``-0.0`` and as ``0`` is a duplicate."""

from __future__ import annotations

import orjson
import pytest

from contracts import Accepted, Topic

from .helpers import event, send

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
