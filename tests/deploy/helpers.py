"""Helpers of the operations tests: a known input, a real ``exnet up``, its /metrics.

:func:`ops_scenario` builds a fixed set of Kafka messages, each with the one
outcome SPEC §2 gives it, so the tests can derive every counter's exact value
from the input instead of hard-coding numbers. :class:`ExnetUp` runs the real
console script as a subprocess and scrapes its operations endpoint over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from uuid import uuid4

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from contracts.topics import INPUT_TOPICS, Topic, topic_name
from exnet.settings import Settings
from tests.ports import free_ports

#: ``tests/conftest.py``'s ``settings_factory`` (typed here: mypy cannot import conftest).
SettingsFactory = Callable[..., Settings]

EXNET = Path(sys.executable).with_name("exnet")
#: Seconds ``exnet up`` may take to serve /healthz (imports, topics, Faust).
OPS_START_TIMEOUT_S = 60.0
#: Seconds the whole input may take to be validated, deduplicated and written.
OPS_PIPELINE_TIMEOUT_S = 90.0
#: Seconds SPEC §5 gives a SIGTERMed ``exnet up`` to flush, commit and exit 0.
OPS_SIGTERM_EXIT_S = 15.0
#: Seconds between scrapes while waiting.
OPS_POLL_S = 0.5

#: The fact table of each event type (SPEC §4).
FACT_TABLE = {
    "enrollment": "enrollment_events",
    "session": "session_events",
    "assay": "assay_events",
    "assessment": "assessment_events",
}
REJECTED_TABLE = "rejected_events"
#: SPEC §1: messages larger than this many bytes are ``too_large``.
MAX_MESSAGE_BYTES = 64 * 1024


# --- the known input -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpsMessage:
    """One message to publish and the outcome the pipeline must give it."""

    topic: Topic
    key: bytes
    value: bytes
    #: ``accepted``, ``duplicate`` or a rejection reason code.
    outcome: str
    event_type: str
    #: (node_id, site_id, occurred_at) of an accepted event; None otherwise.
    site_event: tuple[str, str, datetime] | None = None


@dataclass(frozen=True)
class OpsScenario:
    messages: list[OpsMessage]

    @property
    def received_by_topic(self) -> Counter[Topic]:
        return Counter(m.topic for m in self.messages)

    @property
    def accepted_by_type(self) -> Counter[str]:
        return Counter(m.event_type for m in self.messages if m.outcome == "accepted")

    @property
    def duplicate_by_type(self) -> Counter[str]:
        return Counter(m.event_type for m in self.messages if m.outcome == "duplicate")

    @property
    def rejected_by_reason(self) -> Counter[str]:
        return Counter(
            m.outcome for m in self.messages if m.outcome not in ("accepted", "duplicate")
        )

    @property
    def rows_by_table(self) -> dict[str, int]:
        rows = {FACT_TABLE[t]: n for t, n in self.accepted_by_type.items()}
        rows[REJECTED_TABLE] = sum(self.rejected_by_reason.values())
        return rows

    @property
    def newest_by_site(self) -> dict[tuple[str, str], float]:
        newest: dict[tuple[str, str], float] = {}
        for m in self.messages:
            if m.site_event is not None:
                node, site, occurred = m.site_event
                newest[node, site] = max(newest.get((node, site), 0.0), occurred.timestamp())
        return newest


def _participant() -> str:
    return f"P-{uuid4().hex[:16]}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _envelope(
    schema: str, node: str, site: str, participant: str, occurred: datetime
) -> dict[str, Any]:
    return {
        "schema": schema,
        "event_id": str(uuid4()),
        "occurred_at": _iso(occurred),
        "node_id": node,
        "site_id": site,
        "participant_id": participant,
    }


def _dump(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def ops_scenario(now: datetime | None = None) -> OpsScenario:
    """Valid events of all four types on four sites, exact duplicates (the same bytes
    again, and the same event re-serialised), a conflicting duplicate, and one message
    per rejection reason the validator owns."""
    now = now if now is not None else datetime.now(UTC)
    base = (now - timedelta(days=2)).replace(microsecond=0)
    messages: list[OpsMessage] = []

    def add(
        topic: Topic,
        event: Mapping[str, Any] | bytes,
        outcome: str,
        *,
        key: str | bytes | None = None,
    ) -> OpsMessage:
        value = event if isinstance(event, bytes) else _dump(event)
        if key is None:
            assert isinstance(event, Mapping)
            key = str(event["participant_id"])
        site_event = None
        if outcome == "accepted":
            assert isinstance(event, Mapping)
            occurred = datetime.fromisoformat(str(event["occurred_at"]))
            site_event = (str(event["node_id"]), str(event["site_id"]), occurred)
        message = OpsMessage(
            topic,
            key.encode() if isinstance(key, str) else key,
            value,
            outcome,
            topic.event_type or "",
            site_event,
        )
        messages.append(message)
        return message

    # -- accepted: all four types, four sites of three nodes
    p1, p2, p3, p4 = (_participant() for _ in range(4))
    enrol_1 = {
        **_envelope("enrollment/1", "N01", "N01-S01", p1, base),
        "status": "screened",
        "age_band": "35-44",
        "sex": "female",
    }
    enrol_2 = {
        **_envelope("enrollment/1", "N01", "N01-S01", p1, base + timedelta(hours=1)),
        "status": "randomized",
        "modality": "aerobic",
        "adjunct": "psychotherapy",
    }
    enrol_3 = {
        **_envelope("enrollment/1", "N02", "N02-S01", p2, base + timedelta(hours=2)),
        "status": "consented",
    }
    session_1 = {
        **_envelope("session/1", "N01", "N01-S01", p1, base + timedelta(hours=5)),
        "session_number": 1,
        "status": "attended",
        "modality": "aerobic",
        "supervised": True,
        "duration_min": 45.0,
        "mean_hr_pct_max": 72.5,
        "rpe": 13,
    }
    session_2 = {
        **_envelope("session/1", "N01", "N01-S02", p3, base + timedelta(hours=6)),
        "session_number": 2,
        "status": "missed",
        "modality": "resistance",
        "supervised": False,
    }
    assay_1 = {
        **_envelope("assay/1", "N02", "N02-S01", p2, base + timedelta(hours=7)),
        "specimen_id": "SPEC-0001",
        "specimen_type": "serum",
        "timepoint": "baseline",
        "analyte": "BDNF",
        "value": 18500.0,
        "unit": "pg/mL",
        "lab_id": "LAB-N02",
    }
    assessment_1 = {
        **_envelope("assessment/1", "N03", "N03-S01", p4, base + timedelta(hours=8)),
        "instrument": "PHQ9",
        "score": 18,
        "week": 0,
    }
    assessment_2 = {
        **_envelope("assessment/1", "N03", "N03-S01", p4, base + timedelta(hours=9)),
        "instrument": "PHQ9",
        "score": 7,
        "week": 8,
    }
    for topic, event in (
        (Topic.ENROLLMENT, enrol_1),
        (Topic.ENROLLMENT, enrol_2),
        (Topic.ENROLLMENT, enrol_3),
        (Topic.SESSION, session_1),
        (Topic.SESSION, session_2),
        (Topic.ASSAY, assay_1),
        (Topic.ASSESSMENT, assessment_1),
        (Topic.ASSESSMENT, assessment_2),
    ):
        add(topic, event, "accepted")

    # -- exact duplicates: the same bytes re-sent, and the same event with its keys
    # reordered (SPEC §2: formatting and key order do not matter). Same key, so the
    # same partition: they are read after their original.
    add(Topic.ENROLLMENT, messages[0].value, "duplicate", key=p1)
    add(Topic.SESSION, messages[3].value, "duplicate", key=p1)
    add(Topic.SESSION, messages[3].value, "duplicate", key=p1)
    add(Topic.ASSAY, _dump(dict(reversed(list(assay_1.items())))), "duplicate", key=p2)

    # -- a conflicting duplicate: assessment_1's event_id, other content. Its occurred_at
    # is the site's newest, so the site gauge shows whether a rejection moved it.
    conflict = {**assessment_1, "score": 19, "occurred_at": _iso(base + timedelta(hours=20))}
    add(Topic.ASSESSMENT, conflict, "conflicting_duplicate")

    # -- one message per reason the validator owns (SPEC §2's order)
    p5 = _participant()
    probe = {
        **_envelope("session/1", "N02", "N02-S02", p5, base),
        "session_number": 3,
        "status": "cancelled",
        "modality": "combined",
        "supervised": True,
    }
    too_large = _dump({**probe, "padding": "x" * (MAX_MESSAGE_BYTES + 1)})
    assert len(too_large) > MAX_MESSAGE_BYTES
    add(Topic.SESSION, too_large, "too_large", key=p5)
    add(Topic.ENROLLMENT, b'{"schema": "enrollment/1", "event_id": ', "malformed_json", key=p5)
    add(
        Topic.ENROLLMENT,
        {**probe, "event_id": str(uuid4()), "schema": "session/1"},
        "unknown_schema",
    )
    add(
        Topic.SESSION,
        {**probe, "event_id": str(uuid4()), "session_number": 0},
        "invalid_field",
    )
    add(Topic.SESSION, {**probe, "event_id": str(uuid4())}, "key_mismatch", key=_participant())
    add(
        Topic.ASSAY,
        {**assay_1, "event_id": str(uuid4()), "node_id": "N01", "participant_id": p5},
        "unknown_site",
    )
    add(
        Topic.ASSESSMENT,
        {
            **assessment_2,
            "event_id": str(uuid4()),
            "occurred_at": _iso(now + timedelta(hours=1)),
            "participant_id": p5,
        },
        "future_timestamp",
    )
    return OpsScenario(messages)


def ops_publish(bootstrap: str, settings: Settings, messages: Iterable[OpsMessage]) -> None:
    """Publish in order, as a site would (kafka-python, acks=all), and flush."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","), acks="all", max_request_size=1024 * 1024
    )
    try:
        for message in messages:
            producer.send(
                topic_name(message.topic, settings.topic_prefix),
                key=message.key,
                value=message.value,
            )
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


