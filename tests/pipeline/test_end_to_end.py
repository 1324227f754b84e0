"""A mixed set through the real broker, `exnet up --drain` and embedded ClickHouse:
every message ends accepted, duplicate or rejected, and every view is exact."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import signal
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from contracts import headers as H
from contracts.topics import Topic
from contracts.validation import MAX_MESSAGE_BYTES
from contracts.views import ARM_COLUMNS, SUMMARY_COLUMNS, ArmKey, compute_views
from streams.names import CONTRIBUTIONS_TABLE, PARTICIPANTS_TABLE, changelog_topic
from tests.conftest import wait_until
from tests.pipeline.events import EventMaker, as_event
from tests.pipeline.harness import Pipeline, assert_views_exact, stream_views
from tests.pipeline.load import participant_events
from tests.ports import free_ports

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

NODES = ("N01", "N02", "N03")
A, B, C, D = "P-00000000aa", "P-00000000bb", "P-00000000cc", "P-00000000dd"
TOPIC_OF = {
    "enrollment": Topic.ENROLLMENT,
    "session": Topic.SESSION,
    "assay": Topic.ASSAY,
    "assessment": Topic.ASSESSMENT,
}


def _topic(event: dict[str, Any]) -> Topic:
    return TOPIC_OF[event["schema"].split("/")[0]]


def _normalised(event: dict[str, Any]) -> dict[str, Any]:
    """What the platform stores: defaults filled in."""
    if event["schema"] == "enrollment/1":
        return {"adjunct": "none", **event}
    return event


def test_mixed_set_ends_exactly(pipeline: Pipeline) -> None:
    make = EventMaker(seed=1)
    pipeline.init()
    accepted: list[dict[str, Any]] = []

    def publish(event: dict[str, Any]) -> dict[str, Any]:
        pipeline.send(_topic(event), event)
        accepted.append(_normalised(event))
        return event

    # Cross-topic order reversed: C's session and A's week-4 rating arrive before
    # the randomization and baseline they depend on.
    publish(make.session(C, "N02-S01", 1, day=10, modality="resistance", duration=35.5))
    publish(make.assessment(A, "N01-S01", "PHQ9", 12, week=4))
    publish(make.enrollment(A, "N01-S01", "screened", day=0, age_band="25-34", sex="female"))
    publish(make.enrollment(A, "N01-S01", "consented", day=1))
    randomized_a = publish(make.enrollment(A, "N01-S01", "randomized", day=2, modality="aerobic"))
    s1 = publish(make.session(A, "N01-S01", 1, day=3, duration=45.0))
    publish(make.session(A, "N01-S01", 2, "missed", day=5))
    s3 = publish(
        make.session(
            A,
            "N01-S01",
            3,
            day=7,
            duration=30.0,
            adverse_event="mild",
            mean_hr_pct_max=71.5,
            rpe=13,
        )
    )
    publish(make.assessment(A, "N01-S01", "PHQ9", 20, week=0))
    publish(make.assessment(A, "N01-S01", "PHQ9", 9, week=8))  # 9*2 <= 20: responds; 9 > 4
    publish(make.enrollment(B, "N01-S02", "randomized", day=3, modality="control"))
    publish(make.assessment(B, "N01-S02", "HAMD17", 20, week=0))
    publish(make.assessment(B, "N01-S02", "HAMD17", 6, week=12))  # responds and remits
    publish(
        make.enrollment(
            C, "N02-S01", "randomized", day=4, modality="resistance", adjunct="psychotherapy"
        )
    )
    publish(make.enrollment(C, "N02-S01", "withdrawn", day=20, reason="adverse_event"))
    publish(make.enrollment(D, "N03-S01", "screened", day=6))
    publish(make.assay(D, "N03-S01", "SPEC-0001", "BDNF", 25000.0, "pg/mL"))
    publish(make.assay(D, "N03-S01", "SPEC-0002", "BDNF", 30.0, "ng/mL", timepoint="post"))
    publish(make.assay(D, "N03-S01", "SPEC-0001", "cortisol", 10.0, "ug/dL"))

    # Exact duplicates: the same bytes again, and the same event reformatted
    # (other key order, +02:00 offset for the same instant).
    pipeline.send(Topic.SESSION, s1)
    instant = datetime.fromisoformat(randomized_a["occurred_at"]).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    reformatted = {
        **dict(reversed(list(randomized_a.items()))),
        "occurred_at": instant.isoformat(),
        "adjunct": "none",
    }
    pipeline.send(Topic.ENROLLMENT, reformatted)
    # A conflicting duplicate: s3's event_id, another duration.
    conflicting = {**s3, "duration_min": 31.0}
    pipeline.send(Topic.SESSION, conflicting)

    # One message for each reason the validator owns.
    good = make.session(A, "N01-S01", 9, day=9)
    too_large = orjson.dumps({**good, "pad": "x" * MAX_MESSAGE_BYTES})
    pipeline.send(Topic.SESSION, too_large, key=A)
    pipeline.send(Topic.SESSION, b'{"schema": "session/1", "event_id": ', key=A)
    pipeline.send(Topic.ASSAY, make.session(A, "N01-S01", 10))  # session on the assay topic
    bad_fields = {"rpe": 25, "status": "sleepy", "patient_name": "Jane Doe"}
    pipeline.send(Topic.SESSION, {**make.session(A, "N01-S01", 11), **bad_fields})
    pipeline.send(Topic.SESSION, make.session(A, "N01-S01", 12), key="P-ffffffffff")
    pipeline.send(Topic.SESSION, make.session(A, "N02-S09", 13))
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    pipeline.send(Topic.SESSION, {**make.session(A, "N01-S01", 14), "occurred_at": future})

    log = pipeline.drain()
    # Nobody signalled it: a drain ends by itself (the writer process's "signal 15:
    # stopping", its parent's stop, read as if someone had stopped it: an outside check).
    assert "signal 15: stopping" not in log, log[-3000:]

    expected_rejections = {
        "too_large": {""},
        "malformed_json": {""},
        "unknown_schema": {"schema"},
        "invalid_field": {"rpe", "status", "patient_name"},
        "key_mismatch": {"participant_id"},
        "unknown_site": {"site_id"},
        "future_timestamp": {"occurred_at"},
        "conflicting_duplicate": {"event_id"},
    }
    _check_facts(pipeline, accepted)
    _check_rejections(pipeline, expected_rejections)
    _check_deadletter(pipeline, expected_rejections)
    _check_views(pipeline, accepted)
    _check_no_identifier_reaches_analysts(pipeline)
    _check_live_views(pipeline)

    # A second drain over the same topics changes nothing.
    pipeline.drain()
    _check_facts(pipeline, accepted)
    assert pipeline.scalar("SELECT count() FROM rejected_events FINAL") == 8


def _check_facts(pipeline: Pipeline, accepted: list[dict[str, Any]]) -> None:
    for kind, table in (
        ("enrollment", "enrollment_events"),
        ("session", "session_events"),
        ("assay", "assay_events"),
        ("assessment", "assessment_events"),
    ):
        rows = pipeline.rows(f"SELECT * FROM {table} FINAL")
        expected = {e["event_id"]: e for e in accepted if e["schema"].startswith(kind)}
        assert {row["event_id"] for row in rows} == set(expected), table
        for row in rows:
            event = expected[row["event_id"]]
            for field, value in event.items():
                stored = row[field]
                if field == "occurred_at":
                    # clickhouse-connect returns UTC as naive datetimes
                    utc = datetime.fromisoformat(value).astimezone(UTC).replace(tzinfo=None)
                    assert stored == utc, field
                elif field == "score" or field == "week":
                    assert stored == value
                else:
                    assert stored == value, (table, field)
    canonical = {
        row["specimen_id"] + row["analyte"]: (row["value_canonical"], row["unit_canonical"])
        for row in pipeline.rows("SELECT * FROM assay_events FINAL")
    }
    assert canonical["SPEC-0001BDNF"] == (pytest.approx(25.0), "ng/mL")
    assert canonical["SPEC-0002BDNF"] == (30.0, "ng/mL")
    assert canonical["SPEC-0001cortisol"] == (pytest.approx(275.9), "nmol/L")


#: The unknown fields the run sends -> their names in the analysts' table.
UNKNOWN_NAMES = {"patient_name": "<unknown field 1>"}


def _check_rejections(pipeline: Pipeline, expected: dict[str, set[str]]) -> None:
    rows = pipeline.rows("SELECT * FROM rejected_events FINAL")
    assert sorted(row["reason"] for row in rows) == sorted(expected)
    sent = {(pipeline.topic(topic), raw) for topic, raw, _ in pipeline.sent}
    for row in rows:
        detail = json.loads(row["detail"])
        assert detail["reason"] == row["reason"]
        # The analysts' table names an unknown field by its place only (SPEC §4).
        named = {UNKNOWN_NAMES.get(path, path) for path in expected[row["reason"]]}
        assert {error["path"] for error in detail["errors"]} == named
        # The digest is the original message's, whose origin points back at it.
        digests = {(t, hashlib.sha256(raw).hexdigest()) for t, raw in sent}
        assert (row["source_topic"], row["payload_sha256"]) in digests


def _check_no_identifier_reaches_analysts(pipeline: Pipeline) -> None:
    """SPEC §4: an unknown field's name and value are on the dead-letter topic only."""
    assert pipeline.scalar("SELECT count() FROM rejected_events WHERE payload LIKE '%Jane%'") == 0
    row = pipeline.rows("SELECT payload FROM rejected_events FINAL WHERE reason = 'invalid_field'")
    document = json.loads(row[0]["payload"])
    assert document["<unknown field 1>"] == "<redacted>" and document["rpe"] == 25
    worklist = pipeline.run("rejects", "--site", "N01-S01", "--csv")
    assert worklist.returncode == 0 and "patient_name" not in worklist.stdout
    assert "Jane" not in worklist.stdout
    originals = pipeline.run(
        "rejects", "--site", "N01-S01", "--reason", "invalid_field", "--original", "--json"
    )
    assert originals.returncode == 0, originals.stderr
    assert json.loads(originals.stdout)["rejects"][0]["payload"].count("Jane Doe") == 1
    # The work list says who, what, when, the value sent, and what to do.
    rows = list(csv.DictReader(io.StringIO(worklist.stdout)))
    rpe = next(r for r in rows if r["field_path"] == "rpe")
    assert (rpe["participant_id"], rpe["event_type"], rpe["value"]) == (A, "session", "25")
    assert rpe["occurred_at"] and rpe["what_to_do"] == (
        "rpe: Input should be less than or equal to 20: "
        "the Borg rating of perceived exertion, a whole number from 6 to 20"
    )
    name = next(r for r in rows if r["field_path"] == "<unknown field 1>")
    assert name["value"] == '"<redacted>"'
    assert name["what_to_do"] == (
        "remove <unknown field 1> (its name is withheld here: --original shows it): "
        "session events have no such field"
    )
    conflict = next(r for r in rows if r["reason"] == "conflicting_duplicate")
    assert "duration_min" in conflict["message"] and "accepted, 31.0 sent" in conflict["message"]
    # Only what differs: the same occurred_at, stored as UTC text, is the same instant.
    assert "occurred_at" not in conflict["message"], conflict["message"]


