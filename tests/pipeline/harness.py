"""Drive the real pipeline from a test: publish with kafka-python, run `exnet` as a subprocess,
read ClickHouse and the dead-letter topic back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from contracts.topics import Topic, topic_name
from contracts.views import ArmKey, DailyKey, Views
from exnet.settings import Settings
from sinks.client import connect

__all__ = ["EXNET", "Pipeline", "assert_views_exact", "stream_views"]

#: The installed console script, run as a separate process like an operator would.
EXNET = str(Path(sys.executable).with_name("exnet"))


class Pipeline:
    """One isolated exnet deployment: its own topic prefix, var dir and embedded database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = {
            **os.environ,
            "EXNET_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "EXNET_TOPIC_PREFIX": settings.topic_prefix,
            "EXNET_VAR_DIR": str(settings.var_dir),
            "EXNET_PARTITIONS": str(settings.partitions),
            "EXNET_METRICS_PORT": "0",
            "EXNET_LOG_LEVEL": "INFO",
        }
        self._producer: KafkaProducer | None = None
        self.sent: list[tuple[Topic, bytes, bytes | None]] = []
        #: Every `exnet up` :meth:`start` began: :meth:`close` kills those still running,
        #: so that a failed test leaves none behind (one ran on for half an hour,
        #: retrying its test's deleted cluster).
        self._started: list[subprocess.Popen[bytes]] = []

    # -- Kafka ----------------------------------------------------------------
    def topic(self, topic: Topic) -> str:
        return topic_name(topic, self.settings.topic_prefix)

    def send(
        self, topic: Topic, value: bytes | dict[str, Any], key: bytes | str | None = ""
    ) -> None:
        """Publish one message; ``key=""`` means the event's own participant_id."""
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        if key == "":
            assert isinstance(value, dict)
            key = value["participant_id"]
        key_bytes = key.encode() if isinstance(key, str) else key
        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                acks="all",
                linger_ms=5,
                max_request_size=4 * 1024 * 1024,
            )
        self._producer.send(self.topic(topic), value=raw, key=key_bytes)
        self.sent.append((topic, raw, key_bytes))

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.flush()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        for process in self._started:
            self.kill(process)

    def read_topic(self, topic: Topic | str) -> list[Any]:
        """Every message of ``topic`` (a :class:`Topic`, or a physical name: a table's
        changelog) from the beginning to its current end."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
        )
        try:
            name = self.topic(topic) if isinstance(topic, Topic) else topic
            partitions = [
                TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())
            ]
            consumer.assign(partitions)
            consumer.seek_to_beginning()
            ends = consumer.end_offsets(partitions)
            records: list[Any] = []
            deadline = time.monotonic() + 30
            while any(consumer.position(tp) < ends[tp] for tp in partitions):
                assert time.monotonic() < deadline, f"could not read {name} to its end"
                for batch in consumer.poll(timeout_ms=500).values():
                    records.extend(batch)
            return records
        finally:
            consumer.close()

    # -- the exnet command ----------------------------------------------------
    def run(
        self, *args: str, timeout: float = 180, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`exnet <args>` to its end; a command still running after ``timeout`` seconds
        fails the test with the log it wrote so far."""
        try:
            return subprocess.run(
                [EXNET, *args],
                env={**self.env, **(env or {})},
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            log = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else ""
            (self.settings.var_dir / "timed-out.log").write_text(log)  # kept for post-mortems
            command = " ".join(("exnet", *args))
            raise AssertionError(
                f"`{command}` did not finish in {timeout} s:\n{log[-8000:]}"
            ) from None

    def init(self) -> None:
        done = self.run("init", timeout=120)
        assert done.returncode == 0, done.stderr

    def drain(self, timeout: float = 240, env: dict[str, str] | None = None) -> str:
        """`exnet up --drain`; asserts it exits 0; returns its stderr (the log)."""
        self.flush()
        done = self.run("up", "--drain", timeout=timeout, env=env)
        (self.settings.var_dir / "drain.log").write_text(done.stderr)  # kept for post-mortems
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-5000:]}"
        return done.stderr

    def start(
        self, *args: str, env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `exnet up` in the background (its own process group)."""
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(
            [EXNET, "up", *args],
            env={**self.env, **(env or {})},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        self._started.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if process.poll() is None:
            os.killpg(process.pid, sig)
        process.wait(timeout=60)

    # -- ClickHouse -------------------------------------------------------------
    @contextmanager
    def clickhouse(self) -> Iterator[Any]:
        """A client on the pipeline's database (no exnet process may hold it meanwhile)."""
        client = connect(self.settings)
        try:
            yield client
        finally:
            client.close()

    def rows(self, sql: str) -> list[dict[str, Any]]:
        with self.clickhouse() as client:
            result = client.query(sql)
            return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def scalar(self, sql: str) -> Any:
        with self.clickhouse() as client:
            return client.query(sql).result_rows[0][0]


def event_ids(rows: Sequence[dict[str, Any]]) -> set[str]:
    return {row["event_id"] for row in rows}


# -- the stream-written views ------------------------------------------------------------

#: Columns of the view tables that are bookkeeping, not figures.
_BOOKKEEPING = ("updated_at", "version", "is_deleted")


def stream_views(pipeline: Pipeline, nodes: Sequence[str]) -> Views:
    """The four stream-written view tables, read with FINAL, in the oracle's shape."""

    def figures(row: dict[str, Any], *keys: str) -> dict[str, Any]:
        return {c: v for c, v in row.items() if c not in (*keys, *_BOOKKEEPING)}

    node_rows = pipeline.rows("SELECT * FROM node_summary FINAL")
    (network,) = pipeline.rows("SELECT * FROM network_summary FINAL")
    arms = pipeline.rows("SELECT * FROM arm_summary FINAL")
    daily = pipeline.rows("SELECT * FROM node_daily FINAL")
    return Views(
        node_summary={
            r["node_id"]: figures(r, "node_id", "node_name")
            for r in node_rows
            if r["node_id"] in nodes
        },
        network_summary=figures(network),
        arm_summary={
            ArmKey(r["scope"], r["node_id"], r["modality"], r["adjunct"]): figures(
                r, "scope", "node_id", "modality", "adjunct"
            )
            for r in arms
        },
        node_daily={DailyKey(r["node_id"], r["day"]): figures(r, "node_id", "day") for r in daily},
    )


def assert_views_exact(pipeline: Pipeline, expected: Views) -> None:
    """The stream-written view tables hold the oracle's figures in every row and column
    (minutes to 1e-9: sums of floats), and `exnet verify` finds them equal to the
    figures ClickHouse recomputes from the facts."""
    got = stream_views(pipeline, list(expected.node_summary))
    assert got.node_summary.keys() == expected.node_summary.keys()
    for node, want in expected.node_summary.items():
        assert got.node_summary[node] == pytest.approx(want), (node, got.node_summary[node], want)
    assert got.network_summary == pytest.approx(expected.network_summary)
    assert sorted(got.arm_summary) == sorted(expected.arm_summary)
    for arm, want in expected.arm_summary.items():
        assert got.arm_summary[arm] == pytest.approx(want), arm
    assert sorted(got.node_daily) == sorted(expected.node_daily)
    for day, want in expected.node_daily.items():
        assert got.node_daily[day] == pytest.approx(want), day
    verified = pipeline.run("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
