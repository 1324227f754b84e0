"""End-to-end throughput, latency and memory of the pipeline, beside a bare consumer, in one run.

1. Throughput: after an untimed warm-up run of the same size, a simulated
   network (>= 100k events; --quick: ~13k) is published, then (a) a bare
   kafka-python loop consumes the four input topics and json-parses every
   message (the baseline), and (b) `exnet up --drain` validates, deduplicates
   and writes the same messages to embedded ClickHouse. Figures: events/s of
   both over wall time, and the ratio.
2. Latency: `exnet up` runs while a producer publishes at a steady 5,000
   events/s for 30 s, recording each event's send time; after, every event's
   `ingested_at` is read back from ClickHouse: p50/p99 of the difference
   (publish -> queryable), and how many arrived; then the p99 of each second's
   sends, so that a stall shows as one (the run starts once `exnet up` says it
   is ready: ``exnet_ready``); where the latency accrued, hop by hop (each
   stage's output carries Kafka's timestamp of when it was produced); and the
   cores each process kept busy while the load ran.
3. Memory: the peak resident set of `exnet up --drain` over a 1M-event run
   (--quick: the throughput run's), from the kernel's accounting of the child;
   and that run's throughput beside the bare loop over the same messages.
   Then a restart: `exnet up --drain` over a few hundred new events, its
   tables first rebuilt from the changelogs of the 1M.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from contracts.errors import UserError
from contracts.registry import load_registry
from contracts.topics import INPUT_TOPICS, Topic, topic_name
from exnet.admin import admin_client, delete_prefixed
from exnet.broker import Cluster, cluster_status
from exnet.runner import WRITER_PROCESS_CODE
from exnet.settings import Settings, load_settings
from producers import SimulationConfig, generate, simulate
from producers.simulate import SimMessage
from sinks import FACT_TABLES, run_query

EXNET = str(Path(sys.executable).with_name("exnet"))
#: ~64 events per simulated participant.
PARTICIPANTS, QUICK_PARTICIPANTS = 1_700, 200
LATENCY_RATE = 5_000  # events/s
LATENCY_SECONDS, QUICK_LATENCY_SECONDS = 30, 10
#: Seconds between the latency run's sends (each sends what fell due meanwhile).
GENERATOR_TICK_S = 0.005
#: ~1M events for the memory run.
MEMORY_PARTICIPANTS = 15_700
#: Participants whose events a restart after the 1M-event run drains.
RESTART_PARTICIPANTS = 20
#: #11's goal for `exnet up --drain` against the bare loop.
TARGET_RATIO = 0.25


def _env(settings: Settings, metrics_port: int = 0) -> dict[str, str]:
    return {
        **os.environ,
        "EXNET_TOPIC_PREFIX": settings.topic_prefix,
        "EXNET_VAR_DIR": str(settings.var_dir),
        "EXNET_METRICS_PORT": str(metrics_port),
        "EXNET_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
    }


def _bare_loop(settings: Settings) -> tuple[int, float]:
    """Consume every input message once and json-parse it: the baseline."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    partitions = [
        TopicPartition(name, p)
        for name in (topic_name(t, settings.topic_prefix) for t in INPUT_TOPICS)
        for p in sorted(consumer.partitions_for_topic(name) or ())
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(partitions)
    total = sum(ends.values())
    count = 0
    started = time.perf_counter()
    while count < total:
        for records in consumer.poll(timeout_ms=200, max_records=10_000).values():
            for record in records:
                try:  # noqa: SIM105  # the fastest form: the baseline must not be slowed
                    orjson.loads(record.value)
                except orjson.JSONDecodeError:
                    pass
                count += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return count, elapsed


BARE_LABEL = "bare kafka-python consume + json parse"


def _print_rate(label: str, count: int, seconds: float, note: str = "") -> None:
    """One figure line: what ran, over how many messages, in how long, at what rate."""
    print(f"{label:<44} {count:>9,} msgs {seconds:8.1f} s {count / seconds:>10,.0f} msgs/s{note}")


