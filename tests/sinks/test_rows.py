"""Rows from messages: the pure stage of the sink."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import pytest

from contracts import headers as H
from exnet.metrics import VIEW_REFUSALS
from sinks.rows import (
    REDACTED,
    REJECTED_COLUMNS,
    VIEW_COLUMNS,
    RefusedViewRow,
    ViewRow,
    redacted_payload,
    rejected_row,
    view_row,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_rejected_row_keeps_the_bytes_and_reads_site_ids_only_when_they_look_like_ids() -> None:
    headers = {
        H.REASON: b"unknown_site",
        H.SOURCE_TOPIC: b"exnet.session",
        H.SOURCE_PARTITION: b"2",
        H.SOURCE_OFFSET: b"11",
        H.REJECTED_AT: b"2026-06-01T00:00:00+00:00",
        H.DETAIL: b'{"reason":"unknown_site","message":"site_id: nope","errors":[]}',
    }
    payload = orjson.dumps({"node_id": "N09", "site_id": "x" * 500})
    row = dict(zip(REJECTED_COLUMNS, rejected_row(payload, headers, NOW), strict=True))
    assert row["payload"] == payload and row["reason"] == "unknown_site"  # nothing to redact
    assert row["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert row["message"] == "site_id: nope" and row["event_id"] is None
    assert row["node_id"] == "N09" and row["site_id"] is None  # no free text smuggled in
    garbage = dict(zip(REJECTED_COLUMNS, rejected_row(b"\xff\xfe", headers, NOW), strict=True))
    assert garbage["payload"] == b'"<redacted>"'  # not JSON: nothing can be told apart
    assert garbage["payload_sha256"] == hashlib.sha256(b"\xff\xfe").hexdigest()


#: A dead-letter message's headers for bytes that are no JSON object.
MALFORMED: Final = {
    H.REASON: b"malformed_json",
    H.SOURCE_TOPIC: b"exnet.session",
    H.SOURCE_PARTITION: b"0",
    H.SOURCE_OFFSET: b"3",
    H.REJECTED_AT: b"2026-06-01T00:00:00+00:00",
    H.DETAIL: b'{"reason":"malformed_json","message":"x","errors":[]}',
}


def _malformed_row(payload: bytes, headers: Mapping[str, bytes] = MALFORMED) -> dict[str, Any]:
    return dict(zip(REJECTED_COLUMNS, rejected_row(payload, headers, NOW), strict=True))


def test_a_rejection_goes_to_the_site_its_bytes_name_even_when_they_are_not_json() -> None:
    def sites(payload: bytes) -> tuple[str | None, str | None]:
        row = _malformed_row(payload)
        return row["node_id"], row["site_id"]

    assert sites(b'[{"node_id": "N02", "site_id": "N02-S01", "rpe": 9}]') == ("N02", "N02-S01")
    assert sites(b"{'schema': 'session/1', 'site_id': 'N03-S02'}") == ("N03", "N03-S02")
    assert sites(b'{"site_id": "N01-S02", "node_id": "N09"') == ("N01", "N01-S02")
    assert sites(b'{"site_id": "Jane Doe"}') == (None, None)
    assert sites(b"not json at all") == (None, None)


def test_a_malformed_rejection_keeps_the_event_id_its_bytes_name() -> None:
    # NaN, a byte-order mark, data after the object: the validator reads no event, yet
    # the site's work list needs the record's id (an outside reviewer's find, 2026-12-05).
    uuid = "6D1F8F4E-0000-4000-8000-00000000000A"

    def event_id(payload: bytes, given: dict[str, bytes] | None = None) -> str | None:
        found = _malformed_row(payload, {**MALFORMED, **(given or {})})["event_id"]
        assert found is None or isinstance(found, str)
        return found

    assert event_id(b'{"event_id": "%s", "rpe": NaN}' % uuid.encode()) == uuid.lower()
    assert event_id(b'\xef\xbb\xbf{"event_id":"%s"}' % uuid.encode()) == uuid.lower()
    assert event_id(b"{'event_id': '%s'} trailing" % uuid.encode()) == uuid.lower()
    assert event_id(b'{"event_id": "00000000-0000-0000-0000-000000000000", "x": NaN}') is None
    assert event_id(b'{"event_id": "Jane Doe", "x": NaN}') is None
    # The validator's (a parsed event's) wins.
    assert event_id(b'{"event_id": "%s"}' % uuid.encode(), {H.EVENT_ID: b"abc"}) == "abc"


def test_identifiers_never_reach_the_analysts_table() -> None:
    """Unknown fields, identifier fields that failed their patterns and text in any field
    that failed are redacted; a failing number is kept."""
    errors = [
        {"path": "patient_name", "type": "extra_forbidden", "message": "x"},
        {"path": "participant_id", "type": "string_pattern_mismatch", "message": "x"},
        {"path": "batch_id", "type": "string_pattern_mismatch", "message": "x"},
        {"path": "rpe", "type": "less_than_equal", "message": "x"},
        {"path": "status", "type": "enum", "message": "x"},
        {"path": "occurred_at", "type": "datetime_from_date_parsing", "message": "x"},
        {"path": "duration_min", "type": "int_type", "message": "x"},
        {"path": "adverse_event", "type": "model_type", "message": "x"},
        {"path": "", "type": "value_error", "message": "the whole message"},
    ]
    payload = orjson.dumps(
        {
            "schema": "assay/1",
            "participant_id": "Jane Doe",
            "patient_name": "Jane Doe",
            "notes": {"mrn": "00412345"},
            "batch_id": "Smith, Ann DOB 1979-03-02 MRN 00412345",
            "site_id": "N01-S01",
            "rpe": 99,
            "analyte": "IL-6",
            "status": "Jane Doe DOB 1970",
            "occurred_at": "Ann Smith 2025-06-01",
            "duration_min": "MRN 00412345",
            "adverse_event": ["Jane", "Doe"],
            "modality": "aerobic",
        }
    )
    headers = {
        H.REASON: b"invalid_field",
        H.SOURCE_TOPIC: b"exnet.assay",
        H.SOURCE_PARTITION: b"1",
        H.SOURCE_OFFSET: b"5",
        H.REJECTED_AT: b"2026-06-01T00:00:00+00:00",
        H.DETAIL: orjson.dumps({"reason": "invalid_field", "message": "x", "errors": errors}),
    }
    row = dict(zip(REJECTED_COLUMNS, rejected_row(payload, headers, NOW), strict=True))
    stored = orjson.loads(row["payload"])
    assert stored == {
        "schema": "assay/1",
        "participant_id": "<redacted>",
        "<unknown field 1>": "<redacted>",  # patient_name: a name is free text too
        "<unknown field 2>": "<redacted>",  # notes: unknown, whether it failed or not
        "batch_id": "<redacted>",
        "site_id": "N01-S01",
        "rpe": 99,  # the value to fix, no identifier
        "analyte": "IL-6",
        "status": "<redacted>",  # text where an enum was due: free text
        "occurred_at": "<redacted>",
        "duration_min": "<redacted>",  # text where a number was due
        "adverse_event": "<redacted>",
        "modality": "aerobic",  # known and not failing: kept
    }
    assert b"Jane" not in row["payload"] and b"00412345" not in row["payload"]
    assert b"Smith" not in row["payload"]
    assert row["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert orjson.loads(row["detail"])["errors"][0]["path"] == "<unknown field 1>"


def test_an_unknown_field_s_name_never_reaches_the_analysts_table() -> None:
    """A site's member name is free text ("Ann Smith MRN 12345678": 1): every rejection
    names it <unknown field n> in payload, detail and message; the dead-letter
    topic's detail keeps it for the site (`exnet rejects --original`)."""
    sent: dict[str, object] = {
        "schema": "enrollment/9",
        "Jane Roe MRN 556": 1,
        "site_id": "N01-S01",
        "status": "screened",
    }
    errors = [
        {"path": "schema", "type": "unknown_schema", "message": "'enrollment/9' is not it"},
        {"path": "Jane Roe MRN 556", "type": "extra_forbidden", "message": "unknown field"},
        {"path": "", "type": "repeated_name", "message": "the member name 'Jane Roe MRN 556'"},
    ]
    detail = {
        "reason": "unknown_schema",
        "message": "; ".join(f"{e['path']}: {e['message']}" for e in errors),
        "errors": errors,
    }
    headers = {
        H.REASON: b"unknown_schema",
        H.SOURCE_TOPIC: b"exnet.enrollment",
        H.SOURCE_PARTITION: b"0",
        H.SOURCE_OFFSET: b"3",
        H.REJECTED_AT: b"2026-06-01T00:00:00+00:00",
        H.DETAIL: orjson.dumps(detail),
    }
    row = dict(zip(REJECTED_COLUMNS, rejected_row(orjson.dumps(sent), headers, NOW), strict=True))
    for column in ("payload", "detail", "message"):
        text = row[column] if isinstance(row[column], str) else row[column].decode()
        assert "Jane" not in text and "556" not in text, column
    assert orjson.loads(row["payload"]) == {
        "schema": "enrollment/9",
        "<unknown field 1>": REDACTED,
        "site_id": "N01-S01",
        "status": REDACTED,  # the fields were not judged: no text known to be safe
    }
    assert row["message"] == (
        "schema: 'enrollment/9' is not it; <unknown field 1>: unknown field; "
        "the member name '<unknown field 1>'"
    )