def _check_deadletter(pipeline: Pipeline, expected: dict[str, set[str]]) -> None:
    records = pipeline.read_topic(Topic.DEADLETTER)
    reasons = []
    originals = {}
    for record in pipeline.read_topic(Topic.SESSION) + pipeline.read_topic(Topic.ASSAY):
        originals[(record.topic, record.partition, record.offset)] = record.value
    for record in records:
        headers = dict(record.headers)
        for name in (H.REASON, H.DETAIL, H.SOURCE_TOPIC, H.SOURCE_PARTITION, H.SOURCE_OFFSET):
            assert name in headers, name
        reasons.append(headers[H.REASON].decode())
        detail = json.loads(headers[H.DETAIL])
        assert {error["path"] for error in detail["errors"]} == expected[detail["reason"]]
        origin = (
            headers[H.SOURCE_TOPIC].decode(),
            int(headers[H.SOURCE_PARTITION]),
            int(headers[H.SOURCE_OFFSET]),
        )
        assert originals[origin] == record.value, "dead letter carries the original bytes"
    assert sorted(reasons) == sorted(expected)


def _check_views(pipeline: Pipeline, accepted: list[dict[str, Any]]) -> None:
    """The stream-written views hold the oracle's figures, equal the recompute (verify),
    and match hand-counted ones."""
    expected = compute_views([as_event(event) for event in accepted], NODES)
    assert_views_exact(pipeline, expected)
    views = stream_views(pipeline, NODES)
    network, nodes, arms = views.network_summary, views.node_summary, views.arm_summary
    assert list(network) == list(SUMMARY_COLUMNS)
    # Hand-checked figures, so the oracle itself is held to account.
    assert network["randomized"] == 3 and network["sessions_attended"] == 3
    assert network["exercise_minutes"] == 45.0 + 30.0 + 35.5
    assert nodes["N02"]["withdrawn"] == 1 and nodes["N03"]["specimens"] == 2
    aerobic = arms[ArmKey("network", "", "aerobic", "none")]
    assert list(aerobic) == list(ARM_COLUMNS)
    assert aerobic == {
        "randomized": 1,
        "sessions_attended": 2,
        "exercise_minutes": 75.0,
        "responders": 1,
        "remitters": 0,
    }
    assert arms[ArmKey("node", "N01", "control", "none")]["remitters"] == 1
    assert arms[ArmKey("node", "N02", "resistance", "psychotherapy")]["sessions_attended"] == 1