@contextmanager
def _own_topics(base: Settings, label: str) -> Iterator[Settings]:
    """``base`` under a topic prefix of its own (``<label><6 hex>.``); on the way out,
    whatever happened, the prefix's topics and consumer groups are deleted from the
    broker: a million-event run leaves gigabytes on it otherwise."""
    settings = base.model_copy(update={"topic_prefix": f"{label}{uuid.uuid4().hex[:6]}."})
    try:
        yield settings
    finally:
        prefix = settings.topic_prefix
        try:
            with admin_client(settings) as admin:
                topics, groups = delete_prefixed(admin, prefix)
        except (UserError, KafkaError) as exc:  # never hide the run's own error
            print(f"could not delete the topics under {prefix}: {exc}")
        else:
            print(f"deleted {len(topics)} topics and {len(groups)} consumer groups under {prefix}")


def _throughput(base: Settings, participants: int) -> None:
    # First an untimed run as large, on its own topics and database. A broker's JVM
    # compiles its hot paths over its first minutes of traffic; a deployed broker runs
    # warm. Measured 2026-12-01 (108k events, the broker restarted before each series):
    # with no warm-up, 183 µs of the broker's CPU a message and a 34.3 s drain (the
    # next two runs: 40 and 38 µs, 24.0 and 28.2 s); after 31k events, 84 µs and
    # 28.5 s; after 107k, 41 µs and 24.5 s.
    warm_base = base.model_copy(update={"var_dir": base.var_dir / "warm-up"})
    with _own_topics(warm_base, "warm") as settings:
        subprocess.run([EXNET, "init"], env=_env(settings), check=True, capture_output=True)
        warm = simulate(settings, participants=participants, seed=3)
        started = time.perf_counter()
        _drain(settings)
        print(
            f"warm-up, untimed: exnet up --drain over {warm.messages:,} messages "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    with _own_topics(base, "bench") as settings:
        _throughput_run(settings, participants)


def _throughput_run(settings: Settings, participants: int) -> None:
    subprocess.run([EXNET, "init"], env=_env(settings), check=True, capture_output=True)
    result = simulate(
        settings, participants=participants, seed=7, duplicate_share=0.01, invalid_share=0.005
    )
    print(
        f"published {result.messages:,} messages ({result.accepted:,} events) "
        f"under prefix {settings.topic_prefix}",
        flush=True,
    )
    count, bare_s = _bare_loop(settings)
    started = time.perf_counter()
    drain = _drain(settings)
    exnet_s = time.perf_counter() - started
    bare_rate, exnet_rate = count / bare_s, count / exnet_s
    _print_rate(BARE_LABEL, count, bare_s)
    _print_rate("exnet up --drain (all four stages, write)", count, exnet_s)
    print(
        f"ratio exnet / bare: {exnet_rate / bare_rate:.2f}  (target >= {TARGET_RATIO}, aim 0.5); "
        f"peak RSS of exnet up and its writer: {sum(drain.peaks.values()) / 2**20:,.0f} MiB"
    )
    _print_cpu(drain, count, bare_rate)
    startup = _startup_seconds(drain.log)
    if startup is not None:
        steady = count / max(exnet_s - startup, 1e-9)
        print(
            f"  of which start-up (first log line -> the sink holds ClickHouse): {startup:.1f} s;"
            f" after it: {steady:,.0f} msgs/s (ratio {steady / bare_rate:.2f})"
        )


@dataclass
class Drain:
    """One `exnet up --drain` run, as :func:`_drain` saw it."""

    log: str
    #: pid -> peak resident set in bytes, in the order the processes appeared
    #: (`exnet up`, the stream worker, first; then its writer).
    peaks: dict[int, int]
    #: pid -> CPU seconds (user + system) last seen, same order.
    cpu: dict[int, float]
    #: pid -> the process's role: ``stream worker`` (`exnet up` itself), ``writer``.
    roles: dict[int, str]
    #: CPU seconds the local Kafka broker(s) spent meanwhile; None when not local.
    broker_cpu: float | None


def _drain(settings: Settings) -> Drain:
    """Run `exnet up --drain` to the end: its log, and the peak resident set and CPU
    time of it and of each of its child processes (the ClickHouse writer runs in one),
    and the local broker's CPU time over the run.

    Each process's peak is the kernel's high-water mark (``VmHWM``), read until it
    exits. Not ``wait4``'s ``ru_maxrss``: that one keeps the mark from before
    ``exec``, when the forked child still counted this (large) process, and it is
    the largest of the processes, not their sum. CPU times are read every 50 ms, so
    each process's last 50 ms at most are missing.
    """
    peaks_kib: dict[int, int] = {}
    cpu: dict[int, float] = {}
    roles: dict[int, str] = {}
    brokers = _broker_pids()
    broker_before = sum(_cpu_seconds(pid) for pid in brokers)
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [EXNET, "up", "--drain"], env=_env(settings), stdout=subprocess.DEVNULL, stderr=log
        )
        while process.poll() is None:
            for pid in _tree(process.pid):
                peaks_kib[pid] = max(peaks_kib.get(pid, 0), _high_water_kib(pid))
                cpu[pid] = max(cpu.get(pid, 0.0), _cpu_seconds(pid))
                if pid not in roles or roles[pid].startswith("pid "):  # again: it may
                    # have been read between the child's fork and its exec
                    roles[pid] = _role_of(pid, process.pid)
            time.sleep(0.05)
        process.wait()
        log.seek(0)
        text = log.read().decode(errors="replace")
    broker_cpu = sum(_cpu_seconds(pid) for pid in brokers) - broker_before if brokers else None
    if process.returncode != 0:
        raise SystemExit(f"exnet up --drain failed ({process.returncode}):\n{text[-3000:]}")
    peaks = {pid: kib * 1024 for pid, kib in peaks_kib.items()}
    return Drain(text, peaks, cpu, roles, broker_cpu)


