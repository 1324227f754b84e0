"""Helpers of the producer tests: run the real CLI, read topics back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from exnet.settings import Settings

EXNET = Path(sys.executable).with_name("exnet")
#: Partitions of the input topics, as the platform creates them.
PUB_PARTITIONS = 6
#: Longest wait for a test's messages to be readable back.
PUB_CONSUME_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class PubRecord:
    topic: str
    partition: int
    key: bytes | None
    value: bytes


def pub_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for an ``exnet`` subprocess that uses ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXNET_")}
    env.update(
        EXNET_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        EXNET_TOPIC_PREFIX=settings.topic_prefix,
        EXNET_VAR_DIR=str(settings.var_dir),
    )
    if settings.registry is not None:
        env["EXNET_REGISTRY"] = str(settings.registry)
    env.update(extra)
    return env


def pub_exnet(
    *args: str, env: dict[str, str], cwd: Path, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``exnet`` console script."""
    return subprocess.run(
        [str(EXNET), *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def pub_consume(bootstrap: str, topics: Iterable[str]) -> list[PubRecord]:
    """Every message now in ``topics``, read from the beginning to the current end."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1_000,
    )
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end: dict[TopicPartition, int] = consumer.end_offsets(partitions)
        records: list[PubRecord] = []
        deadline = time.monotonic() + PUB_CONSUME_TIMEOUT_S
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                pytest.fail("messages did not come back in time")
            for tp, batch in consumer.poll(timeout_ms=500).items():
                records.extend(PubRecord(tp.topic, tp.partition, m.key, m.value) for m in batch)
        return records
    finally:
        consumer.close()
