"""Publish throughput: the validating, spooling ``Publisher`` against a bare producer loop.

The load is the simulator's valid events (seeded). The baseline is a plain
kafka-python ``KafkaProducer`` loop with the publisher's own producer settings
(``producer_config``), sending the same bytes with the same keys to the same
kind of topics (4 input topics, 6 partitions each); its topics and keys are
worked out before the clock starts, and both connect before it starts. The
publisher is timed from the first ``publish`` to the end of ``close``
(validation, write-ahead spool with fsync, send, wait for every
acknowledgement); the bare loop from the first ``send`` to the end of
``flush``. Every pass gets fresh topics and a fresh spool; the passes
alternate between the two so that a noisy neighbour hurts both alike, and the
best pass of each counts.

A third figure, the publisher with Kafka switched off (validation and spool
only), shows what the publisher itself costs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from contracts import INPUT_TOPICS, Topic, load_registry, topic_name
from contracts.registry import DEMO_REGISTRY
from exnet.settings import Settings, load_settings
from producers import MessageKind, Publisher, SimulationConfig, generate, producer_config

__all__ = ["run"]

#: Events per pass; ``--quick`` uses ``QUICK_EVENTS``.
FULL_EVENTS = 100_000
QUICK_EVENTS = 10_000
#: Timed passes of each contender (alternating); the best one counts. Four: with two,
#: two runs in a row on this machine gave 0.92 and 0.75 (2026-12-01), each contender's
#: passes up to 25% apart.
PASSES = 4
QUICK_PASSES = 1
#: Partitions per input topic, as ``exnet init`` creates them.
PARTITIONS = 6
#: The simulator makes about 64 events a participant; ask for a margin more.
_EVENTS_PER_PARTICIPANT = 60


def _load(count: int) -> list[bytes]:
    participants = count // _EVENTS_PER_PARTICIPANT + 1
    simulation = generate(
        load_registry(DEMO_REGISTRY), SimulationConfig(seed=2024, participants=participants)
    )
    values = [m.value for m in simulation.messages if m.kind is MessageKind.EVENT]
    if len(values) < count:
        raise RuntimeError(f"the simulation gave {len(values)} events, fewer than {count}")
    return values[:count]


def _fresh_settings(
    base: Settings, admin: KafkaAdminClient, var_dir: Path, created: list[str]
) -> Settings:
    prefix = f"bench{uuid4().hex[:8]}."
    topics = [topic_name(topic, prefix) for topic in INPUT_TOPICS]
    admin.create_topics([NewTopic(topic, PARTITIONS, 1) for topic in topics])
    created.extend(topics)
    return base.model_copy(update={"topic_prefix": prefix, "var_dir": var_dir})


def _bare(settings: Settings, values: list[bytes]) -> float:
    routed = []
    for value in values:
        document = orjson.loads(value)
        topic = Topic.for_event_type(document["schema"].split("/")[0])
        routed.append(
            (topic_name(topic, settings.topic_prefix), document["participant_id"].encode(), value)
        )
    producer = KafkaProducer(**producer_config(settings, "exnet-bench-bare"))
    try:
        started = time.perf_counter()
        send = producer.send
        futures = [send(topic, value=value, key=key) for topic, key, value in routed]
        producer.flush()
        elapsed = time.perf_counter() - started
    finally:
        producer.close()
    failed = sum(1 for future in futures if not future.succeeded())
    if failed:
        raise RuntimeError(f"the bare loop lost {failed} events")
    return elapsed


def _publisher(settings: Settings, values: list[bytes], *, connect: bool = True) -> float:
    publisher = Publisher(settings, connect=connect)
    publisher.online  # noqa: B018  (connects now: the bare loop's connection is not timed either)
    started = time.perf_counter()
    publish = publisher.publish
    for value in values:
        publish(value)
    summary = publisher.close()
    elapsed = time.perf_counter() - started
    expected = (len(values), 0) if connect else (0, len(values))
    if (summary.sent, summary.spooled) != expected:
        raise RuntimeError(f"the publisher sent {summary.sent}, spooled {summary.spooled}")
    return elapsed


def _row(name: str, count: int, seconds: list[float]) -> float:
    best = min(seconds)
    passes = ", ".join(f"{s:.2f}" for s in seconds)
    print(f"{name:<44} {count / best:>10,.0f} ev/s   best {best:6.2f} s   passes: {passes}")
    return count / best


def run(args: argparse.Namespace) -> None:
    count = QUICK_EVENTS if args.quick else FULL_EVENTS
    passes = QUICK_PASSES if args.quick else PASSES
    base = load_settings()
    values = _load(count)
    size = sum(len(v) for v in values) / len(values)
    print(f"{count} simulator events, {size:.0f} bytes on average, Kafka at {base.kafka_bootstrap}")
    admin = KafkaAdminClient(bootstrap_servers=base.kafka_bootstrap, client_id="exnet-bench")
    timings: dict[str, list[float]] = {"bare": [], "publisher": [], "offline": []}
    created: list[str] = []
    contenders: list[tuple[str, Callable[[Settings], float]]] = [
        ("bare", lambda s: _bare(s, values)),
        ("publisher", lambda s: _publisher(s, values)),
    ]
    try:
        with tempfile.TemporaryDirectory(prefix="exnet-bench-") as tmp:
            for number in range(passes):
                for name, contender in contenders:
                    var_dir = Path(tmp) / f"{name}-{number}"
                    settings = _fresh_settings(base, admin, var_dir, created)
                    timings[name].append(contender(settings))
                offline = base.model_copy(update={"var_dir": Path(tmp) / f"offline-{number}"})
                timings["offline"].append(_publisher(offline, values, connect=False))
    finally:
        if created:
            admin.delete_topics(created)
        admin.close()
    bare = _row("bare KafkaProducer loop (send + flush)", count, timings["bare"])
    published = _row("Publisher (validate + spool + send + acks)", count, timings["publisher"])
    _row("Publisher, Kafka off (validate + spool only)", count, timings["offline"])
    print(f"publisher / bare = {published / bare:.2f}  (target >= 0.80)")
