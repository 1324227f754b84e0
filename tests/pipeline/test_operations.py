"""Operating `exnet up`: analysts' SQL while it runs, SIGTERM, the invalid-ratio limit."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from contracts.topics import Topic
from sinks.query import endpoint_file
from tests.pipeline.events import EventMaker
from tests.pipeline.harness import Pipeline

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
                done = pipeline.run("sql", "SELECT screened FROM node_summary WHERE node_id='N02'")
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
        assert refused.returncode == 2 and "readonly" in refused.stderr.lower()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        pipeline.kill(worker)
    assert not endpoint_file(pipeline.settings).exists()
    # With nobody holding the database, exnet sql opens it itself, still read-only.
    done = pipeline.run("sql", "SELECT count() FROM enrollment_events FINAL")
    assert done.returncode == 0 and done.stdout.splitlines()[1:] == ["1"]


def test_a_flood_of_invalid_messages_stops_the_worker_before_committing(
    pipeline: Pipeline,
) -> None:
    pipeline.init()
    for index in range(60):
        pipeline.send(Topic.SESSION, b'{"not": "an event"}', key=f"P-{index:010x}")
    done = pipeline.run(
        "up",
        "--drain",
        timeout=120,
        env={
            "EXNET_DLQ_WINDOW": "50",
            "EXNET_DLQ_MAX_RATIO": "0.5",
            "EXNET_STREAM_BATCH_MAX": "20",
        },
    )
    assert done.returncode == 78, done.stderr[-3000:]
    assert "were rejected" in done.stderr and "EXNET_DLQ_MAX_RATIO" in done.stderr
