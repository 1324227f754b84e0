"""Start-up: `exnet up` right after `exnet init` writes to ClickHouse within seconds, every time.

The sink, and later the stream worker, once subscribed before the broker reported
the just-created topics, and sat with no partitions until their client's
five-minute metadata refresh.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from contracts.registry import DEMO_REGISTRY, load_registry
from contracts.topics import Topic
from contracts.views import SUMMARY_COLUMNS
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
                    break
            time.sleep(0.2)
    finally:
        pipeline.kill(worker)
    # Each consumer joined with its topics' metadata (a join without it assigned the
    # stream worker, or the sink, nothing until the five-minute metadata refresh).
    lines = log.read_text()
    assert "Ignoring missing topic" not in lines, lines[-3000:]
    assert "No partition metadata" not in lines, lines[-3000:]
    return elapsed


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


def test_an_empty_network_has_its_summaries_rows_and_a_new_node_gets_one(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """SPEC §4: a row per registered node in ``node_summary`` and one in
    ``network_summary`` (zeros) after a drain with nothing to read; a node added to the
    registry gets its row at the next start, with no event of its own."""
    pipeline.init()
    pipeline.drain(timeout=120)
    nodes = pipeline.rows("SELECT * FROM node_summary FINAL ORDER BY node_id")
    registered = load_registry(DEMO_REGISTRY)
    assert [(row["node_id"], row["node_name"]) for row in nodes] == [
        (node.id, node.name) for node in sorted(registered.nodes, key=lambda n: n.id)
    ]
    (network,) = pipeline.rows("SELECT * FROM network_summary FINAL")
    for row in (*nodes, network):
        assert not any(row[column] for column in SUMMARY_COLUMNS), row
    verify = pipeline.run("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    document = yaml.safe_load(DEMO_REGISTRY.read_text())
    document["nodes"].append(
        {
            "id": "N04",
            "name": "Northwind Clinical Research Unit",
            "sites": [{"id": "N04-S01", "name": "Harbourside Clinic"}],
        }
    )
    grown = tmp_path / "registry.yaml"
    grown.write_text(yaml.safe_dump(document))
    pipeline.drain(timeout=120, env={"EXNET_REGISTRY": str(grown)})
    (added,) = pipeline.rows("SELECT * FROM node_summary FINAL WHERE node_id = 'N04'")
    assert added["node_name"] == "Northwind Clinical Research Unit"
    assert not any(added[column] for column in SUMMARY_COLUMNS), added
    verify = pipeline.run("verify", env={"EXNET_REGISTRY": str(grown)})
    assert verify.returncode == 0, verify.stdout + verify.stderr