# --- the stream-written views' messages -------------------------------------------------


def _node_row(**change: object) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(VIEW_COLUMNS["node_summary"], 0)
    row |= {
        "node_id": "N01",
        "node_name": "North",
        "exercise_minutes": 42.5,
        "updated_at": "2026-11-30T17:50:01.123+00:00",
        "version": 7,
        "is_deleted": 0,
    }
    return row | change


def _check(table: bytes | None, row: object) -> ViewRow | RefusedViewRow:
    headers = {H.TABLE: table} if table is not None else {}
    return view_row(headers, row if isinstance(row, bytes) else orjson.dumps(row))


def test_a_view_row_passes_as_it_came() -> None:
    value = orjson.dumps(_node_row())
    assert view_row({H.TABLE: b"node_summary"}, value) == ViewRow("node_summary", value)
    daily: dict[str, object] = dict.fromkeys(VIEW_COLUMNS["node_daily"], 0)
    daily |= {"node_id": "N01", "day": "2026-11-30", "exercise_minutes": 3, "is_deleted": 1}
    daily["updated_at"] = "2026-11-30T17:50:01.123+00:00"
    assert isinstance(_check(b"node_daily", daily), ViewRow)  # minutes may be an integer
    network: dict[str, object] = dict.fromkeys(VIEW_COLUMNS["network_summary"], 1)
    network["updated_at"] = "2026-11-30T17:50:01.123+00:00"
    assert isinstance(_check(b"network_summary", network), ViewRow)


