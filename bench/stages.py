"""The four stream stages alone, in memory, on one core: the ceiling of one stream worker.

The load is the pipeline benchmark's throughput run (the simulator, 1,700
participants, seed 7, 1% duplicates, 0.5% invalid): its messages are split into
the partitions Kafka would hold them in (6 per topic), and each stage runs over
its input as the stream worker's agents do, batch by batch, its output feeding
the next: validate (``streams.validate``), deduplicate (``streams.dedup``),
aggregate (``streams.aggregate``), rollup (``streams.rollup``); the last two
send what a window of ``WINDOW_RECORDS`` accepted events changed once, as their
agents do (``streams.app.VIEWS_WINDOW_S``). No Kafka, no Faust, no ClickHouse:
tables are plain dicts (the worker's also queue a changelog record per write),
records are plain objects (the worker's are aiokafka's, decoded on its consumer
thread). So the figures are a floor: what a stream worker pays per message even
if moving messages were free.

Two batch sizes: ``CATCH_UP_BATCH`` records (what each fetch brings while a
backlog drains) and ``STEADY_BATCH`` (a partition's share of a fetch at a
steady few thousand events a second). The baseline, timed in the same run and
process: ``orjson.loads`` of every message, which is all the pipeline
benchmark's bare loop does with a message. The process is pinned to one core,
as one stream worker's event loop is; the garbage collector is set as the
worker sets it. Figures are for people: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bench.pipeline import PARTICIPANTS, QUICK_PARTICIPANTS  # its throughput load
from bench.validation import pin_to_one_core
from contracts.registry import DEMO_REGISTRY, load_registry
from contracts.topics import Topic, topic_name
from contracts.validation import Validator
from contracts.wire import Outgoing, read_validated
from exnet.runner import GC_YOUNG_THRESHOLD
from producers import SimulationConfig, generate
from streams.aggregate import AggregateStage
from streams.dedup import DeduplicateStage
from streams.rollup import LiveViews, RollupStage
from streams.validate import ValidateStage

__all__ = ["run"]

#: Records per batch while catching up (a fetch's share per partition) and at a steady rate.
CATCH_UP_BATCH, STEADY_BATCH = 500, 20
#: Partitions per topic (``EXNET_PARTITIONS``'s default); the contributions topic has one.
PARTITIONS = 6
#: Accepted events the aggregate agent's window holds: streams.app.VIEWS_WINDOW_S at a
#: steady 5,000 events/s.
WINDOW_RECORDS = 2_500
STAGES = ("validate", "deduplicate", "aggregate", "rollup")


@dataclass(slots=True)
class Record:
    """What the stages read of a Kafka record."""

    key: bytes | None
    value: bytes | None
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 0


class Partitions:
    """Records appended per partition, each given the partition's next offset."""

    def __init__(self) -> None:
        self.records: dict[Any, list[Record]] = defaultdict(list)

    def append(self, partition: Any, message: Outgoing, timestamp: int = 0) -> None:
        _, _, key, value, headers, _ = message
        records = self.records[partition]
        records.append(Record(key, value, len(records), list(headers or ()), timestamp))


def _partition(key: bytes | None) -> int:
    """A key's partition, the same in every run (Python's ``hash`` of bytes is not)."""
    return zlib.crc32(key or b"") % PARTITIONS


