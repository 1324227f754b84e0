"""End-to-end throughput, latency and memory of the pipeline, beside a bare consumer, in one run.

1. Throughput: a simulated network (>= 100k events; --quick: ~13k) is published,
   then (a) a bare kafka-python loop consumes the four input topics and
   json-parses every message (the baseline), and (b) `exnet up --drain`
   validates, deduplicates and writes the same messages to embedded
   ClickHouse. Figures: events/s of both over wall time, and the ratio.
2. Latency: `exnet up` runs while a producer publishes at a steady 5,000
   events/s for 30 s, recording each event's send time; after, every event's
   `ingested_at` is read back from ClickHouse: p50/p99 of the difference
   (publish -> queryable), and how many arrived.
3. Memory: the peak resident set of `exnet up --drain` over a 1M-event run
   (--quick: the throughput run's), from the kernel's accounting of the child;
   and that run's throughput beside the bare loop over the same messages.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from contracts.registry import load_registry
from contracts.topics import INPUT_TOPICS, topic_name
from exnet.settings import Settings, load_settings
from producers import SimulationConfig, generate, simulate
from sinks import FACT_TABLES, run_query

EXNET = str(Path(sys.executable).with_name("exnet"))
#: ~64 events per simulated participant.
PARTICIPANTS, QUICK_PARTICIPANTS = 1_700, 200
LATENCY_RATE = 5_000  # events/s
LATENCY_SECONDS, QUICK_LATENCY_SECONDS = 30, 10
#: ~1M events for the memory run.
MEMORY_PARTICIPANTS = 15_700


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


def _throughput(base: Settings, participants: int) -> None:
    settings = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:6]}."})
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
    stderr, peaks = _drain(settings)
    exnet_s = time.perf_counter() - started
    bare_rate, exnet_rate = count / bare_s, count / exnet_s
    _print_rate(BARE_LABEL, count, bare_s)
    _print_rate("exnet up --drain (all four stages, write)", count, exnet_s)
    print(
        f"ratio exnet / bare: {exnet_rate / bare_rate:.2f}  (target >= 0.25, aim 0.5); "
        f"peak RSS of exnet up and its writer: {sum(peaks) / 2**20:,.0f} MiB"
    )
    startup = _startup_seconds(stderr)
    if startup is not None:
        steady = count / max(exnet_s - startup, 1e-9)
        print(
            f"  of which start-up (first log line -> the sink holds ClickHouse): {startup:.1f} s;"
            f" after it: {steady:,.0f} msgs/s (ratio {steady / bare_rate:.2f})"
        )


def _drain(settings: Settings) -> tuple[str, list[int]]:
    """Run `exnet up --drain` to the end: its log, and the peak resident set in bytes of
    it and of each of its child processes (the ClickHouse writer runs in one), in the
    order they appeared (`exnet up` first).

    Each process's peak is the kernel's high-water mark (``VmHWM``), read until it
    exits. Not ``wait4``'s ``ru_maxrss``: that one keeps the mark from before
    ``exec``, when the forked child still counted this (large) process, and it is
    the largest of the processes, not their sum.
    """
    peaks_kib: dict[int, int] = {}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [EXNET, "up", "--drain"], env=_env(settings), stdout=subprocess.DEVNULL, stderr=log
        )
        while process.poll() is None:
            for pid in _tree(process.pid):
                peaks_kib[pid] = max(peaks_kib.get(pid, 0), _high_water_kib(pid))
            time.sleep(0.05)
        process.wait()
        log.seek(0)
        text = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"exnet up --drain failed ({process.returncode}):\n{text[-3000:]}")
    return text, [kib * 1024 for kib in peaks_kib.values()]


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
    settings = base.model_copy(update={"topic_prefix": f"mem{uuid.uuid4().hex[:6]}."})
    subprocess.run([EXNET, "init"], env=_env(settings), check=True, capture_output=True)
    result = simulate(settings, participants=participants, seed=5)
    count, bare_s = _bare_loop(settings)
    started = time.perf_counter()
    _, peaks = _drain(settings)
    seconds = time.perf_counter() - started
    bare_rate, exnet_rate = count / bare_s, result.messages / seconds
    _print_rate(BARE_LABEL, count, bare_s)
    _print_rate(
        "exnet up --drain", result.messages, seconds, f" (ratio {exnet_rate / bare_rate:.2f})"
    )
    each = ", ".join(f"{peak / 2**20:,.0f}" for peak in sorted(peaks, reverse=True))
    print(
        f"peak RSS of exnet up and its writer process, added up: {sum(peaks) / 2**20:,.0f} MiB "
        f"(target < 1024 MiB; each process, MiB: {each})"
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
    settings = base.model_copy(update={"topic_prefix": f"lat{uuid.uuid4().hex[:6]}."})
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
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all"
        )
        names = {t: topic_name(t, settings.topic_prefix) for t in INPUT_TOPICS}
        sent_at: dict[str, float] = {}
        started = time.perf_counter()
        for index, message in enumerate(messages):
            due = started + index / LATENCY_RATE
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at[event_ids[index]] = time.time()
            producer.send(names[message.topic], key=message.key, value=message.value)
        producer.flush()
        sent_s = time.perf_counter() - started
        ingested = _wait_ingested(settings, len(set(event_ids)))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    latencies = sorted(ingested[e] - sent_at[e] for e in ingested if e in sent_at)
    print(
        f"sent {len(messages):,} events at {len(messages) / sent_s:,.0f}/s for "
        f"{sent_s:.0f} s; {len(latencies):,} of {len(sent_at):,} queryable"
    )
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"publish -> queryable latency: p50 {p50:.2f} s, p99 {p99:.2f} s, max "
        f"{latencies[-1]:.2f} s  (target p99 <= 1 s; send time recorded by the producer, "
        "ingested_at read back)"
    )


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:  # noqa: S310
                if b'exnet_process_role{role="sink"} 1.0' in r.read():
                    time.sleep(3)  # let the stream workers join their group
                    return
        except OSError:
            pass
        time.sleep(0.5)
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