@pytest.mark.parametrize(
    ("table", "row", "reason", "says"),
    [
        (None, _node_row(), "unknown_table", "no exnet-table header"),
        (b"node_facts", _node_row(), "unknown_table", "'node_facts'"),
        (b"node_summary;DROP", _node_row(), "unknown_table", "is not one of"),
        (b"arm_summary", _node_row(), "invalid_row", "columns missing ['adjunct'"),
        (b"node_summary", _node_row(extra=1), "invalid_row", "not columns ['extra']"),
        (b"node_summary", {"node_id": "N01"}, "invalid_row", "columns missing"),
        (b"node_summary", _node_row(screened="4"), "invalid_row", "column screened holds str"),
        (b"node_summary", _node_row(screened=-1), "invalid_row", "column screened"),
        (
            b"node_summary",
            orjson.dumps(_node_row()).replace(b'"screened":0', b'"screened":18446744073709551616'),
            "invalid_row",
            "column screened",
        ),
        (b"node_summary", _node_row(screened=True), "invalid_row", "column screened holds bool"),
        (b"node_summary", _node_row(version=1.5), "invalid_row", "column version"),
        (b"node_summary", _node_row(is_deleted=2), "invalid_row", "column is_deleted"),
        (b"node_summary", _node_row(node_id=1), "invalid_row", "column node_id holds int"),
        (b"node_summary", _node_row(exercise_minutes="1"), "invalid_row", "exercise_minutes"),
        (b"node_summary", _node_row(updated_at="yesterday"), "invalid_row", "updated_at"),
        (b"node_summary", [_node_row()], "invalid_row", "not one JSON object"),
    ],
)
def test_a_message_that_is_no_row_of_a_view_table_is_refused(
    table: bytes | None, row: object, reason: str, says: str
) -> None:
    refused = _check(table, row)
    assert isinstance(refused, RefusedViewRow)
    assert refused.reason == reason and reason in VIEW_REFUSALS
    assert says in refused.detail, refused.detail