def _batches(records: list[Record], size: int) -> list[list[Record]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def _in_turn(partitions: dict[Any, list[Record]], size: int) -> Iterator[tuple[Any, list[Record]]]:
    """Each partition's next batch of ``size`` records in turn, until all are read."""
    batches = {
        partition: iter(_batches(records, size)) for partition, records in partitions.items()
    }
    while batches:
        for partition in list(batches):
            chunk = next(batches[partition], None)
            if chunk is None:
                del batches[partition]
            else:
                yield partition, chunk


def _stages(messages: list[Any], batch: int) -> dict[str, float]:
    """CPU seconds of each stage over ``messages``, in batches of ``batch`` records."""
    registry = load_registry(DEMO_REGISTRY)
    now = datetime.now(UTC)
    sent_ms = int(time.time() * 1000)
    inputs = Partitions()
    for message in messages:
        inputs.append(
            (topic_name(message.topic, ""), _partition(message.key)),
            (message.topic.value, None, message.key, message.value, [], None),
            sent_ms,
        )
    validated_topic, accepted_topic = Topic.VALIDATED.value, Topic.ACCEPTED.value
    validate = ValidateStage(
        Validator(registry, ""), validated_topic, Topic.DEADLETTER.value, PARTITIONS
    )
    deduplicate = DeduplicateStage(accepted_topic, Topic.DEADLETTER.value, "")
    aggregate = AggregateStage(Topic.CONTRIBUTIONS.value, registry.primary_endpoint)
    rollup = RollupStage(Topic.VIEWS.value, {n.id: n.name for n in registry.nodes}, LiveViews())
    validated, accepted, contributions = Partitions(), Partitions(), Partitions()
    seen: dict[int, dict[bytes, bytes]] = defaultdict(dict)
    participants: dict[int, dict[bytes, bytes]] = defaultdict(dict)
    latest: dict[bytes, bytes] = {}
    spent: dict[str, float] = {}

    def timed(name: str, body: Callable[[], None]) -> None:
        started = time.process_time()
        body()
        spent[name] = time.process_time() - started

    def run_validate() -> None:
        for (topic, partition), records in inputs.records.items():
            for chunk in _batches(records, batch):
                for out in validate(topic, partition, chunk, now).outgoing:
                    if out[0] == validated_topic:
                        validated.append(out[1], out)

    def run_deduplicate() -> None:
        for partition, records in validated.records.items():
            for chunk in _batches(records, batch):
                read = [read_validated(r.key or b"", r.value or b"", r.headers) for r in chunk]
                for out in deduplicate(read, seen[partition], now).outgoing:
                    if out[0] == accepted_topic:
                        accepted.append(_partition(out[2]), out)

    ends: list[int] = []  # the contributions' end offset at each window's close

    def run_aggregate() -> None:
        # Partitions' batches in turn, as a fetch brings them; the agent's window of
        # WINDOW_RECORDS sends each participant's pieces once.
        touched: dict[int, dict[bytes, set[str]]] = defaultdict(dict)
        held = 0

        def send() -> None:
            for partition, theirs in touched.items():
                for out in aggregate.contributions(theirs, participants[partition]):
                    contributions.append(0, out)
            touched.clear()
            ends.append(len(contributions.records[0]))

        for partition, chunk in _in_turn(accepted.records, batch):
            result = aggregate(chunk, participants[partition], send=False)
            for participant, pieces in result.touched.items():
                touched[partition].setdefault(participant, set()).update(pieces)
            held += len(chunk)
            if held >= WINDOW_RECORDS:
                send()
                held = 0
        send()

    def run_rollup() -> None:
        # A window's contributions in batches, then its rows once.
        records, start = contributions.records[0], 0
        for end in ends:
            for chunk in _batches(records[start:end], batch):
                rollup(chunk, latest, 1, chunk[-1].offset + 1, now, send=False)
            rollup.flush(now)
            start = end

    gc.collect()
    gc.freeze()
    for name, body in zip(
        STAGES, (run_validate, run_deduplicate, run_aggregate, run_rollup), strict=True
    ):
        timed(name, body)
    gc.unfreeze()
    return spent


def _parse_seconds(messages: list[Any]) -> float:
    started = time.process_time()
    for message in messages:
        try:  # noqa: SIM105  # as the bare loop does it
            orjson.loads(message.value)
        except orjson.JSONDecodeError:
            pass
    return time.process_time() - started


def run(args: argparse.Namespace) -> None:
    participants = QUICK_PARTICIPANTS if getattr(args, "quick", False) else PARTICIPANTS
    registry = load_registry(DEMO_REGISTRY)
    config = SimulationConfig(
        participants=participants, seed=7, duplicate_share=0.01, invalid_share=0.005
    )
    messages = generate(registry, config).messages
    pinning, cores = pin_to_one_core()
    threshold = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *threshold[1:])
    try:
        parse_s = _parse_seconds(messages)
        figures = {batch: _stages(messages, batch) for batch in (CATCH_UP_BATCH, STEADY_BATCH)}
    finally:
        gc.set_threshold(*threshold)
        if cores is not None:  # the benchmarks that follow get the machine back
            os.sched_setaffinity(0, cores)
    n = len(messages)
    print(
        f"{n:,} messages; {pinning}; CPU µs per message (batches of {CATCH_UP_BATCH} | "
        f"{STEADY_BATCH} records)"
    )
    for name in STAGES:
        print(
            f"  {name:<12} {figures[CATCH_UP_BATCH][name] * 1e6 / n:7.1f} | "
            f"{figures[STEADY_BATCH][name] * 1e6 / n:7.1f}"
        )
    parse_us = parse_s * 1e6 / n
    for batch in (CATCH_UP_BATCH, STEADY_BATCH):
        total_us = sum(figures[batch].values()) * 1e6 / n
        print(
            f"  the four stages, batches of {batch}: {total_us:.1f} µs -> at most "
            f"{1e6 / total_us:,.0f} msgs/s on one core, Kafka free"
        )
    print(
        f"  baseline, orjson.loads of the same messages: {parse_us:.1f} µs -> "
        f"{1e6 / parse_us:,.0f} msgs/s (the bare loop's work per message)"
    )