# --- the running process ---------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET (4xx/5xx answers included, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310  # loopback http
            status: int = answer.status
            return status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


Families = dict[str, list[Sample]]


def parse_metrics(text: str) -> Families:
    """Samples of each metric family of a text exposition, by family name."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def sample_value(
    families: Families, sample: str, labels: Mapping[str, str] | None = None
) -> float | None:
    """The value of ``sample`` (a full sample name) with exactly ``labels``, or None."""
    wanted = dict(labels or {})
    for samples in families.values():
        for s in samples:
            if s.name == sample and s.labels == wanted:
                return float(s.value)
    return None


def samples_named(families: Families, sample: str) -> list[Sample]:
    return [s for samples in families.values() for s in samples if s.name == sample]


def ops_env(settings: Settings, metrics_port: int, **extra: str) -> dict[str, str]:
    """The environment of an ``exnet`` subprocess that uses ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXNET_")}
    env.update(
        EXNET_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        EXNET_TOPIC_PREFIX=settings.topic_prefix,
        EXNET_VAR_DIR=str(settings.var_dir),
        EXNET_PARTITIONS=str(settings.partitions),
        EXNET_METRICS_HOST="127.0.0.1",
        EXNET_METRICS_PORT=str(metrics_port),
        EXNET_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


@dataclass
class ExnetUp:
    """A real ``exnet up`` subprocess; its output goes to ``log_path``."""

    settings: Settings
    log_path: Path
    metrics_port: int = field(default_factory=free_ports)
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(EXNET), "up"],
            env=ops_env(self.settings, self.metrics_port),
            cwd=self.settings.var_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- exnet up log (tail) ---\n{self.log_tail()}", pytrace=False)

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            self.fail(f"exnet up exited early with status {self.process.returncode}")

    def wait_healthy(self, timeout: float = OPS_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                status, _ = http_get(f"{self.base_url}/healthz", timeout=2.0)
                if status == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(OPS_POLL_S)
        self.fail(f"exnet up did not serve /healthz on port {self.metrics_port} in {timeout} s")

    def scrape(self) -> Families:
        status, body = http_get(f"{self.base_url}/metrics")
        assert status == 200, f"/metrics answered {status}"
        return parse_metrics(body.decode())

    def wait_for(
        self, done: Callable[[Families], bool], what: str, timeout: float = OPS_PIPELINE_TIMEOUT_S
    ) -> Families:
        """Scrape until ``done(families)``; fail with the last scrape after ``timeout``."""
        deadline = time.monotonic() + timeout
        families: Families = {}
        while time.monotonic() < deadline:
            self._check_alive()
            families = self.scrape()
            if done(families):
                return families
            time.sleep(OPS_POLL_S)
        exnet_samples = "\n".join(
            f"{s.name}{s.labels} {s.value}"
            for samples in families.values()
            for s in samples
            if s.name.startswith("exnet_") and "_bucket" not in s.name
        )
        self.fail(f"timed out after {timeout} s waiting for {what}; last scrape:\n{exnet_samples}")
        raise AssertionError("unreachable")  # pytest.fail raises

    def terminate(self, timeout: float = OPS_SIGTERM_EXIT_S) -> tuple[int, float]:
        """SIGTERM; the exit status and the seconds it took (fails past ``timeout``)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"exnet up did not exit within {timeout} s of SIGTERM")
            raise
        return status, time.monotonic() - started

    def close(self) -> None:
        """Kill the process if it still runs (a failed test), close the log."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


def input_topic_names(settings: Settings) -> list[str]:
    return [topic_name(topic, settings.topic_prefix) for topic in INPUT_TOPICS]
