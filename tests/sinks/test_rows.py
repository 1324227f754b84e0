"""Rows from messages: the pure stage of the sink."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson

from contracts import headers as H
from sinks.rows import REJECTED_COLUMNS, rejected_row

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


def test_a_rejection_goes_to_the_site_its_bytes_name_even_when_they_are_not_json() -> None:
    headers = {
        H.REASON: b"malformed_json",
        H.SOURCE_TOPIC: b"exnet.session",
        H.SOURCE_PARTITION: b"0",
        H.SOURCE_OFFSET: b"3",
        H.REJECTED_AT: b"2026-06-01T00:00:00+00:00",
        H.DETAIL: b'{"reason":"malformed_json","message":"x","errors":[]}',
    }

    def sites(payload: bytes) -> tuple[str | None, str | None]:
        row = dict(zip(REJECTED_COLUMNS, rejected_row(payload, headers, NOW), strict=True))
        return row["node_id"], row["site_id"]

    assert sites(b'[{"node_id": "N02", "site_id": "N02-S01", "rpe": 9}]') == ("N02", "N02-S01")
    assert sites(b"{'schema': 'session/1', 'site_id': 'N03-S02'}") == ("N03", "N03-S02")
    assert sites(b'{"site_id": "N01-S02", "node_id": "N09"') == ("N01", "N01-S02")
    assert sites(b'{"site_id": "Jane Doe"}') == (None, None)
    assert sites(b"not json at all") == (None, None)


def test_identifiers_never_reach_the_analysts_table() -> None:
    """Unknown fields and identifier fields that failed their rules are redacted."""
    errors = [
        {"path": "patient_name", "type": "extra_forbidden", "message": "x"},
        {"path": "participant_id", "type": "string_pattern_mismatch", "message": "x"},
        {"path": "batch_id", "type": "string_pattern_mismatch", "message": "x"},
        {"path": "rpe", "type": "less_than_equal", "message": "x"},
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
        "patient_name": "<redacted>",
        "notes": "<redacted>",  # unknown, whether it failed or not
        "batch_id": "<redacted>",
        "site_id": "N01-S01",
        "rpe": 99,  # the value to fix, no identifier
        "analyte": "IL-6",
    }
    assert b"Jane" not in row["payload"] and b"00412345" not in row["payload"]
    assert row["payload_sha256"] == hashlib.sha256(payload).hexdigest()