def test_a_view_message_without_a_value_or_json_is_refused() -> None:
    headers = {H.TABLE: b"node_daily"}
    assert view_row(headers, None) == RefusedViewRow(
        "invalid_row", "node_daily: no value (a tombstone)"
    )
    assert view_row(headers, b"{nope") == RefusedViewRow(
        "invalid_row", "node_daily: the value is not JSON"
    )
    bad_day: dict[str, object] = dict.fromkeys(VIEW_COLUMNS["node_daily"], 0)
    bad_day |= {"node_id": "N01", "day": "30.11.2026", "updated_at": "2026-11-30T17:50:01+00:00"}
    refused = _check(b"node_daily", bad_day)
    assert isinstance(refused, RefusedViewRow) and "column day" in refused.detail


def _stored(reason: str, document: Mapping[str, object], errors: list[dict[str, str]]) -> object:
    detail = orjson.dumps({"reason": reason, "message": "x", "errors": errors})
    return orjson.loads(redacted_payload(orjson.dumps(document), orjson.loads(detail)))


def test_a_message_whose_fields_were_not_judged_keeps_no_text_but_names_and_ids() -> None:
    """too_large, malformed_json (a repeated name) and unknown_schema (another topic's
    event) name no field, so no field's text is known to be safe."""
    document = {
        "schema": "enrollment/1",
        "event_id": "8e1d9b55-62c7-4d2f-8b81-4f1f3c9e7d22",
        "participant_id": "P-0123456789ab",
        "site_id": "N01-S01",
        "node_id": "Jane Doe",
        "status": "Jane Doe DOB 1970",
        "notes": ["MRN 00412345"],
        "age_band": "40-49",
        "rpe": 9,
    }
    for reason, path in (("unknown_schema", "schema"), ("malformed_json", ""), ("too_large", "")):
        stored = _stored(reason, document, [{"path": path, "type": reason, "message": "x"}])
        assert stored == {
            **document,
            "node_id": REDACTED,  # no node id: may be a name
            "status": REDACTED,
            "notes": REDACTED,
            "age_band": REDACTED,  # an enum's text, not judged: not known to be one
        }, reason
    named = _stored("unknown_schema", {**document, "schema": "Jane Doe"}, [])
    assert isinstance(named, dict) and named["schema"] == REDACTED


def test_a_well_formed_value_a_rule_refused_is_kept() -> None:
    """A time in the future, an enum value a cross-field rule refused: they matched their
    own rules, so they hold no free text."""
    document = {"occurred_at": "2099-01-01T00:00:00Z", "reason": "participant_choice"}
    errors = [
        {"path": "occurred_at", "type": "future_timestamp", "message": "x"},
        {"path": "reason", "type": "cross_field", "message": "x"},
    ]
    assert _stored("future_timestamp", document, errors) == document


