"""End-to-end throughput and latency of the pipeline, against a bare consumer, in one run.

1. Throughput: a simulated network (>= 100k events; --quick: ~13k) is published,
   then (a) a bare kafka-python loop consumes the four input topics and
   json-parses every message, and (b) `exnet up --drain` validates, deduplicates
   and writes the same messages to embedded ClickHouse. Figures: events/s of
   both over wall time, and the ratio.
2. Latency: `exnet up` runs while events are published at a steady rate
   (2,000/s); the sink's exnet_end_to_end_latency_seconds histogram (Kafka
   publish timestamp -> insert acknowledged) gives p50/p99.
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
from prometheus_client.parser import text_string_to_metric_families

from contracts.registry import load_registry
from contracts.topics import INPUT_TOPICS, topic_name
from exnet.settings import Settings, load_settings
from producers import SimulationConfig, generate, simulate

EXNET = str(Path(sys.executable).with_name("exnet"))
#: ~64 events per simulated participant.
PARTICIPANTS, QUICK_PARTICIPANTS = 1_700, 200
LATENCY_RATE = 2_000  # events/s
LATENCY_SECONDS, QUICK_LATENCY_SECONDS = 40, 10


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
    done = subprocess.run(
        [EXNET, "up", "--drain"], env=_env(settings), capture_output=True, text=True, check=False
    )
    exnet_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"exnet up --drain failed:\n{done.stderr[-3000:]}")
    bare_rate, exnet_rate = count / bare_s, count / exnet_s
    print(
        f"{'bare kafka-python consume + json parse':<44} {count:>9,} msgs "
        f"{bare_s:8.1f} s {bare_rate:>10,.0f} msgs/s"
    )
    print(
        f"{'exnet up --drain (validate, dedup, write)':<44} {count:>9,} msgs "
        f"{exnet_s:8.1f} s {exnet_rate:>10,.0f} msgs/s"
    )
    print(f"ratio exnet / bare: {exnet_rate / bare_rate:.2f}  (target >= 0.5)")
    startup = _startup_seconds(done.stderr)
    if startup is not None:
        steady = count / max(exnet_s - startup, 1e-9)
        print(
            f"  of which start-up (process start -> first ClickHouse write): {startup:.1f} s;"
            f" after it: {steady:,.0f} msgs/s (ratio {steady / bare_rate:.2f})"
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
        simulation = generate(
            load_registry(settings.registry_path),
            SimulationConfig(seed=11, participants=seconds * LATENCY_RATE // 60),
        )
        messages = simulation.messages[: seconds * LATENCY_RATE]
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all"
        )
        names = {t: topic_name(t, settings.topic_prefix) for t in INPUT_TOPICS}
        started = time.perf_counter()
        for index, message in enumerate(messages):
            due = started + index / LATENCY_RATE
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.send(names[message.topic], key=message.key, value=message.value)
        producer.flush()
        sent_s = time.perf_counter() - started
        deadline = time.monotonic() + 120
        histogram: dict[float, float] = {}
        while time.monotonic() < deadline:
            histogram = _histogram(port)
            if histogram and max(histogram.values()) >= len(messages):
                break
            time.sleep(1)
        total = max(histogram.values()) if histogram else 0
        print(
            f"sent {len(messages):,} events at {len(messages) / sent_s:,.0f}/s for "
            f"{sent_s:.0f} s; {total:,.0f} written"
        )
        p50, p99 = _quantile(histogram, 0.5), _quantile(histogram, 0.99)
        print(
            f"publish -> queryable latency: p50 {p50:.2f} s, p99 {p99:.2f} s  "
            f"(target p99 <= 2 s; from the sink's histogram, interpolated in buckets)"
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)


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
            histogram = _histogram(port)
            del histogram
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:  # noqa: S310
                if b'exnet_process_role{role="sink"} 1.0' in r.read():
                    time.sleep(3)  # let the stream workers join their group
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("exnet up did not become ready")


def _histogram(port: int) -> dict[float, float]:
    """Cumulative bucket counts of exnet_end_to_end_latency_seconds: upper bound -> count."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "exnet_end_to_end_latency_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] = sample.value
    return buckets


def _quantile(buckets: dict[float, float], q: float) -> float:
    """Linear interpolation inside the bucket holding the quantile (as Prometheus does)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if not total:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count or 1
            )
        lower_bound, lower_count = bound, count
    return bounds[-1]


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
