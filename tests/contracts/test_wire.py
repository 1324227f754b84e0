"""What the stages produce: keys, values and headers (no broker)."""

from __future__ import annotations

import json
import zoneinfo
from datetime import UTC, date, datetime

import orjson
import pytest

from contracts import headers as H
from contracts.registry import DEMO_REGISTRY, load_registry
from contracts.topics import Topic
from contracts.validation import Accepted, Origin, Rejected, Validator
from contracts.wire import (
    Route,
    accepted_message,
    conflict_message,
    deadletter_message,
    local_date,
    read_route,
    read_validated,
    sent_utc_offset,
    validated_message,
    validated_partition,
)
from sinks.rows import FACT_COLUMNS

NOW = datetime(2026, 6, 1, tzinfo=UTC)
EVENT = {
    "schema": "assessment/1",
    "event_id": "A6E2F0C4-1111-4222-8333-444455556666",
    "occurred_at": "2026-05-01T10:00:00+02:00",
    "node_id": "N01",
    "site_id": "N01-S01",
    "participant_id": "P-0123456789",
    "instrument": "PHQ9",
    "score": 12,
    "week": 4,
}


def _accepted() -> tuple[Accepted, bytes]:
    raw = orjson.dumps(EVENT)
    outcome = Validator(load_registry(DEMO_REGISTRY)).validate_message(
        raw, b"P-0123456789", Origin("exnet.assessment", 3, 77), NOW
    )
    assert isinstance(outcome, Accepted)
    return outcome, raw


def test_validated_messages_carry_the_fact_row_its_route_and_the_original() -> None:
    accepted, raw = _accepted()
    key, value, headers = validated_message(accepted, raw, 1_700_000_000_000)
    assert key == b"a6e2f0c4-1111-4222-8333-444455556666"  # every copy meets in one partition
    record = read_validated(key, value, headers)
    assert record.event_id == "a6e2f0c4-1111-4222-8333-444455556666"
    row = orjson.loads(value)
    assert row["occurred_at"] == "2026-05-01T08:00:00Z"  # the canonical event, in UTC
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == (
        "exnet.assessment",
        3,
        77,
    )
    assert value.startswith(accepted.canonical_json()[:-1])
    assert record.route == Route(
        accepted.fingerprint(),
        "assessment",
        "P-0123456789",
        "N01",
        "N01-S01",
        datetime(2026, 5, 1, 8, tzinfo=UTC).timestamp(),
        Origin("exnet.assessment", 3, 77),
        1_700_000_000_000,
    )
    assert record.original == raw


def test_the_fact_row_has_every_column_of_its_table_but_ingested_at() -> None:
    raw = orjson.dumps(
        {
            **{k: v for k, v in EVENT.items() if k not in ("instrument", "score", "week")},
            "schema": "assay/1",
            "specimen_id": "SP-1",
            "specimen_type": "serum",
            "timepoint": "baseline",
            "analyte": "cortisol",
            "value": 2.0,
            "unit": "ug/dL",
            "lab_id": "L1",
            "below_lloq": False,
        }
    )
    assay = Validator(None).validate_message(raw, b"P-0123456789", Origin("exnet.assay", 1, 9), NOW)
    assert isinstance(assay, Accepted)
    accepted, _ = _accepted()
    for outcome, event_type in ((assay, "assay"), (accepted, "assessment")):
        _, value, _ = validated_message(outcome, raw, None)
        row = orjson.loads(value)
        assert sorted(row) == sorted(c for c in FACT_COLUMNS[event_type] if c != "ingested_at")
    row = orjson.loads(validated_message(assay, raw, None)[1])
    assert row["value_canonical"] == 2.0 * 27.59 and row["unit_canonical"] == "nmol/L"


def test_a_message_without_a_kafka_timestamp_reads_back_without_one() -> None:
    accepted, raw = _accepted()
    record = read_validated(*validated_message(accepted, raw, None))
    assert record.route.timestamp_ms is None


def test_accepted_messages_are_keyed_by_participant_and_pass_the_row_and_route_on() -> None:
    accepted, raw = _accepted()
    record = read_validated(*validated_message(accepted, raw, 1_700_000_000_000))
    key, value, headers = accepted_message(record)
    assert key == b"P-0123456789"  # all of a participant's events meet in one partition
    assert value is record.value  # passed on, not parsed
    assert read_route(headers) == record.route
    assert headers == [(H.ROUTE, record.route_header)]  # no copy of the original onward


def test_validated_partition_is_stable_and_spread() -> None:
    ids = [f"{n:08x}-1111-4222-8333-444455556666".encode() for n in range(600)]
    partitions = [validated_partition(event_id, 6) for event_id in ids]
    assert partitions == [validated_partition(event_id, 6) for event_id in ids]
    assert set(partitions) == set(range(6))
    assert max(partitions.count(p) for p in range(6)) < 2 * 600 / 6


