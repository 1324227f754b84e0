"""Start-up: `exnet up` right after `exnet init` writes to ClickHouse within seconds, every time.

The sink once subscribed before its broker reported the just-created topics and
sat with no partitions until kafka-python's five-minute metadata refresh.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from contracts.topics import Topic
from sinks.query import endpoint_file
from tests.conftest import SettingsFactory
from tests.pipeline.events import EventMaker
from tests.pipeline.harness import Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]

#: Seconds from starting `exnet up` until an event published then is queryable.
ROWS_WITHIN_S = 10.0
RUNS = 10


def _rows_within(pipeline: Pipeline, log: Path, seconds: float, init: bool = True) -> float:
    """Start `exnet up` at once after `exnet init` (or without it); seconds until its
    first row is queryable."""
    make = EventMaker(seed=5)
    if init:
        done = pipeline.run("init", timeout=120)
        assert done.returncode == 0, done.stderr
    started = time.monotonic()
    worker = pipeline.start(log=log)
    try:
        pipeline.send(Topic.ENROLLMENT, make.enrollment("P-00000000b1", "N01-S01", "screened"))
        pipeline.flush()
        while True:
            elapsed = time.monotonic() - started
            assert worker.poll() is None, log.read_text()[-3000:]
            assert elapsed < seconds, f"no row after {elapsed:.1f} s:\n{log.read_text()[-3000:]}"
            if endpoint_file(pipeline.settings).exists():
                count = pipeline.run("sql", "SELECT count() FROM enrollment_events")
                if count.returncode == 0 and count.stdout.splitlines()[1:] == ["1"]:
                    return elapsed
            time.sleep(0.2)
    finally:
        pipeline.kill(worker)


def test_up_right_after_init_writes_within_seconds_every_time(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    took = []
    for run in range(RUNS):
        pipeline = Pipeline(settings_factory(partitions=3, var_dir=tmp_path / str(run)))
        try:
            took.append(_rows_within(pipeline, tmp_path / f"up-{run}.log", ROWS_WITHIN_S))
        finally:
            pipeline.close()
    assert len(took) == RUNS
    print(f"seconds to the first row: {', '.join(f'{t:.1f}' for t in took)}")


def test_up_without_init_in_a_var_dir_not_yet_made_writes_within_seconds(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    # A fresh machine: no var directory, no topics, no tables; `exnet up` makes them
    # (the producer's send waits for the topic it creates).
    var_dir = tmp_path / "fresh" / "var"
    pipeline = Pipeline(settings_factory(partitions=3, var_dir=var_dir))
    try:
        _rows_within(pipeline, tmp_path / "up.log", ROWS_WITHIN_S, init=False)
    finally:
        pipeline.close()
    assert (var_dir / "faust").is_dir()
