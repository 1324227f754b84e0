"""The site's side against the real broker: publish, spool while it is unreachable, simulate.

The shared broker is never stopped: "broker down" is a bootstrap address where
nothing listens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from contracts import INPUT_TOPICS, Topic, topic_name
from exnet.settings import Settings
from producers import MessageKind, Simulation, simulate, spool_of
from producers.publisher import COMMIT_EVENTS
from producers.spool import read_segment

from .helpers import EXNET, PubRecord, pub_consume, pub_env, pub_exnet

pytestmark = pytest.mark.kafka

#: A port where no broker listens (connections are refused at once).
CLOSED_BOOTSTRAP = "127.0.0.1:1"
#: Longest wait for a publisher subprocess to start spooling.
KILL_WAIT_S = 60.0


def _topics(settings: Settings) -> list[str]:
    return [topic_name(topic, settings.topic_prefix) for topic in INPUT_TOPICS]


def _valid_values(simulation: Simulation) -> list[bytes]:
    return [m.value for m in simulation.messages if m.kind is MessageKind.EVENT]


def _expected_topic(settings: Settings, value: bytes) -> str:
    event_type = orjson.loads(value)["schema"].split("/")[0]
    return topic_name(Topic.for_event_type(event_type), settings.topic_prefix)


def _check_round_trip(settings: Settings, records: list[PubRecord], values: list[bytes]) -> None:
    """Each value came back once, with its participant_id as key, on its type's topic."""
    assert Counter(r.value for r in records) == Counter(values)
    for record in records:
        document = orjson.loads(record.value)
        assert record.key == document["participant_id"].encode()
        assert record.topic == _expected_topic(settings, record.value)
    # A participant's events of one type share a partition, in the order given.
    partitions: dict[tuple[str, bytes | None], set[int]] = {}
    sequences: dict[tuple[str, bytes | None], list[bytes]] = {}
    for record in records:  # in offset order within each partition
        partitions.setdefault((record.topic, record.key), set()).add(record.partition)
        sequences.setdefault((record.topic, record.key), []).append(record.value)
    assert all(len(found) == 1 for found in partitions.values())
    position = {value: index for index, value in enumerate(values)}
    for sequence in sequences.values():
        assert [position[v] for v in sequence] == sorted(position[v] for v in sequence)


def test_publish_sends_the_original_bytes_keyed_to_their_topics(
    pub_kafka_settings: Settings, pub_simulation: Simulation, tmp_path: Path
) -> None:
    values = _valid_values(pub_simulation)[:1500]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(values) + b"\n")

    result = pub_exnet("publish", str(path), env=pub_env(pub_kafka_settings), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    summary = f"read {len(values)}, sent {len(values)}, invalid 0, spooled 0, skipped blank 0"
    assert result.stdout.decode().strip() == summary
    records = pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings))
    _check_round_trip(pub_kafka_settings, records, values)
    assert {r.topic for r in records} == set(_topics(pub_kafka_settings))


def test_publish_reports_invalid_lines_and_sends_only_the_valid_ones(
    pub_kafka_settings: Settings, pub_simulation: Simulation, tmp_path: Path
) -> None:
    values = _valid_values(pub_simulation)[:3]
    session = next(orjson.loads(v) for v in _valid_values(pub_simulation) if b"session/1" in v)
    lines = [
        values[0],  # 1
        orjson.dumps(session | {"rpe": 30, "occurred_at": "2025-03-04T09:15:00"}),  # 2
        values[1],  # 3
        b"",  # 4
        b"{not json",  # 5
        values[2],  # 6
        orjson.dumps({k: v for k, v in session.items() if k != "schema"}),  # 7
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = pub_exnet("publish", str(path), env=pub_env(pub_kafka_settings), cwd=tmp_path)

    assert result.returncode == 1
    errors = result.stderr.decode().splitlines()
    assert [line.split(": ")[:3] for line in errors] == [
        [f"{path}:2", "invalid_field", "occurred_at"],
        [f"{path}:2", "invalid_field", "rpe"],
        [f"{path}:5", "malformed_json", "not JSON"],
        [f"{path}:7", "unknown_schema", "schema"],
    ]
    assert result.stdout.decode().strip() == (
        "read 6, sent 3, invalid 3, spooled 0, skipped blank 1"
    )
    records = pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings))
    _check_round_trip(pub_kafka_settings, records, values[:3])


