"""Crashes and scale-out: `exnet up` killed with SIGKILL at random points mid-stream, and two
workers at once; afterwards facts and views are exact (nothing lost, nothing doubled)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from contracts.views import compute_views
from exnet.monitor import PipelineProgress
from streams.names import streams_group
from tests.pipeline.events import as_event
from tests.pipeline.harness import Pipeline, assert_views_exact
from tests.pipeline.load import participant_events
from tests.pipeline.test_end_to_end import NODES

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]

#: Seconds the final `exnet up --drain` after the faults may take, start-up included.
DRAIN_BOUND_S = 60


def _publish_slowly(
    pipeline: Pipeline,
    events: list[tuple[Any, dict[str, Any]]],
    duplicates: random.Random,
    seconds: float,
) -> None:
    """Spread the load over ``seconds`` so that kills land mid-stream; ~5% sent twice."""
    chunk = max(1, len(events) // 40)
    for start in range(0, len(events), chunk):
        for topic, event in events[start : start + chunk]:
            pipeline.send(topic, event)
            if duplicates.random() < 0.05:
                pipeline.send(topic, event)
        pipeline.flush()
        time.sleep(seconds / 40)


def _assert_exact(pipeline: Pipeline, accepted: list[dict[str, Any]]) -> None:
    expected = {event["event_id"] for event in accepted}
    counts = pipeline.rows(
        "SELECT count() AS rows, uniqExact(event_id) AS ids FROM ("
        " SELECT event_id FROM enrollment_events FINAL UNION ALL"
        " SELECT event_id FROM session_events FINAL UNION ALL"
        " SELECT event_id FROM assay_events FINAL UNION ALL"
        " SELECT event_id FROM assessment_events FINAL)"
    )[0]
    assert counts == {"rows": len(expected), "ids": len(expected)}
    assert pipeline.scalar("SELECT count() FROM rejected_events FINAL") == 0
    # The stream-written views: the oracle's figures in every row and column, and
    # `exnet verify` finds them equal to ClickHouse's recompute from the facts.
    assert_views_exact(pipeline, compute_views([as_event(event) for event in accepted], NODES))


def _stop_at_random_points(
    pipeline: Pipeline,
    log: Path,
    events: list[tuple[Any, dict[str, Any]]],
    publish_seconds: float,
    runs: int,
    run_seconds: tuple[float, float],
    stop: Callable[[subprocess.Popen[bytes]], None],
    seed: int,
) -> None:
    """Publish ``events`` in the background while `exnet up` runs ``runs`` times, each
    stopped by ``stop`` after a random while; then drain and check the facts exact."""
    rng = random.Random(seed)
    pipeline.init()
    feeder = threading.Thread(
        target=_publish_slowly, args=(pipeline, events, random.Random(seed + 1), publish_seconds)
    )
    feeder.start()
    for _ in range(runs):
        worker = pipeline.start(log=log)
        time.sleep(rng.uniform(*run_seconds))
        assert worker.poll() is None, f"worker died by itself:\n{log.read_text()[-3000:]}"
        stop(worker)
    feeder.join()
    # The final drain reads what the last worker left: a stalled partition (as Faust's
    # paused partitions once did after a kill) would miss this bound.
    pipeline.drain(timeout=DRAIN_BOUND_S)
    _assert_exact(pipeline, [event for _, event in events])


def test_sigkill_at_random_points_loses_and_doubles_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    events = participant_events(seed=7, participants=2_650)  # ~25,000 events
    assert len(events) >= 25_000
    # SIGKILL five times, whatever the worker was doing.
    _stop_at_random_points(
        pipeline, tmp_path / "up.log", events, 45.0, 5, (5.0, 10.0), pipeline.kill, 20261128
    )


def test_sigterm_mid_stream_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    """A graceful stop (a deploy, an operator) in the middle of batches commits only
    what was processed: batches cut short by the stop are read again on restart."""
    log = tmp_path / "up.log"

    def terminate(worker: subprocess.Popen[bytes]) -> None:
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]

    events = participant_events(seed=9, participants=200)  # ~3,000 events
    _stop_at_random_points(pipeline, log, events, 15.0, 3, (4.0, 7.0), terminate, 20261129)


def test_two_workers_share_the_stream_and_agree(pipeline: Pipeline, tmp_path: Path) -> None:
    events = participant_events(seed=11, participants=250)
    accepted = [event for _, event in events]
    pipeline.init()
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    workers = [pipeline.start(log=log) for log in logs]
    try:
        _wait_for_members(pipeline, expected=2)
        _publish_slowly(pipeline, events, random.Random(2), 5.0)
        _wait_until_drained(pipeline)
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker, log in zip(workers, logs, strict=True):
            assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        for worker in workers:
            pipeline.kill(worker)
    # With the embedded database one of them wrote and the other stood by as writer.
    text = logs[0].read_text() + logs[1].read_text()
    assert text.count("writing ClickHouse database") == 1
    assert "standing by as writer" in text
    # In exnet's words only: not chDB's own lock message at each try of the standby,
    # nor a terminal escape (Faust's spinner wrote one into every log).
    assert "Cannot lock file" not in text
    assert "\x1b" not in text
    assert "]: Starting..." not in text  # Faust's services' chatter: its loggers only warn
    _assert_exact(pipeline, accepted)


def _wait_until_drained(pipeline: Pipeline, timeout: float = 240.0) -> None:
    progress = PipelineProgress(pipeline.settings)
    deadline = time.monotonic() + timeout
    try:
        in_a_row = 0
        while in_a_row < 2:
            assert time.monotonic() < deadline, "the workers did not drain the pipeline"
            in_a_row = in_a_row + 1 if progress.drained() else 0
            time.sleep(0.5)
    finally:
        progress.close()


def _wait_for_members(pipeline: Pipeline, expected: int, timeout: float = 90.0) -> None:
    """Until the stream workers' group has ``expected`` members sharing its partitions."""
    admin = KafkaAdminClient(bootstrap_servers=pipeline.settings.kafka_bootstrap)
    group = streams_group(pipeline.settings)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            description = admin.describe_groups([group])[group]
            if len(description.get("members", ())) >= expected:
                return
            time.sleep(0.5)
    finally:
        admin.close()
    pytest.fail(f"the stream group {group} never had {expected} members")
