"""Operating `exnet up`: analysts' SQL while it runs, SIGTERM, the invalid-ratio limit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from contracts import load_registry
from contracts.registry import DEMO_REGISTRY
from contracts.topics import Topic
from sinks.query import endpoint_file
from tests.pipeline.events import EventMaker
from tests.pipeline.harness import Pipeline
from tests.ports import free_ports
from tests.sinks.test_clickhouse import _HOLD

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


def test_sql_works_while_up_holds_the_embedded_database(pipeline: Pipeline, tmp_path: Path) -> None:
    make = EventMaker(seed=3)
    pipeline.init()
    pipeline.send(Topic.ENROLLMENT, make.enrollment("P-00000000a1", "N02-S02", "screened"))
    pipeline.flush()
    worker = pipeline.start(log=tmp_path / "up.log")
    try:
        deadline = time.monotonic() + 90
        while True:
            assert worker.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no screened participant became queryable"
            if endpoint_file(pipeline.settings).exists():
                query = "SELECT screened FROM node_summary FINAL WHERE node_id='N02'"
                done = pipeline.run("sql", query)
                assert done.returncode == 0, done.stderr
                if done.stdout.splitlines()[1:] == ["1"]:
                    break
            time.sleep(0.5)
        csv = pipeline.run(
            "sql", "SELECT node_id FROM nodes FINAL ORDER BY node_id", "--format", "CSV"
        )
        assert csv.stdout == '"N01"\n"N02"\n"N03"\n'
        # The query's own FORMAT wins; an error quotes the query as written.
        own = pipeline.run(
            "sql", "SELECT node_id FROM nodes FINAL ORDER BY node_id LIMIT 1 FORMAT JSONEachRow;"
        )
        assert own.returncode == 0 and own.stdout == '{"node_id":"N01"}\n', own.stderr
        typo = pipeline.run("sql", "SELEC node_id FROM nodes FORMAT JSONEachRow")
        assert typo.returncode == 2 and "Syntax error" in typo.stderr
        assert "FORMAT" not in typo.stderr
        refused = pipeline.run(
            "sql", "INSERT INTO nodes (node_id, name, loaded_at) VALUES ('N99', 'x', now())"
        )
        assert (
            refused.returncode == 2 and "is read-only" in refused.stderr
        )  # refused before ClickHouse
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        pipeline.kill(worker)
    assert not endpoint_file(pipeline.settings).exists()
    # With nobody holding the database, exnet sql opens it itself, still read-only.
    done = pipeline.run("sql", "SELECT count() FROM enrollment_events FINAL")
    assert done.returncode == 0 and done.stdout.splitlines()[1:] == ["1"]


#: The guard's settings in these tests: a window of 50 messages, at most half rejected.
_SMALL_GUARD = {
    "EXNET_DLQ_WINDOW": "50",
    "EXNET_DLQ_MAX_RATIO": "0.5",
    "EXNET_STREAM_BATCH_MAX": "20",
}


def test_invalid_messages_from_most_sites_stop_the_worker_before_committing(
    pipeline: Pipeline,
) -> None:
    pipeline.init()
    sites = [site.id for _, site in load_registry(DEMO_REGISTRY).sites()]
    for index in range(60):
        site = sites[index % len(sites)]
        value = b'{"schema": "session/9", "site_id": "%s"}' % site.encode()
        pipeline.send(Topic.SESSION, value, key=f"P-{index:010x}")
    done = pipeline.run("up", "--drain", timeout=120, env=_SMALL_GUARD)
    assert done.returncode == 78, done.stderr[-3000:]
    assert "were rejected" in done.stderr and "EXNET_DLQ_MAX_RATIO" in done.stderr


def test_a_flood_of_messages_naming_no_site_is_rejected_and_stops_nothing(
    pipeline: Pipeline,
) -> None:
    """One outside producer's 2,100 empty messages stopped every site's events."""
    pipeline.init()
    for index in range(60):
        pipeline.send(Topic.SESSION, b'{"not": "an event"}', key=f"P-{index:010x}")
    pipeline.drain(env=_SMALL_GUARD)
    assert pipeline.scalar("SELECT count() FROM rejected_events FINAL") == 60


def _children(pid: int) -> set[int]:
    """The process's children, read per thread; a thread that ends between the listing
    and the read hands its children to another thread, so the scan is taken again."""
    for _ in range(20):
        try:
            return {
                int(child)
                for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()
            }
        except FileNotFoundError:  # that thread ended mid-scan
            time.sleep(0.05)
    raise AssertionError(f"threads of {pid} kept ending while their children were read")


def _running(pid: int) -> bool:
    """Alive and not a zombie left to a parent that has not reaped it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text: str = reply.read().decode()
            return text
    except OSError:
        return ""


