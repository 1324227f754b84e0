"""``exnet rejects`` on known input (text, JSON, CSV work list), and a fix through the pipeline."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from contracts.errors import UserError
from contracts.topics import Topic, topic_name
from exnet.ops._sql import query_rows
from exnet.ops.rejects import (
    WORKLIST_COLUMNS,
    RejectFilter,
    _same,
    find_rejects,
    parse_moment,
    worklist_rows,
)
from sinks.client import connect

from .conftest import REJECTIONS, Seeded
from .helpers import exnet_subprocess, ops_cli

if TYPE_CHECKING:
    from tests.conftest import SettingsFactory


def test_parse_moment_forms() -> None:
    now = datetime(2025, 3, 3, 12, tzinfo=UTC)
    assert parse_moment("24h", now) == now - timedelta(hours=24)
    assert parse_moment("7d", now) == now - timedelta(days=7)
    assert parse_moment("30m", now) == now - timedelta(minutes=30)
    assert parse_moment("2w", now) == now - timedelta(weeks=2)
    assert parse_moment("2025-03-01", now) == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_moment("2025-03-01T10:00Z", now) == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert parse_moment("2025-03-01T10:00+02:00", now) == datetime(2025, 3, 1, 8, tzinfo=UTC)
    with pytest.raises(UserError, match="neither an ISO date"):
        parse_moment("yesterday", now)
    with pytest.raises(UserError, match="unknown reason bogus"):
        RejectFilter(reasons=("bogus",))


@pytest.mark.clickhouse
def test_filters_and_text_output(seeded: Seeded) -> None:
    settings = seeded.settings
    everything = find_rejects(settings, RejectFilter())
    assert everything.matched == len(REJECTIONS)
    # newest first
    assert [m.source_offset for m in everything.messages] == [11, 5, 7, 2]

    def offsets(**criteria: Any) -> list[int]:
        return [m.source_offset for m in find_rejects(settings, RejectFilter(**criteria)).messages]

    assert offsets(sites=("N01-S01",)) == [5]
    assert offsets(nodes=("N01",)) == [5, 7]
    assert offsets(reasons=("invalid_field",)) == [11, 5]
    assert offsets(reasons=("malformed_json", "unknown_site")) == [7, 2]
    assert offsets(since=seeded.now - timedelta(hours=1, minutes=30)) == [11, 5]
    assert offsets(until=seeded.now - timedelta(days=1)) == [2]
    assert offsets(sites=("O'Hara\\",)) == []  # quoted, never SQL
    limited = find_rejects(settings, RejectFilter(limit=1))
    assert (limited.matched, len(limited.messages)) == (4, 1)

    first = find_rejects(settings, RejectFilter(sites=("N01-S01",))).messages[0]
    assert first.event_id == "6d1f8f4e-0000-4000-8000-000000000001"
    assert [(i.path, i.message) for i in first.issues] == [
        ("session_number", "Input should be less than or equal to 500"),
        ("duration_min", "required when status is attended"),
    ]
    assert (first.source_topic, first.source_partition) == ("exnet.session", 0)

    result = ops_cli(settings, "rejects", "--node", "N01", "--since", "1d")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "2 rejected message(s) match" in text
    assert "session_number: Input should be less than or equal to 500 (sent 900)" in text
    assert "add duration_min (required when status is attended)" in text
    assert "site 'N01-S09' is not registered: correct node_id/site_id" in text
    assert "exnet.session[0]@5" in text and "exnet.enrollment[1]@7" in text
    assert "6d1f8f4e-0000-4000-8000-000000000002" in text
    assert "N02-S01" not in text

    none = ops_cli(settings, "rejects", "--site", "N01-S02")
    assert none.exit_code == 0 and "no rejected messages match" in none.stdout

    # A site the registry lacks but a rejection names (unknown_site) is listed, not
    # refused as a typo; one that nothing names still is.
    unregistered = ops_cli(settings, "rejects", "--site", "N01-S09")
    assert unregistered.exit_code == 0, unregistered.output
    assert "1 rejected message(s) match" in unregistered.stdout
    assert "exnet.enrollment[1]@7" in unregistered.stdout
    typo = ops_cli(settings, "rejects", "--site", "N01-S08")
    assert isinstance(typo.exception, UserError)  # exit status 2 from `exnet`
    assert "site 'N01-S08' is not in the network registry" in str(typo.exception)


@pytest.mark.clickhouse
def test_of_a_batch_rejected_together_the_newest_offsets_come_first(seeded: Seeded) -> None:
    # A batch's rejections share their rejected_at: --limit kept its oldest offsets
    # until 2026-12-05 (an outside reviewer's find).
    settings = seeded.settings
    client = connect(settings)
    try:
        kept = client.query("SELECT * FROM rejected_events FINAL WHERE source_offset = 11")
        columns = list(kept.column_names)
        row = dict(zip(columns, kept.result_rows[0], strict=True))
        batch = [{**row, "rejected_at": seeded.now, "source_offset": n} for n in (40, 41, 42)]
        client.insert(
            "rejected_events",
            [[r[c] for c in columns] for r in batch],
            column_names=columns,
            settings={"async_insert": 0},
        )
    finally:
        client.close()
    newest = find_rejects(settings, RejectFilter(limit=2))
    assert [m.source_offset for m in newest.messages] == [42, 41]


def test_csv_work_list_and_json(seeded: Seeded, tmp_path: Path) -> None:
    settings = seeded.settings
    out = tmp_path / "worklist.csv"
    result = ops_cli(settings, "rejects", "--csv", "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert tuple(rows[0]) == WORKLIST_COLUMNS
    # one row per failing field, sorted by site (unreadable site first), then time
    assert [(r["site_id"], r["field_path"]) for r in rows] == [
        ("", ""),
        ("N01-S01", "session_number"),
        ("N01-S01", "duration_min"),
        ("N01-S09", "site_id"),
        ("N02-S01", "score"),
    ]
    session = rows[1]
    assert session["node_id"] == "N01"
    assert session["reason"] == "invalid_field"
    assert session["event_id"] == "6d1f8f4e-0000-4000-8000-000000000001"
    assert session["message"] == "Input should be less than or equal to 500"
    assert session["error_type"] == "less_than_equal"
    assert (session["source_topic"], session["source_partition"], session["source_offset"]) == (
        "exnet.session",
        "0",
        "5",
    )
    assert json.loads(session["payload"]) == {"schema": "session/1", "session_number": 900}
    assert rows[0]["payload"] == "{not json \ufffd"  # invalid UTF-8 replaced, row kept
    assert rows[1]["rejected_at"] == (seeded.now - timedelta(minutes=50)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )

    to_stdout = ops_cli(settings, "rejects", "--csv", "--site", "N02-S01")
    assert to_stdout.exit_code == 0, to_stdout.output
    assert to_stdout.stdout.splitlines()[1].startswith("N02-S01,N02,")

    as_json = ops_cli(settings, "rejects", "--json", "--reason", "unknown_site")
    document = json.loads(as_json.stdout)
    assert (document["matched"], document["shown"]) == (1, 1)
    (reject,) = document["rejects"]
    assert reject["errors"] == [
        {
            "path": "site_id",
            "type": "unknown_site",
            "message": "site 'N01-S09' is not registered",
            "value": '"N01-S09"',
            "what_to_do": "site 'N01-S09' is not registered: correct node_id/site_id, "
            "or ask the operators to register it, then send the same events again",
        }
    ]
    assert (reject["node_id"], reject["site_id"]) == ("N01", "N01-S09")

    assert ops_cli(settings, "rejects", "--out", str(out)).exit_code != 0  # needs --csv/--json

    # a path that cannot be a file: one line saying why, no traceback
    for bad, why in (
        (tmp_path, "it is a directory"),
        (tmp_path / "missing" / "x.csv", "no directory"),
    ):
        refused = ops_cli(settings, "rejects", "--csv", "--out", str(bad))
        assert isinstance(refused.exception, UserError)  # the CLI prints it, exit 2
        assert str(refused.exception).startswith(f"cannot write {bad}: {why}")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("held", "sent", "same"),
    [
        # A DateTime64 as JSONEachRow gives it (UTC text) against what a site sent.
        ("2025-06-01 12:04:00.000000", "2025-06-01T12:04:00Z", True),
        ("2025-06-01 12:04:00.000000", "2025-06-01T14:04:00+02:00", True),
        ("2025-06-01 12:04:00.000000", "2025-06-01T12:05:00Z", False),
        ("2025-06-01 12:04:00.000000", "2025-06-01T12:04:00", False),  # naive: not one instant
        (30, 30.0, True),
        (30, 31.0, False),
        ("P-0000000001", "P-0000000002", False),
    ],
)
def test_a_conflict_names_only_the_fields_that_differ(held: Any, sent: Any, same: bool) -> None:
    assert _same(held, sent) is same


def test_worklist_of_a_message_without_field_errors() -> None:
    from exnet.ops.rejects import Issue, RejectedMessage

    message = RejectedMessage(
        None, "too_large", None, None, None, (Issue("", "", "over 64 KiB"),), "", "t", 0, 1, "x"
    )
    (row,) = worklist_rows([message])
    assert (row["reason"], row["field_path"], row["message"]) == ("too_large", "", "over 64 KiB")


# --- through the real pipeline ---------------------------------------------------------


def _session(event_id: str, **fields: Any) -> bytes:
    event = {
        "schema": "session/1",
        "event_id": event_id,
        "occurred_at": "2025-01-15T10:00:00+01:00",
        "node_id": "N01",
        "site_id": "N01-S01",
        "participant_id": "P-00000000ab",
        "session_number": 3,
        "status": "attended",
        "modality": "aerobic",
        "supervised": True,
        "duration_min": 40,
        **fields,
    }
    return json.dumps(event).encode()


def _publish(bootstrap: str, topic: str, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topic, key=b"P-00000000ab", value=value).get(timeout=30)
    producer.close()


@pytest.mark.kafka
@pytest.mark.clickhouse
@pytest.mark.slow
def test_a_corrected_record_published_again_with_its_event_id_is_accepted(
    settings_factory: SettingsFactory,
    registry_file: Path,
    kafka_admin: KafkaAdminClient,
    tmp_path: Path,
) -> None:
    settings = settings_factory(registry=registry_file, partitions=1)
    topic = topic_name(Topic.SESSION, settings.topic_prefix)
    try:
        init = exnet_subprocess(settings, "init", cwd=tmp_path)
        assert init.returncode == 0, init.stderr

        bad_id = str(uuid.uuid4())
        bad = _session(bad_id, session_number=900, duration_min=None)
        _publish(settings.kafka_bootstrap, topic, bad)
        drained = exnet_subprocess(settings, "up", "--drain", cwd=tmp_path)
        assert drained.returncode == 0, drained.stderr[-3000:]

        listed = ops_cli(settings, "rejects", "--site", "N01-S01", "--json")
        assert listed.exit_code == 0, listed.output
        document = json.loads(listed.stdout)
        assert document["matched"] == 1
        (reject,) = document["rejects"]
        assert reject["reason"] == "invalid_field"
        assert reject["event_id"] == bad_id
        assert (reject["source_topic"], reject["source_partition"], reject["source_offset"]) == (
            topic,
            0,
            0,
        )
        paths = {e["path"] for e in reject["errors"]}
        assert {"session_number", "duration_min"} <= paths, reject
        assert json.loads(reject["payload"])["event_id"] == bad_id
        text = ops_cli(settings, "rejects", "--site", "N01-S01").stdout
        assert "session_number" in text and bad_id in text
        # what the screen tells the coordinator to do agrees with what follows
        assert "publish it again, with its event_id" in " ".join(text.split())

        # the coordinator fixes the record and publishes it again, with its event_id: an
        # invalid_field is decided before the duplicate check, so it takes no id away
        fixed_id = bad_id
        _publish(settings.kafka_bootstrap, topic, _session(fixed_id))
        drained = exnet_subprocess(settings, "up", "--drain", cwd=tmp_path)
        assert drained.returncode == 0, drained.stderr[-3000:]

        db = settings.clickhouse_database
        rows = query_rows(
            settings,
            f"SELECT event_id, session_number, duration_min FROM {db}.session_events FINAL",  # noqa: S608  # test SQL
        )
        assert rows == [{"event_id": fixed_id, "session_number": 3, "duration_min": 40}]
        # the rejection stays on record, once
        assert find_rejects(settings, RejectFilter()).matched == 1
    finally:
        prefix = settings.topic_prefix
        kafka_admin.delete_topics([t for t in kafka_admin.list_topics() if t.startswith(prefix)])


def test_a_site_or_node_not_in_the_registry_is_a_usage_error_with_a_suggestion() -> None:
    from contracts import load_registry
    from contracts.errors import UserError
    from contracts.registry import DEMO_REGISTRY
    from exnet.ops.rejects import RejectFilter

    registry = load_registry(DEMO_REGISTRY)
    RejectFilter(nodes=("N01",), sites=("N01-S01", "N03-S03")).check_names(registry, "demo")
    with pytest.raises(
        UserError,
        match=r"site 'N01-S09' is not in the network registry \(demo\); did you mean N01-S03",
    ):
        RejectFilter(sites=("N01-S09",)).check_names(registry, "demo")
    with pytest.raises(
        UserError, match=r"node 'N1' is not in the network registry .*N01, N02, N03"
    ):
        RejectFilter(nodes=("N1",)).check_names(registry, "demo")