def _role_of(pid: int, up: int) -> str:
    """What ``pid``, `exnet up` (``up``) or a child of it, is: ``stream worker`` (`exnet up`
    itself), ``writer`` (the ClickHouse writer's process), else its pid."""
    if pid == up:
        return "stream worker"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    return "writer" if WRITER_PROCESS_CODE.encode() in command else f"pid {pid}"


def _broker_pids() -> list[int]:
    """The pids of the local broker(s) `exnet broker` runs (none when Kafka is elsewhere)."""
    try:
        cluster = Cluster.from_settings(load_settings())
    except UserError:
        return []
    return [status.pid for status in cluster_status(cluster) if status.pid is not None]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (Linux ``/proc``); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _print_cpu(drain: Drain, count: int, bare_rate: float) -> None:
    """Each process's CPU per message, beside what the machine's cores allow at the target."""
    parts = [
        f"{drain.roles.get(pid, pid)} {seconds * 1e6 / count:,.0f}"
        for pid, seconds in drain.cpu.items()
        if seconds >= 0.01  # not a short-lived helper's
    ]
    total = sum(drain.cpu.values())
    if drain.broker_cpu is not None:
        parts.append(f"broker {drain.broker_cpu * 1e6 / count:,.0f}")
        total += drain.broker_cpu
    budget = (os.cpu_count() or 1) * 1e6 / (TARGET_RATIO * bare_rate)
    print(
        f"CPU per message, µs: {', '.join(parts)}; in all {total * 1e6 / count:,.0f} "
        f"(at {TARGET_RATIO}x the bare loop, this machine's {os.cpu_count()} cores allow "
        f"{budget:,.0f} in all)"
    )


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``); those gone meanwhile are left out."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _high_water_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _memory(base: Settings, participants: int) -> None:
    """Peak RSS over ~1M events; also their throughput beside the bare loop over the same
    messages (start-up and the drain's last checks weigh less than over 100k)."""
    with _own_topics(base, "mem") as settings:
        _memory_run(settings, participants)