def _writer_of(worker: subprocess.Popen[bytes], port: int, log: Path) -> tuple[str, int]:
    """Wait until `exnet up` (``worker``) reports a written row; its /metrics and its
    writer process (the child whose metrics it merges)."""
    deadline = time.monotonic() + 90
    while True:
        assert worker.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no row written\n" + log.read_text()[-3000:]
        text = _scrape(port)
        # At least one: rows of a batch read again after a kill count again.
        written = re.search(
            r'^exnet_sink_rows_written_total\{table="enrollment_events"\} (\S+)$', text, re.M
        )
        if written is not None and float(written.group(1)) >= 1:
            break
        time.sleep(0.5)
    writers = [
        child
        for child in _children(worker.pid)
        if "writer_process_main" in Path(f"/proc/{child}/cmdline").read_text()
    ]
    assert len(writers) == 1, writers
    return text, writers[0]


def test_up_writes_in_a_child_that_reports_through_it_and_lives_and_dies_with_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    make = EventMaker(seed=5)
    pipeline.init()
    pipeline.send(Topic.ENROLLMENT, make.enrollment("P-00000000b1", "N01-S01", "screened"))
    pipeline.flush()
    port = free_ports()
    env = {"EXNET_METRICS_PORT": str(port)}
    log = tmp_path / "up.log"
    worker = pipeline.start(env=env, log=log)
    try:
        text, writer = _writer_of(worker, port, log)
        # One scrape target: the writer's series beside the stream's, each family once.
        assert 'exnet_process_role{role="stream"} 1.0' in text
        assert 'exnet_process_role{role="sink"} 1.0' in text
        assert "\nexnet_ready 1.0\n" in text
        received = pipeline.topic(Topic.ENROLLMENT)
        assert f'exnet_events_received_total{{topic="{received}"}} 1.0' in text
        for family in ("exnet_sink_rows_written_total", "exnet_events_received_created"):
            assert text.count(f"# TYPE {family} ") == 1, text
        # Killed with -9 alone, exnet up takes its writer down (which frees the database).
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _running(writer):
            assert time.monotonic() < deadline, "the writer outlived exnet up"
            time.sleep(0.2)
    finally:
        pipeline.kill(worker)

    # A writer that dies stops exnet up, which says so in its exit status.
    pipeline.send(Topic.ENROLLMENT, make.enrollment("P-00000000b2", "N01-S01", "screened"))
    pipeline.flush()
    worker = pipeline.start(env=env, log=log)
    try:
        _, writer = _writer_of(worker, port, log)
        os.kill(writer, signal.SIGKILL)
        assert worker.wait(timeout=60) == 1
        assert "the ClickHouse writer process exited (status -9)" in log.read_text()
    finally:
        pipeline.kill(worker)
    pipeline.drain()  # and nothing was lost on the way
    rows = pipeline.scalar("SELECT count() FROM enrollment_events FINAL")
    assert rows == 2


def test_a_sink_started_while_the_database_is_held_for_a_moment_waits_for_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # `exnet up --role sink` exited 1 at once when `exnet status` or `exnet sql` (which
    # open the embedded database when no writer runs) had it open (an outside tester's
    # find: a sink restarted while status was polled left the pipeline with no writer).
    pipeline.init()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD],
        env=pipeline.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == b"held\n"
    log = tmp_path / "sink.log"
    sink = pipeline.start("--role", "sink", log=log)
    try:
        time.sleep(4)
        assert sink.poll() is None, log.read_text()[-3000:]
        assert "held by another process" in log.read_text()
        holder.stdin.close()
        holder.wait(timeout=60)
        deadline = time.monotonic() + 60
        while "writing ClickHouse database" not in log.read_text():
            assert sink.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(sink.pid, signal.SIGTERM)
        assert sink.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if holder.poll() is None:
            holder.kill()


def test_sigterm_while_no_broker_answers_the_start_exits_0_at_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # The start's first request to Kafka waits for a broker for 30 s; a SIGTERM then took
    # 26 s and ended in exit 2, "no Kafka broker answers" (an outside reviewer's find,
    # 2026-12-05). SPEC §5: SIGTERM exits 0.
    port = free_ports(1)
    log = tmp_path / "up.log"
    worker = pipeline.start(env={"EXNET_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}, log=log)
    try:
        deadline = time.monotonic() + 60
        while "Bootstrap" not in log.read_text():  # in its first connection to Kafka
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        asked = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert time.monotonic() - asked < 5, log.read_text()[-3000:]
    finally:
        pipeline.kill(worker)