def _check_live_views(pipeline: Pipeline) -> None:
    """A restarted `exnet up` serves /views/node_summary: the same rows as the table."""
    port = free_ports()
    table = pipeline.rows("SELECT * FROM node_summary FINAL ORDER BY node_id")
    worker = pipeline.start(env={"EXNET_METRICS_PORT": str(port)})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(  # noqa: S310  # a local port
                    f"http://127.0.0.1:{port}/views/node_summary", timeout=5
                ) as reply:
                    served = json.loads(reply.read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "no /views/node_summary within 60 s"
                time.sleep(0.5)
    finally:
        pipeline.kill(worker, signal.SIGTERM)
    # every column but the ones that order versions in ClickHouse; updated_at is when
    # the row was computed, which a restart does again
    assert table and all(r.keys() == table[0].keys() - {"version", "is_deleted"} for r in served)
    assert [{k: v for k, v in r.items() if k != "updated_at"} for r in served] == [
        {k: v for k, v in r.items() if k not in ("updated_at", "version", "is_deleted")}
        for r in table
    ]


#: Seconds for Kafka's log cleaner to compact a changelog (it looks every 15 s).
COMPACTION_S = 90.0


def _compacted(pipeline: Pipeline, topic: str) -> bool:
    """Whether ``topic`` holds fewer records than the offsets it used (the cleaner never
    removes a partition's last record: it sits in the active segment)."""
    records = pipeline.read_topic(topic)
    used: dict[int, int] = {}
    for record in records:
        used[record.partition] = max(used.get(record.partition, 0), record.offset + 1)
    return len(records) < sum(used.values())


@pytest.mark.parametrize("compacted", [False, True], ids=["as_written", "compacted"])
def test_a_new_worker_recovers_every_table_from_its_changelog(
    pipeline: Pipeline, kafka_admin: KafkaAdminClient, compacted: bool
) -> None:
    """Every `exnet up --drain` is a new worker, which rebuilds its tables from their
    changelogs (fetched batches, unpacked by streams.transport.BatchTable). The second
    one still knows each event of the first (a copy is a duplicate, other content a
    conflict) and each participant's events (the views stay exact as they grow).
    ``compacted``: Kafka's log cleaner has compacted the changelogs in between (the
    records of keys written again later are gone: the offsets have gaps)."""
    first = participant_events(seed=31, participants=300)  # ~4,000 events
    pipeline.init()
    changelogs = [
        changelog_topic(pipeline.settings, t) for t in (PARTICIPANTS_TABLE, CONTRIBUTIONS_TABLE)
    ]
    if compacted:  # segments roll at the first write after 0.1 s; the cleaner takes any
        answers = kafka_admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    name,
                    configs={"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"},
                )
                for name in changelogs
            ]
        )
        assert answers == {"topic": dict.fromkeys(changelogs, "OK")}, answers
    # Compacted: in three drains, every third event each, so that the tables write
    # each participant's keys again (one drain writes most of them once), and later
    # than the first drain's segments (the cleaner leaves a log's last segment).
    for wave in (first[0::3], first[1::3], first[2::3]) if compacted else (first,):
        for topic, event in wave:
            pipeline.send(topic, event)
        pipeline.drain()
    if compacted:
        for name in changelogs:
            wait_until(
                partial(_compacted, pipeline, name),
                f"Kafka's log cleaner compacting {name}",
                COMPACTION_S,
                1.0,
            )
    accepted = [event for _, event in first]
    assert pipeline.scalar("SELECT count() FROM rejected_events FINAL") == 0

    rng = random.Random(5)
    copies = rng.sample(accepted, 200)
    changed = [
        {**event, "duration_min": event["duration_min"] + 1}
        for event in rng.sample([e for e in accepted if e.get("duration_min")], 40)
    ]
    later = participant_events(seed=32, participants=40)
    # A seventh session for 30 participants of the first run: their contributions to
    # the views are recomputed from every event the participants table remembers.
    make = EventMaker(seed=33)
    arms = [e for e in accepted if e.get("status") == "randomized" and e["modality"] != "control"]
    later += [
        (
            Topic.SESSION,
            make.session(
                e["participant_id"], e["site_id"], 7, day=9, modality=e["modality"], duration=33.0
            ),
        )
        for e in rng.sample(arms, 30)
    ]
    for event in copies:
        pipeline.send(_topic(event), event)
    for event in changed:
        pipeline.send(_topic(event), event)
    for topic, event in later:
        pipeline.send(topic, event)
    pipeline.drain()

    accepted += [event for _, event in later]
    rejected = pipeline.rows("SELECT reason, event_id FROM rejected_events FINAL")
    assert sorted(r["event_id"] for r in rejected) == sorted(e["event_id"] for e in changed)
    assert {r["reason"] for r in rejected} == {"conflicting_duplicate"}
    facts = pipeline.scalar(
        "SELECT count() FROM (SELECT event_id FROM session_events FINAL UNION ALL"
        " SELECT event_id FROM enrollment_events FINAL UNION ALL"
        " SELECT event_id FROM assay_events FINAL UNION ALL"
        " SELECT event_id FROM assessment_events FINAL)"
    )
    assert facts == len({event["event_id"] for event in accepted})
    durations = {
        row["event_id"]: row["duration_min"]
        for row in pipeline.rows("SELECT event_id, duration_min FROM session_events FINAL")
    }
    assert all(durations[e["event_id"]] == e["duration_min"] - 1 for e in changed)
    expected = compute_views([as_event(event) for event in accepted], NODES)
    assert_views_exact(pipeline, expected)