def _memory_run(settings: Settings, participants: int) -> None:
    subprocess.run([EXNET, "init"], env=_env(settings), check=True, capture_output=True)
    result = simulate(settings, participants=participants, seed=5)
    count, bare_s = _bare_loop(settings)
    started = time.perf_counter()
    drain = _drain(settings)
    seconds = time.perf_counter() - started
    peaks = list(drain.peaks.values())
    bare_rate, exnet_rate = count / bare_s, result.messages / seconds
    _print_rate(BARE_LABEL, count, bare_s)
    _print_rate(
        "exnet up --drain", result.messages, seconds, f" (ratio {exnet_rate / bare_rate:.2f})"
    )
    each = ", ".join(
        f"{drain.roles.get(pid, pid)} {peak / 2**20:,.0f}"
        for pid, peak in drain.peaks.items()
        if peak >= 8 * 2**20  # not a short-lived helper's
    )
    print(
        f"peak RSS of exnet up and its writer process, added up: {sum(peaks) / 2**20:,.0f} MiB "
        f"(target < 1024 MiB; each process, MiB: {each})"
    )
    _print_cpu(drain, result.messages, bare_rate)
    # A restart: a new worker rebuilds its tables from the changelogs of all those
    # events before it reads the few new ones.
    again = simulate(settings, participants=RESTART_PARTICIPANTS, seed=6)
    started = time.perf_counter()
    restart = _drain(settings)
    print(
        f"restart after them: exnet up --drain of {again.messages:,} new events "
        f"{time.perf_counter() - started:.1f} s (its tables rebuilt from their changelogs "
        f"first); peak RSS {sum(restart.peaks.values()) / 2**20:,.0f} MiB"
    )


def _startup_seconds(log: str) -> float | None:
    """Seconds from the first log line to the sink's start, from `exnet up`'s log."""
    from datetime import datetime

    stamps = [line[:23] for line in log.splitlines() if line[:4].isdigit()]
    writing = [line[:23] for line in log.splitlines() if "writing ClickHouse database" in line]
    if not stamps or not writing:
        return None

    def parse(stamp: str) -> datetime:
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")

    return (parse(writing[0]) - parse(stamps[0])).total_seconds()


def _latency(base: Settings, seconds: int) -> None:
    with _own_topics(base, "lat") as settings:
        _latency_run(settings, seconds)