def test_broker_down_spools_and_a_flush_delivers_each_event_once(
    pub_kafka_settings: Settings, pub_simulation: Simulation, tmp_path: Path
) -> None:
    values = _valid_values(pub_simulation)[: 2 * COMMIT_EVENTS + 345]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(values) + b"\n")
    down = pub_env(pub_kafka_settings, EXNET_KAFKA_BOOTSTRAP=CLOSED_BOOTSTRAP)

    started = time.monotonic()
    result = pub_exnet("publish", str(path), env=down, cwd=tmp_path)
    assert time.monotonic() - started < 30  # seconds, not minutes
    assert result.returncode == 3, result.stderr
    assert f"spooled {len(values)}" in result.stdout.decode()
    assert b"exnet spool flush" in result.stderr

    status = pub_exnet("spool", "status", "--json", env=down, cwd=tmp_path)
    assert orjson.loads(status.stdout)["pending"] == len(values)
    # Still down: flushing keeps everything and says so.
    still_down = pub_exnet("spool", "flush", env=down, cwd=tmp_path)
    assert still_down.returncode == 3
    assert pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings)) == []

    up = pub_env(pub_kafka_settings)
    flushed = pub_exnet("spool", "flush", env=up, cwd=tmp_path)
    assert flushed.returncode == 0, flushed.stderr
    assert flushed.stdout.decode().strip() == f"sent {len(values)}, still spooled 0"
    again = pub_exnet("spool", "flush", env=up, cwd=tmp_path)
    assert again.stdout.decode().strip() == "sent 0, still spooled 0"
    status = pub_exnet("spool", "status", "--json", env=up, cwd=tmp_path)
    assert orjson.loads(status.stdout)["pending"] == 0

    records = pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings))
    _check_round_trip(pub_kafka_settings, records, values)  # each exactly once


def test_one_spooled_event_is_told_in_the_singular(
    pub_kafka_settings: Settings, pub_simulation: Simulation, tmp_path: Path
) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(_valid_values(pub_simulation)[0] + b"\n")
    down = pub_env(pub_kafka_settings, EXNET_KAFKA_BOOTSTRAP=CLOSED_BOOTSTRAP)
    published = pub_exnet("publish", str(path), env=down, cwd=tmp_path)
    assert published.returncode == 3
    assert b"1 event was not acknowledged (" in published.stderr, published.stderr
    assert b"; it waits in " in published.stderr

    status = pub_exnet("spool", "status", env=down, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.decode().startswith("1 event waiting in 1 segment ("), status.stdout


def test_two_concurrent_flushers_send_each_event_once(
    pub_kafka_settings: Settings, pub_simulation: Simulation, tmp_path: Path
) -> None:
    values = _valid_values(pub_simulation)[:3000]
    down = pub_env(pub_kafka_settings, EXNET_KAFKA_BOOTSTRAP=CLOSED_BOOTSTRAP)
    for part in range(3):  # three runs, three spool segments
        path = tmp_path / f"part{part}.jsonl"
        path.write_bytes(b"\n".join(values[part * 1000 : (part + 1) * 1000]) + b"\n")
        assert pub_exnet("publish", str(path), env=down, cwd=tmp_path).returncode == 3

    up = pub_env(pub_kafka_settings)
    flushers = [
        subprocess.Popen(
            [str(EXNET), "spool", "flush"],
            env=up,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [flusher.communicate(timeout=120) for flusher in flushers]
    assert [flusher.returncode for flusher in flushers] == [0, 0], outputs
    sent = [int(out.split()[1].rstrip(b",")) for out, _err in outputs]
    assert sum(sent) == len(values)

    records = pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings))
    _check_round_trip(pub_kafka_settings, records, values)  # each exactly once


def test_the_next_publish_run_sends_the_spool_first(
    pub_kafka_settings: Settings, pub_simulation: Simulation, tmp_path: Path
) -> None:
    values = _valid_values(pub_simulation)[:40]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"\n".join(values[:25]))  # no newline after the last line
    second.write_bytes(b"\n".join(values[25:]) + b"\n")
    down = pub_env(pub_kafka_settings, EXNET_KAFKA_BOOTSTRAP=CLOSED_BOOTSTRAP)
    assert pub_exnet("publish", str(first), env=down, cwd=tmp_path).returncode == 3

    result = pub_exnet("publish", str(second), env=pub_env(pub_kafka_settings), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "resent 25, still spooled 0" in result.stdout.decode()
    records = pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings))
    _check_round_trip(pub_kafka_settings, records, values)


def test_events_spooled_for_topics_kafka_lacks_wait_without_holding_up_the_rest(
    pub_kafka_settings: Settings, pub_simulation: Simulation, tmp_path: Path
) -> None:
    """Spooled under a wrong prefix while Kafka was down, then published under the right
    one: the stuck events sent everything after them to the spool (a metadata timeout
    read as Kafka being down), and no message named the topics."""
    values = _valid_values(pub_simulation)[:30]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"\n".join(values[:10]) + b"\n")
    second.write_bytes(b"\n".join(values[10:]) + b"\n")
    wrong = pub_env(pub_kafka_settings, EXNET_TOPIC_PREFIX="nowhere.")
    down = {**wrong, "EXNET_KAFKA_BOOTSTRAP": CLOSED_BOOTSTRAP}
    assert pub_exnet("publish", str(first), env=down, cwd=tmp_path).returncode == 3

    up = pub_env(pub_kafka_settings)
    result = pub_exnet("publish", str(second), env=up, cwd=tmp_path)
    assert result.returncode == 3, result.stderr  # events still wait in the spool
    assert "sent 20, invalid 0, spooled 0" in result.stdout.decode()
    assert "resent 0, still spooled 10" in result.stdout.decode()
    assert "wait for nowhere.exnet." in result.stderr.decode()
    records = pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings))
    _check_round_trip(pub_kafka_settings, records, values[10:])

    flushed = pub_exnet("spool", "flush", env=up, cwd=tmp_path)
    assert flushed.returncode == 3
    text = flushed.stdout.decode()
    assert text.startswith("sent 0, still spooled 10; spooled events wait for nowhere.exnet.")
    assert "`exnet init` with that prefix" in text
    status = orjson.loads(pub_exnet("spool", "status", "--json", env=up, cwd=tmp_path).stdout)
    stuck = {topic for segment in status["segments"] for topic in segment["topics"]}
    assert stuck and all(topic.startswith("nowhere.exnet.") for topic in stuck)
    assert status["pending"] == 10