@pytest.mark.parametrize(
    ("reason", "path", "value"),
    [
        ("unknown_site", "site_id", "N01-S99"),
        ("unknown_site", "node_id", "N99X"),
        ("key_mismatch", "participant_id", "P-3f5fd4176230"),
    ],
)
def test_an_identifier_that_matched_its_pattern_is_kept_when_the_site_or_key_refused_it(
    reason: str, path: str, value: str
) -> None:
    """SPEC §4 redacts an identifier that failed its pattern. These passed theirs (the
    key and the site are checked after the fields): the payload hid them while the
    row's site_id and message showed them (a reviewer's find)."""
    document = {"participant_id": "P-0123456789ab", "site_id": "N01-S01", path: value}
    errors = [{"path": path, "type": reason, "message": "x"}]
    assert _stored(reason, document, errors) == document


def test_a_time_before_the_earliest_date_is_redacted() -> None:
    # A date of birth typed into occurred_at is well formed, and was kept.
    document = {"occurred_at": "1979-03-02T00:00:00Z", "status": "screened"}
    errors = [{"path": "occurred_at", "type": "before_earliest_date", "message": "x"}]
    stored = _stored("invalid_field", document, errors)
    assert stored == {"occurred_at": REDACTED, "status": "screened"}


def test_a_number_beyond_a_double_keeps_the_rest_of_the_document() -> None:
    """1e400 is JSON (infinity to its readers) that orjson refuses: the payload was the
    whole document redacted, and `exnet rejects` showed no participant."""
    payload = (
        b'{"schema":"assay/1","participant_id":"P-0123456789ab","value":1e400,'
        b'"session_number":123456789012345678901234567890,"patient":"Jane Doe"}'
    )
    detail = {"reason": "invalid_field", "errors": [{"path": "value", "type": "finite_number"}]}
    stored = orjson.loads(redacted_payload(payload, detail))
    assert stored == {
        "schema": "assay/1",
        "participant_id": "P-0123456789ab",
        "value": "inf",  # the number it reads as, kept: the value to fix
        "session_number": 1.2345678901234568e29,
        "patient": REDACTED,
    }


def test_integers_of_hundreds_and_thousands_of_digits_keep_the_document() -> None:
    for digits in (400, 5000):  # past a double; past Python's int digit limit
        payload = b'{"schema":"assessment/1","score":%s,"patient":"Jane"}' % (b"9" * digits)
        detail = {"reason": "invalid_field", "errors": [{"path": "score", "type": "x"}]}
        stored = orjson.loads(redacted_payload(payload, detail))
        assert stored == {"schema": "assessment/1", "score": "inf", "patient": REDACTED}, digits


@pytest.mark.parametrize(
    ("reason", "change", "key"),
    [
        ("unknown_site", {"site_id": "N01-S99"}, None),
        ("unknown_site", {"node_id": "N99X", "site_id": "N99X-S01"}, None),
        ("key_mismatch", {}, b"P-00000000ff"),
    ],
)
def test_a_real_rejection_by_site_or_key_keeps_its_identifiers_in_the_payload(
    reason: str, change: dict[str, str], key: bytes | None
) -> None:
    """The same, through the validator's own rejection and dead-letter message: the
    error types the sink keys on are the ones the validator writes."""
    from contracts import Origin
    from contracts.registry import DEMO_REGISTRY, load_registry
    from contracts.validation import Rejected, Validator
    from contracts.wire import deadletter_message
    from producers import SimulationConfig, generate

    registry = load_registry(DEMO_REGISTRY)
    sent = next(
        m
        for m in generate(registry, SimulationConfig(participants=3, seed=5)).messages
        if m.topic.value == "exnet.session"
    )
    document = {**orjson.loads(sent.value), **change}
    value = orjson.dumps(document)
    outcome = Validator(registry, "").validate_message(
        value, key or document["participant_id"].encode(), Origin("exnet.session", 0, 7), NOW
    )
    assert isinstance(outcome, Rejected) and outcome.reason.value == reason
    dead = deadletter_message(outcome, value, key, NOW, None)
    row = dict(
        zip(REJECTED_COLUMNS, rejected_row(dead.value, dict(dead.headers), NOW), strict=True)
    )
    assert orjson.loads(row["payload"]) == document