def _latency_run(settings: Settings, seconds: int) -> None:
    subprocess.run([EXNET, "init"], env=_env(settings), check=True, capture_output=True)
    simulation = generate(
        load_registry(settings.registry_path),
        SimulationConfig(seed=11, participants=seconds * LATENCY_RATE // 60),
    )
    messages = simulation.messages[: seconds * LATENCY_RATE]
    event_ids = [orjson.loads(message.value)["event_id"] for message in messages]
    port = _free_port()
    worker = subprocess.Popen(
        [EXNET, "up"],
        env=_env(settings, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_ready(port)
        brokers = _broker_pids()
        busy_before = _busy_seconds(worker.pid, brokers)
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        sent_times, sent_s = asyncio.run(_publish_steady(settings, messages, LATENCY_RATE))
        wall_s = time.perf_counter() - wall_started  # the span the CPU times cover
        generator_cpu = (time.process_time() - cpu_started) / wall_s
        busy = _busy_seconds(worker.pid, brokers)
        cores = {
            role: (spent - busy_before.get(role, 0.0)) / wall_s
            for role, spent in busy.items()
            if spent - busy_before.get(role, 0.0) >= 0.01  # not a short-lived helper's
        }
        cores["load generator"] = generator_cpu
        sent_at = dict(zip(event_ids, sent_times, strict=True))
        ingested = _wait_ingested(settings, len(set(event_ids)))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    latencies: list[float] = []
    by_second: dict[int, list[float]] = {}  # second of the run it was sent in -> latencies
    first_sent = min(sent_times)
    for event_id in ingested.keys() & sent_at.keys():
        latency = ingested[event_id] - sent_at[event_id]
        latencies.append(latency)
        by_second.setdefault(int(sent_at[event_id] - first_sent), []).append(latency)
    latencies.sort()
    print(
        f"sent {len(messages):,} events at {len(messages) / sent_s:,.0f}/s for "
        f"{sent_s:.0f} s (the load generator took {generator_cpu:.0%} of a core); "
        f"{len(latencies):,} of {len(sent_at):,} queryable"
    )
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    print(
        f"publish -> queryable latency: p50 {p50:.2f} s, p99 {p99:.2f} s, max "
        f"{latencies[-1]:.2f} s  (target p99 <= 1 s; send time recorded by the producer, "
        "ingested_at read back)"
    )
    per_second = sorted(
        (_percentile(sorted(values), 0.99), second) for second, values in by_second.items()
    )
    worst, worst_second = per_second[-1]
    over = sum(1 for p99_of_second, _ in per_second if p99_of_second > 1.0)
    print(
        f"  p99 of each second's sends: median {per_second[len(per_second) // 2][0]:.2f} s, "
        f"worst {worst:.2f} s (second {worst_second}); {over} of {len(per_second)} seconds "
        "above 1 s"
    )
    _print_hops(settings, sent_at, ingested)
    print(
        "  cores busy while sending: "
        + ", ".join(f"{role} {share:.2f}" for role, share in cores.items())
        + f"; in all {sum(cores.values()):.2f} of {os.cpu_count()}"
    )


def _busy_seconds(worker: int, brokers: Sequence[int]) -> dict[str, float]:
    """CPU seconds so far of `exnet up` (``worker``, the stream worker), each of its
    child processes by role, and the local broker(s)."""
    seconds: dict[str, float] = {}
    for pid in _tree(worker):
        role = _role_of(pid, worker)
        seconds[role] = seconds.get(role, 0.0) + _cpu_seconds(pid)
    if brokers:
        seconds["broker"] = sum(_cpu_seconds(pid) for pid in brokers)
    return seconds


def _print_hops(settings: Settings, sent_at: dict[str, float], ingested: dict[str, float]) -> None:
    """Where each event's latency accrued, hop by hop: validate and deduplicate
    timestamp their outputs as they produce them (CreateTime, this machine's clock),
    so an event's time to ``exnet.validated``, from there to ``exnet.accepted``, and
    from there to its ``ingested_at`` add up to its publish -> queryable latency."""
    validated = _produced_at(settings, Topic.VALIDATED, lambda record: record.key.decode())
    accepted = _produced_at(
        settings, Topic.ACCEPTED, lambda record: orjson.loads(record.value)["event_id"]
    )
    hops: dict[str, list[float]] = {"-> validated": [], "-> accepted": [], "-> ingested_at": []}
    if len(validated) < len(sent_at) or len(accepted) < len(sent_at):
        print(
            f"  (read back {len(validated):,} of {len(sent_at):,} events' validate timestamps,"
            f" {len(accepted):,} of their deduplicate timestamps)"
        )
    for event_id, sent in sent_at.items():
        if event_id in validated and event_id in accepted and event_id in ingested:
            hops["-> validated"].append(validated[event_id] - sent)
            hops["-> accepted"].append(accepted[event_id] - validated[event_id])
            hops["-> ingested_at"].append(ingested[event_id] - accepted[event_id])
    figures = []
    for hop, values in hops.items():
        values.sort()
        if values:
            figures.append(
                f"{hop} {_percentile(values, 0.5):.2f} / {_percentile(values, 0.99):.2f}"
            )
    print(
        f"  by hop, p50 / p99 s, over {len(hops['-> validated']):,} events (Kafka's timestamps of"
        " each stage's output): " + ", ".join(figures)
    )


def _produced_at(
    settings: Settings, topic: Topic, event_id_of: Callable[[Any], str]
) -> dict[str, float]:
    """event_id -> the Kafka timestamp (Unix seconds) of its first message on ``topic``."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    name = topic_name(topic, settings.topic_prefix)
    partitions = [
        TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(partitions)
    first: dict[str, float] = {}
    deadline = time.monotonic() + 120  # a gap no record fills (none expected) ends it too
    try:
        while time.monotonic() < deadline and any(
            (consumer.position(tp, timeout_ms=10_000) or 0) < end for tp, end in ends.items()
        ):
            for records in consumer.poll(timeout_ms=200, max_records=10_000).values():
                for record in records:
                    first.setdefault(event_id_of(record), record.timestamp / 1000)
    finally:
        consumer.close()
    return first


def _percentile(ordered: Sequence[float], share: float) -> float:
    """The value below which ``share`` of ``ordered`` (sorted, not empty) lies."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def _publish_steady(
    settings: Settings, messages: Sequence[SimMessage], rate: int
) -> tuple[list[float], float]:
    """Publish ``messages`` at ``rate`` a second, as sites would, keyed by participant and
    partitioned by murmur2 of the key (the Kafka clients' default); returns each
    message's send time (Unix seconds, taken as its tick starts handing it to the
    producer, so that a wait in the producer counts as latency) and the seconds until
    Kafka acknowledged the last.

    Every ``GENERATOR_TICK_S`` the messages that fell due go out as one record batch
    per partition (aiokafka's batch API, records built in C): kafka-python's
    ``send`` took 60% of a core at 5,000 messages/s, a third of this 2-core machine,
    taken from the pipeline it measures; sites publish from their own machines.
    """
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        names = {t: topic_name(t, settings.topic_prefix) for t in INPUT_TOPICS}
        partitions = {name: sorted(await producer.partitions_for(name)) for name in names.values()}
        partition_of = DefaultPartitioner()
        sent_at = [0.0] * len(messages)
        acknowledged: list[asyncio.Future[Any]] = []
        started = time.perf_counter()
        index = 0
        while index < len(messages):
            await asyncio.sleep(GENERATOR_TICK_S)
            due = min(len(messages), int((time.perf_counter() - started) * rate) + 1)
            batches: dict[tuple[str, int], Any] = {}
            now = time.time()
            for position in range(index, due):
                message = messages[position]
                topic = names[message.topic]
                available = partitions[topic]
                partition = partition_of(message.key, available, available)
                batch = batches.get((topic, partition))
                if (
                    batch is None
                    or batch.append(key=message.key, value=message.value, timestamp=None) is None
                ):
                    if batch is not None:  # full: send it, start another
                        acknowledged.append(
                            await producer.send_batch(batch, topic, partition=partition)
                        )
                    batch = batches[topic, partition] = producer.create_batch()
                    batch.append(key=message.key, value=message.value, timestamp=None)
                sent_at[position] = now
            for (topic, partition), batch in batches.items():
                acknowledged.append(await producer.send_batch(batch, topic, partition=partition))
            index = due
        await asyncio.gather(*acknowledged)
        return sent_at, time.perf_counter() - started
    finally:
        await producer.stop()


def _wait_ingested(settings: Settings, expected: int, timeout: float = 120) -> dict[str, float]:
    """event_id -> ingested_at (Unix seconds) of every fact row, once all are there."""
    select = "SELECT toString(event_id), toUnixTimestamp64Milli(ingested_at) FROM "
    query = " UNION ALL ".join(select + table for table in FACT_TABLES.values())
    deadline = time.monotonic() + timeout
    rows: dict[str, float] = {}
    while time.monotonic() < deadline:
        raw = run_query(settings, query, "JSONCompactEachRow")
        rows = {}
        for line in raw.splitlines():
            event_id, millis = orjson.loads(line)
            first = rows.get(event_id)
            rows[event_id] = min(first, int(millis) / 1000) if first else int(millis) / 1000
        if len(rows) >= expected:
            break
        time.sleep(1)
    return rows


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(port: int, timeout: float = 90) -> None:
    """Until `exnet up` reports itself ready (``exnet_ready`` 1: its stream worker holds
    its partitions with its tables recovered, its writer writes): the latency goal is
    the running pipeline's, not its start's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:  # noqa: S310
                if b"\nexnet_ready 1.0\n" in r.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("exnet up did not become ready")


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="exnet-bench-") as var:
        base = load_settings(var_dir=Path(var))
        print("-- throughput --", flush=True)
        _throughput(base, QUICK_PARTICIPANTS if args.quick else PARTICIPANTS)
        print("-- latency --", flush=True)
        _latency(
            base.model_copy(update={"var_dir": Path(var) / "latency"}),
            QUICK_LATENCY_SECONDS if args.quick else LATENCY_SECONDS,
        )
        if not args.quick:
            print("-- memory --", flush=True)
            _memory(base.model_copy(update={"var_dir": Path(var) / "memory"}), MEMORY_PARTICIPANTS)