def test_deadletter_message_has_the_spec_headers_and_original_bytes() -> None:
    raw = orjson.dumps({**EVENT, "score": 99})
    outcome = Validator(None).validate_message(
        raw, b"P-0123456789", Origin("exnet.assessment", 1, 5), NOW
    )
    assert isinstance(outcome, Rejected)
    message = deadletter_message(outcome, raw, b"P-0123456789", NOW, None)
    headers = dict(message.headers)
    assert message.topic is Topic.DEADLETTER and message.value == raw
    assert headers[H.REASON] == b"invalid_field"
    assert json.loads(headers[H.DETAIL])["errors"][0]["path"] == "score"
    assert headers[H.SOURCE_OFFSET] == b"5"
    assert headers[H.EVENT_ID] == b"a6e2f0c4-1111-4222-8333-444455556666"


def test_a_tombstones_deadletter_copy_is_a_tombstone_not_an_empty_value() -> None:
    origin = Origin("exnet.session", 0, 9)
    for original in (None, b""):
        outcome = Validator(None).validate_message(original, b"P-0123456789", origin, NOW)
        assert isinstance(outcome, Rejected) and outcome.reason.value == "malformed_json"
        message = deadletter_message(outcome, original, b"P-0123456789", NOW, None)
        assert message.value is original


def test_conflict_message_points_at_the_first_accepted_copy() -> None:
    accepted, raw = _accepted()
    record = read_validated(*validated_message(accepted, raw, None))
    message = conflict_message(record, Origin("exnet.assessment", 0, 1), NOW)
    headers = dict(message.headers)
    detail = json.loads(headers[H.DETAIL])
    assert message.value == raw and message.key == b"P-0123456789"
    assert detail["reason"] == "conflicting_duplicate"
    assert "partition 0 offset 1" in detail["errors"][0]["message"]
    assert headers[H.SOURCE_OFFSET] == b"77"  # the conflicting message's own origin


def test_a_route_header_of_another_format_names_the_upgrade() -> None:
    with pytest.raises(ValueError, match="exnet up --drain"):
        Route.decode(b"")
    with pytest.raises(ValueError, match="drain the pipeline"):
        Route.decode(b"abc 3 exnet.session")


@pytest.mark.parametrize(
    ("written", "minutes"),
    [
        (b'{"occurred_at":"2025-05-12T22:30:00Z"}', 0),
        (b'{"occurred_at" : "2025-05-12T22:30:00.123+02:00"}', 120),
        (b'{"a":1,"occurred_at":"2025-05-12T22:30:00-05:30"}', -330),
        (b'{"occurred_at":"2025-05-12T22:30:00-12:00"}', -720),
        # Escapes are legal JSON: read by parsing, not from the bytes.
        (b'{"occurred_at":"2025-05-12T22:30:00\\u002B14:00"}', 840),
        (b'{"occurred\\u005fat":"2025-05-12T22:30:00-03:00"}', -180),
    ],
)
def test_the_offset_the_site_sent_is_read_from_its_bytes(written: bytes, minutes: int) -> None:
    assert sent_utc_offset(written) == minutes


def test_the_local_date_is_the_sites_zone_else_the_offset_it_sent() -> None:
    """22:30 on 12 May in Chicago is 03:30 on 13 May in UTC (SPEC §3)."""
    at = datetime(2025, 5, 13, 3, 30, tzinfo=UTC)
    chicago = zoneinfo.ZoneInfo("America/Chicago")
    assert local_date(at, -300, chicago) == date(2025, 5, 12)
    assert local_date(at, -300, None) == date(2025, 5, 12)
    assert local_date(at, 0, None) == date(2025, 5, 13)
    # The zone wins over an offset a site's clock got wrong (CDT is -05:00, not +02:00).
    assert local_date(at, 120, chicago) == date(2025, 5, 12)


def test_the_fact_row_keeps_the_offset_and_the_local_date() -> None:
    raw = orjson.dumps({**EVENT, "occurred_at": "2025-05-12T22:30:00-05:00"})
    outcome = Validator(None).validate_message(
        raw, b"P-0123456789", Origin("exnet.assessment", 1, 9), NOW
    )
    assert isinstance(outcome, Accepted)
    _, value, _ = validated_message(outcome, raw, None)
    row = orjson.loads(value)
    assert row["occurred_at"] == "2025-05-13T03:30:00Z"
    assert (row["utc_offset_min"], row["local_date"]) == (-300, "2025-05-12")
    berlin = {outcome.event.site_id: zoneinfo.ZoneInfo("Europe/Berlin")}
    _, value, _ = validated_message(outcome, raw, None, berlin)
    assert orjson.loads(value)["local_date"] == "2025-05-13"
