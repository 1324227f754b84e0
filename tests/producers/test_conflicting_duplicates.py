"""Within one run, an event_id reused with other content is a conflicting_duplicate.

The platform rejects such a copy (SPEC §2, ``conflicting_duplicate``) and drops an
identical one as a duplicate; ``exnet publish`` catches the first before it is sent
and sends the second as before. Content is compared as the platform compares it:
the canonical event, so the spelling of a time, a number or the event_id, and the
order of the keys, make no difference.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from contracts import Accepted, Reason, Rejected
from exnet.cli.publish import EXIT_INVALID, publish_files
from exnet.settings import Settings
from producers import Publisher, flush_spool, spool_of
from producers import publisher as publisher_module

from .helpers import pub_consume, pub_env, pub_exnet
from .test_publish_kafka import CLOSED_BOOTSTRAP, _topics
from .test_publisher import FakeProducer, input_topics

EVENT_ID = "3f0c9a52-7d1e-4b8a-9c3e-2a6f5b1d8e07"
OTHER_ID = "8b2e4f6a-1c3d-4e5f-a7b9-0d2c4e6f8a1b"


def _session(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema": "session/1",
        "event_id": EVENT_ID,
        "occurred_at": "2025-05-12T18:30:00+02:00",
        "node_id": "N01",
        "site_id": "N01-S01",
        "participant_id": "P-0123456789ab",
        "session_number": 3,
        "status": "attended",
        "modality": "aerobic",
        "supervised": True,
        "duration_min": 50,
        "rpe": 13,
    }
    event.update(changes)
    return event


def _line(**changes: Any) -> bytes:
    return orjson.dumps(_session(**changes))


#: The same event as ``_line()``, written otherwise: keys in reverse order, the same
#: instant in UTC without seconds, ``5e1`` for 50, ``13.0`` for 13, the event_id in
#: upper case, spaces after the separators.
REFORMATTED = (
    b'{"rpe": 13.0, "duration_min": 5e1, "supervised": true, "modality": "aerobic", '
    b'"status": "attended", "session_number": 3, "participant_id": "P-0123456789ab", '
    b'"site_id": "N01-S01", "node_id": "N01", "occurred_at": "2025-05-12T16:30Z", '
    b'"event_id": "' + EVENT_ID.upper().encode() + b'", "schema": "session/1"}'
)


def test_a_conflicting_copy_is_rejected_naming_the_line_that_sent_the_first(
    pub_settings: Settings, pub_producer: FakeProducer
) -> None:
    first, changed = _line(), _line(rpe=17)
    with Publisher(pub_settings) as publisher:
        assert isinstance(publisher.publish(first, where=("bad.jsonl", 7)), Accepted)
        outcome = publisher.publish(changed, where=("bad.jsonl", 9))
    assert isinstance(outcome, Rejected)
    assert outcome.reason is Reason.CONFLICTING_DUPLICATE
    assert outcome.event_id == EVENT_ID
    (issue,) = outcome.issues
    assert issue.path == "event_id"
    assert issue.type == "conflicting_duplicate"
    assert "bad.jsonl:7" in issue.message
    assert EVENT_ID in issue.message
    summary = publisher.summary()
    assert (summary.accepted, summary.invalid, summary.sent) == (1, 1, 1)
    assert summary.invalid_by_reason == {Reason.CONFLICTING_DUPLICATE: 1}
    assert pub_producer.values() == [first]  # the conflicting copy is never sent


def test_an_identical_resend_is_still_sent(
    pub_settings: Settings, pub_producer: FakeProducer
) -> None:
    value = _line()
    with Publisher(pub_settings) as publisher:
        assert isinstance(publisher.publish(value, where=("a.jsonl", 1)), Accepted)
        assert isinstance(publisher.publish(value, where=("a.jsonl", 2)), Accepted)
    summary = publisher.summary()
    assert (summary.accepted, summary.invalid, summary.sent, summary.repeated) == (2, 0, 2, 1)
    assert pub_producer.values() == [value, value]  # the platform counts the second a duplicate


def test_the_same_event_spelled_otherwise_is_no_conflict(
    pub_settings: Settings, pub_producer: FakeProducer
) -> None:
    with Publisher(pub_settings) as publisher:
        assert isinstance(publisher.publish(_line()), Accepted)
        outcome = publisher.publish(REFORMATTED)
        assert isinstance(outcome, Accepted), outcome
        # Defaults filled in are content too: an explicit null is the absent field.
        assert isinstance(publisher.publish(_line(adverse_event=None)), Accepted)
    assert (publisher.summary().invalid, publisher.summary().repeated) == (0, 2)
    assert pub_producer.values() == [_line(), REFORMATTED, _line(adverse_event=None)]


def test_the_event_ids_case_does_not_hide_a_conflict(
    pub_settings: Settings, pub_producer: FakeProducer
) -> None:
    with Publisher(pub_settings) as publisher:
        assert isinstance(publisher.publish(_line(), where=("a.jsonl", 1)), Accepted)
        outcome = publisher.publish(_line(event_id=EVENT_ID.upper(), duration_min=45))
    assert isinstance(outcome, Rejected)
    assert outcome.reason is Reason.CONFLICTING_DUPLICATE
    assert "a.jsonl:1" in outcome.message
    assert pub_producer.values() == [_line()]


def test_only_the_first_accepted_copy_is_remembered(
    pub_settings: Settings, pub_producer: FakeProducer
) -> None:
    assessment = {
        "schema": "assessment/1",
        "event_id": EVENT_ID,
        "occurred_at": "2025-05-12T18:30:00+02:00",
        "node_id": "N01",
        "site_id": "N01-S01",
        "participant_id": "P-0123456789ab",
        "instrument": "PHQ9",
        "score": 12,
        "week": 0,
    }
    with Publisher(pub_settings) as publisher:
        # An invalid line is not sent, so its event_id is still free.
        assert isinstance(publisher.publish(_line(rpe=30), where=("a.jsonl", 1)), Rejected)
        assert isinstance(publisher.publish(_line(), where=("a.jsonl", 2)), Accepted)
        conflicts = [
            publisher.publish(_line(rpe=17), where=("b.jsonl", 1)),
            publisher.publish(_line(rpe=17), where=("b.jsonl", 2)),  # still the first's
            publisher.publish(orjson.dumps(assessment), where=("b.jsonl", 3)),  # another type
        ]
        assert isinstance(publisher.publish(_line(), where=("b.jsonl", 4)), Accepted)
        assert isinstance(publisher.publish(_line(event_id=OTHER_ID)), Accepted)
    for outcome in conflicts:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is Reason.CONFLICTING_DUPLICATE
        assert "a.jsonl:2" in outcome.message
    assert pub_producer.values() == [_line(), _line(), _line(event_id=OTHER_ID)]


def test_without_a_where_the_conflict_is_still_caught(
    pub_settings: Settings, pub_producer: FakeProducer
) -> None:
    with Publisher(pub_settings) as publisher:
        publisher.publish(_session())
        outcome = publisher.publish(_session(rpe=17))
    assert isinstance(outcome, Rejected)
    assert outcome.reason is Reason.CONFLICTING_DUPLICATE
    assert outcome.message.startswith(f"event_id: event {EVENT_ID} came earlier in this run")
    assert len(pub_producer.delivered) == 1


def test_offline_the_conflict_is_caught_and_only_the_first_copy_spooled(
    pub_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_module, "connect_producer", lambda *_a, **_k: None)
    monkeypatch.setattr(publisher_module, "existing_topics", input_topics)  # for the flush
    with Publisher(pub_settings) as publisher:
        assert isinstance(publisher.publish(_line(), where=("a.jsonl", 1)), Accepted)
        assert isinstance(publisher.publish(_line(rpe=17), where=("a.jsonl", 2)), Rejected)
        assert isinstance(publisher.publish(REFORMATTED, where=("a.jsonl", 3)), Accepted)
    summary = publisher.summary()
    assert (summary.accepted, summary.invalid, summary.sent, summary.spooled) == (2, 1, 0, 2)
    later = FakeProducer()
    flushed = flush_spool(pub_settings, later)
    assert (flushed.sent, flushed.remaining) == (2, 0)
    assert later.values() == [_line(), REFORMATTED]
    assert spool_of(pub_settings).segment_paths() == []


def test_publish_reports_the_conflicting_line_and_exits_1(
    pub_settings: Settings,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    others = [_line(event_id=f"{n:08x}{OTHER_ID[8:]}", session_number=n) for n in range(1, 7)]
    others[4] = b""  # line 5 blank
    # Line 7 is the event; 8 the same event spelled otherwise, 9 a conflict, 10 a re-send.
    lines = [*others, _line(), REFORMATTED, _line(rpe=17), _line()]
    path = pub_write_lines(lines, name="bad.jsonl")
    status = publish_files(pub_settings, [str(path)], show_progress=False)
    out, err = capsys.readouterr()
    assert status == EXIT_INVALID
    (reported,) = err.splitlines()
    assert reported.startswith(f"{path}:9: conflicting_duplicate: event_id: event {EVENT_ID} ")
    assert out.strip() == (
        "read 9, sent 8, invalid 1, spooled 0, skipped blank 1; 2 repeat an event of this run "
        "(duplicates: the platform drops them)"
    )
    assert sorted(pub_producer.values()) == sorted(
        line for line in lines if line and line != _line(rpe=17)
    )


def test_publish_names_the_earlier_line(
    pub_settings: Settings,
    pub_producer: FakeProducer,
    pub_write_lines: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = pub_write_lines([_line()], name="first.jsonl")
    second = pub_write_lines([b"", _line(rpe=17)], name="second.jsonl")
    status = publish_files(pub_settings, [str(first), str(second)], show_progress=False)
    _out, err = capsys.readouterr()
    assert status == EXIT_INVALID
    assert err.strip() == (
        f"{second}:2: conflicting_duplicate: event_id: event {EVENT_ID} came earlier "
        f"in this run at {first}:1 with other content; send a new event_id"
    )


@pytest.mark.kafka
def test_broker_down_then_flush_delivers_the_first_copy_only(
    pub_kafka_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([_line(), _line(rpe=17), REFORMATTED]) + b"\n")
    down = pub_env(pub_kafka_settings, EXNET_KAFKA_BOOTSTRAP=CLOSED_BOOTSTRAP)

    result = pub_exnet("publish", str(path), env=down, cwd=tmp_path)

    assert result.returncode == EXIT_INVALID  # an invalid line outranks the spooled events
    errors = result.stderr.decode().splitlines()
    assert errors[0].startswith(f"{path}:2: conflicting_duplicate: event_id: ")
    summary = (
        "read 3, sent 0, invalid 1, spooled 2, skipped blank 0; 1 repeat an event of this run "
        "(duplicates: the platform drops them)"
    )
    assert result.stdout.decode().strip() == summary
    flushed = pub_exnet("spool", "flush", env=pub_env(pub_kafka_settings), cwd=tmp_path)
    assert flushed.returncode == 0, flushed.stderr
    records = pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings))
    assert sorted(record.value for record in records) == sorted([_line(), REFORMATTED])


def test_a_run_remembers_a_bounded_number_of_events(
    pub_settings: Settings, pub_producer: FakeProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-running feed stays bounded: past the limit, events are checked against the
    ones remembered, and not remembered themselves."""
    monkeypatch.setattr(publisher_module, "REMEMBERED_EVENTS", 1)
    other = "0b7d3c1e-5a2f-4e6d-8c9b-1a2b3c4d5e6f"
    with Publisher(pub_settings) as publisher:
        assert isinstance(publisher.publish(_line()), Accepted)
        assert isinstance(publisher.publish(_line(event_id=other)), Accepted)  # not remembered
        assert isinstance(publisher.publish(_line(event_id=other, rpe=17)), Accepted)
        assert isinstance(publisher.publish(_line(rpe=17)), Rejected)  # the first one is