def test_a_killed_publisher_loses_nothing_it_had_spooled(
    pub_kafka_settings: Settings, tmp_path: Path
) -> None:
    """kill -9 mid-run, then flush: Kafka holds a prefix of the file, each event at least once."""
    path = tmp_path / "big.jsonl"
    simulate(pub_kafka_settings, seed=9, participants=800, out=path)
    values = path.read_bytes().splitlines()
    env = pub_env(pub_kafka_settings)
    child = subprocess.Popen(
        [str(EXNET), "publish", str(path)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    spool_dir = pub_kafka_settings.var_dir / "spool"
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        while not any(spool_dir.glob("seg-*.spool")):  # the first group is spooled
            assert child.poll() is None, "the publisher finished before it could be killed"
            assert time.monotonic() < deadline, "the publisher spooled nothing in time"
            time.sleep(0.01)
        time.sleep(0.5)  # well into the run: some groups acknowledged, some not
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()

    (segment,) = spool_dir.glob("seg-*.spool")
    unacknowledged = {
        event.value for _seq, event in read_segment(segment.read_bytes(), segment).pending()
    }
    flushed = pub_exnet("spool", "flush", env=env, cwd=tmp_path)
    assert flushed.returncode == 0, flushed.stderr
    records = pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings))
    delivered = Counter(record.value for record in records)
    assert 0 < len(delivered) < len(values), "kill -9 came too early or too late"
    prefix = values[: len(delivered)]
    assert set(delivered) == set(prefix)  # nothing missing before the kill point
    # A copy only of what the spool had not recorded as acknowledged at the kill.
    assert {value for value, count in delivered.items() if count > 1} <= unacknowledged


def test_simulate_publishes_the_counts_it_reports(
    pub_kafka_settings: Settings, tmp_path: Path
) -> None:
    env = pub_env(pub_kafka_settings)
    result = pub_exnet(
        "simulate",
        "--participants",
        "60",
        "--seed",
        "4",
        "--invalid-share",
        "0.05",
        "--duplicate-share",
        "0.05",
        "--conflict-share",
        "0.01",
        "--json",
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    expected = orjson.loads(result.stdout)
    records = pub_consume(pub_kafka_settings.kafka_bootstrap, _topics(pub_kafka_settings))
    per_topic = Counter(record.topic for record in records)
    assert dict(per_topic) == {
        topic_name(Topic(topic), pub_kafka_settings.topic_prefix): count
        for topic, count in expected["per_topic"].items()
    }
    assert len(records) == expected["messages"]
    # Invalid messages arrived as they were made: some with a wrong key.
    mismatched = sum(
        1
        for record in records
        if _participant(record.value) is not None and _participant(record.value) != record.key
    )
    assert mismatched == expected["rejected"]["key_mismatch"]


def _participant(value: bytes) -> bytes | None:
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    participant = document.get("participant_id") if isinstance(document, dict) else None
    return participant.encode() if isinstance(participant, str) else None


def test_simulate_without_a_broker_is_a_clear_error(
    pub_kafka_settings: Settings, tmp_path: Path
) -> None:
    env = pub_env(pub_kafka_settings, EXNET_KAFKA_BOOTSTRAP=CLOSED_BOOTSTRAP)
    result = pub_exnet("simulate", "--participants", "2", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert b"unreachable" in result.stderr
    assert b"Traceback" not in result.stderr


def test_publish_and_simulate_name_the_missing_topics_when_kafka_lacks_them(
    pub_settings: Settings, pub_simulation: Simulation, tmp_path: Path
) -> None:
    """A wrong EXNET_TOPIC_PREFIX or an `exnet init` never run: Kafka is up, so the
    events must not wait in the spool as if it were down."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(_valid_values(pub_simulation)[:3]) + b"\n")
    env = pub_env(pub_settings)  # a fresh prefix: none of its topics exist
    for command in (("publish", str(path)), ("simulate", "--participants", "2")):
        result = pub_exnet(*command, env=env, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        stderr = result.stderr.decode()
        assert f"has no topic {pub_settings.topic_prefix}exnet.enrollment" in stderr
        assert "exnet init" in stderr and "EXNET_TOPIC_PREFIX" in stderr
        assert "Traceback" not in stderr
    assert spool_of(pub_settings).status().pending == 0
