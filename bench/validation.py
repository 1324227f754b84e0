"""Validation throughput on one core: ``Validator.validate_message`` beside ``orjson.loads``.

The load: a realistic mix of the four event types (sessions dominate, as in
the field), about 5% of them invalid in the ways sites get things wrong,
generated in memory with a fixed seed. The figure: events per second of
``Validator.validate_message`` (pydantic, the one validator: parse, field
rules, key, site and time checks), one message at a time, at one processing
time as a stream batch passes it. The baseline: ``orjson.loads`` of the same
bytes, measured in the same run, so that the ratio says what validation costs
over reading the JSON at all.

Both run in this one process, pinned to one core when the OS allows it. After
a warm-up pass each, the two alternate for ``PASSES`` timed passes over the
whole load (a noisy neighbour hurts both alike); the table gives each one's
median pass and its fastest and slowest. Figures are for people: nothing
here asserts a time.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from contracts import (
    ANALYTE_UNITS,
    INSTRUMENT_MAX,
    Origin,
    Rejected,
    Validator,
    load_registry,
    topic_name,
)
from contracts.registry import DEMO_REGISTRY
from contracts.topics import INPUT_TOPICS, Topic

__all__ = ["generate_messages", "pin_to_one_core", "run"]

#: The whole load (messages); ``--quick`` uses ``QUICK_MESSAGES``.
FULL_MESSAGES = 200_000
QUICK_MESSAGES = 20_000
#: Share of invalid messages in the load.
INVALID_RATIO = 0.05
#: Timed passes over the whole load, each, alternating; the median is the figure.
PASSES = 5
#: The events' processing time, passed once per pass like a stream batch does.
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

_SITES = [
    ("N01", "N01-S01"),
    ("N01", "N01-S02"),
    ("N01", "N01-S03"),
    ("N02", "N02-S01"),
    ("N02", "N02-S02"),
    ("N03", "N03-S01"),
    ("N03", "N03-S02"),
    ("N03", "N03-S03"),
]


def _envelope(rng: random.Random, schema: str, participant: str) -> dict[str, Any]:
    node, site = rng.choice(_SITES)
    when = NOW - timedelta(seconds=rng.randint(0, 90 * 86_400))
    offset = rng.choice(("Z", "+01:00", "-05:00", "+05:30"))
    if offset == "Z":
        stamp = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    else:
        sign = 1 if offset[0] == "+" else -1
        shift = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])) * sign
        stamp = (when + shift).strftime("%Y-%m-%dT%H:%M:%S") + offset
    return {
        "schema": schema,
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "occurred_at": stamp,
        "node_id": node,
        "site_id": site,
        "participant_id": participant,
    }


def _enrollment(rng: random.Random, participant: str) -> dict[str, Any]:
    event = _envelope(rng, "enrollment/1", participant)
    status = rng.choice(("screened", "consented", "randomized", "withdrawn", "completed"))
    event["status"] = status
    if status == "randomized":
        event["modality"] = rng.choice(("aerobic", "resistance", "combined", "control"))
        event["adjunct"] = rng.choice(
            (
                "none",
                "psychotherapy",
                "pharmacotherapy",
                "nutrition_counseling",
                "brain_stimulation",
            )
        )
    if status == "screened":
        event["age_band"] = rng.choice(("18-24", "25-34", "35-44", "45-54", "55-64", "65+"))
        event["sex"] = rng.choice(("female", "male", "intersex", "unknown"))
    if status == "withdrawn":
        event["reason"] = rng.choice(
            ("adverse_event", "lost_to_follow_up", "participant_choice", "other")
        )
    return event


def _session(rng: random.Random, participant: str) -> dict[str, Any]:
    event = _envelope(rng, "session/1", participant)
    status = rng.choices(("attended", "missed", "cancelled"), weights=(8, 1, 1))[0]
    event.update(
        session_number=rng.randint(1, 72),
        status=status,
        modality=rng.choice(("aerobic", "resistance", "combined")),
        supervised=rng.random() < 0.7,
    )
    if status == "attended":
        event["duration_min"] = round(rng.uniform(20, 60), 1)
        event["mean_hr_pct_max"] = round(rng.uniform(55, 85), 1)
        event["rpe"] = rng.randint(9, 17)
        if rng.random() < 0.03:
            event["adverse_event"] = rng.choice(("mild", "moderate", "severe"))
    return event


def _assay(rng: random.Random, participant: str) -> dict[str, Any]:
    event = _envelope(rng, "assay/1", participant)
    analyte = rng.choice(list(ANALYTE_UNITS))
    event.update(
        specimen_id=f"SP-{rng.getrandbits(40):010x}",
        specimen_type=rng.choice(("serum", "plasma", "whole_blood", "saliva")),
        timepoint=rng.choice(("baseline", "acute_pre", "acute_post", "mid", "post")),
        analyte=analyte,
        value=round(rng.lognormvariate(2, 1), 3),
        unit=rng.choice(list(ANALYTE_UNITS[analyte])),
        lab_id=f"LAB-{rng.randint(1, 3)}",
        batch_id=f"B{rng.randint(1, 400):04d}",
        below_lloq=rng.random() < 0.02,
    )
    return event


def _assessment(rng: random.Random, participant: str) -> dict[str, Any]:
    event = _envelope(rng, "assessment/1", participant)
    instrument = rng.choice(list(INSTRUMENT_MAX))
    event.update(
        instrument=instrument,
        score=rng.randint(0, INSTRUMENT_MAX[instrument]),
        week=rng.choice((0, 4, 8, 12, 26, 52)),
    )
    return event


_MAKERS: dict[Topic, Callable[[random.Random, str], dict[str, Any]]] = {
    Topic.ENROLLMENT: _enrollment,
    Topic.SESSION: _session,
    Topic.ASSAY: _assay,
    Topic.ASSESSMENT: _assessment,
}
#: How often each type occurs (sessions dominate a trial's traffic).
_WEIGHTS = {Topic.ENROLLMENT: 1, Topic.SESSION: 6, Topic.ASSAY: 2, Topic.ASSESSMENT: 1}


def _spoil(rng: random.Random, event: dict[str, Any], key: bytes) -> tuple[bytes, bytes]:
    """Break one message in one of the ways sites do; returns (value, key)."""
    kind = rng.randrange(8)
    if kind == 0:  # a field out of range or of the wrong type
        event["participant_id"] = "Jane Doe"
    elif kind == 1:
        event["occurred_at"] = event["occurred_at"][:19]  # naive
    elif kind == 2:
        event["schema"] = event["schema"].replace("/1", "/2")
    elif kind == 3:
        event["notes"] = "free text"
    elif kind == 4:
        key = b"P-0000000000"
    elif kind == 5:
        event["site_id"] = "N09-S01"
    elif kind == 6:
        event["occurred_at"] = (NOW + timedelta(hours=1)).isoformat()
    else:
        return orjson.dumps(event)[:-7], key  # truncated JSON
    return orjson.dumps(event), key


def generate_messages(count: int, seed: int = 7) -> list[tuple[bytes, bytes, Origin]]:
    """``count`` (value, key, origin) messages: a mix of types, ~5% invalid."""
    rng = random.Random(seed)  # noqa: S311  # seeded test data, not secrets
    participants = [f"P-{rng.getrandbits(64):016x}" for _ in range(max(count // 40, 10))]
    topics = list(_WEIGHTS)
    weights = list(_WEIGHTS.values())
    origins = {topic: Origin(topic_name(topic, ""), 0, 0) for topic in INPUT_TOPICS}
    messages: list[tuple[bytes, bytes, Origin]] = []
    for _ in range(count):
        topic = rng.choices(topics, weights)[0]
        participant = rng.choice(participants)
        event = _MAKERS[topic](rng, participant)
        key = participant.encode()
        if rng.random() < INVALID_RATIO:
            value, key = _spoil(rng, event, key)
        else:
            value = orjson.dumps(event)
        messages.append((value, key, origins[topic]))
    return messages


#: One message as the validator takes it: (value, key, origin).
_Message = tuple[bytes, bytes, Origin]


def _parse_all(messages: list[_Message]) -> None:
    """The baseline: read every message's JSON, and nothing else."""
    loads, error = orjson.loads, orjson.JSONDecodeError
    for value, _, _ in messages:
        try:  # noqa: SIM105  # suppress() would add a context manager per message
            loads(value)
        except error:
            pass


def _validate_all(validator: Validator) -> Callable[[list[_Message]], None]:
    def validate_all(messages: list[_Message]) -> None:
        check = validator.validate_message
        for value, key, origin in messages:
            check(value, key, origin, NOW)

    return validate_all


def _passes(
    messages: list[_Message], bodies: dict[str, Callable[[list[_Message]], None]]
) -> dict[str, list[float]]:
    """Seconds of each timed pass of each body over the whole load, alternating."""
    for body in bodies.values():  # warm-up: caches, lazily built validators
        body(messages)
    seconds: dict[str, list[float]] = {name: [] for name in bodies}
    for _ in range(PASSES):
        for name, body in bodies.items():
            started = time.perf_counter()
            body(messages)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def pin_to_one_core() -> tuple[str, set[int] | None]:
    """Pin this process to one core; returns a description and the cores to restore."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here)", None
    cores = os.sched_getaffinity(0)
    core = max(cores)
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core} of {len(cores)}", cores


def _load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def run(args: argparse.Namespace) -> None:
    count = QUICK_MESSAGES if getattr(args, "quick", False) else FULL_MESSAGES
    load = _load_average()
    pinning, cores = pin_to_one_core()
    try:
        _run(count, pinning, load)
    finally:  # the benchmarks that follow in this process get the machine back
        gc.unfreeze()
        if cores is not None:
            os.sched_setaffinity(0, cores)


def _run(count: int, pinning: str, load: str) -> None:
    messages = generate_messages(count)
    validator = Validator(load_registry(DEMO_REGISTRY))
    outcomes = Counter(
        outcome.reason.value if isinstance(outcome, Rejected) else "accepted"
        for outcome in (validator.validate_message(*message, NOW) for message in messages)
    )
    total_bytes = sum(len(value) for value, _, _ in messages)
    # A worker holds one batch, not the whole load: keep the load itself out of the
    # cyclic collector's full passes, which would otherwise rescan it again and again.
    gc.collect()
    gc.freeze()
    seconds = _passes(
        messages,
        {
            "orjson.loads (baseline)": _parse_all,
            "Validator.validate_message": _validate_all(validator),
        },
    )

    print(
        f"{count:,} messages of the four types, {total_bytes / count:.0f} bytes on average; "
        f"{pinning}; {PASSES} timed passes of each over the whole load, alternating, "
        "after a warm-up; the load is gc-frozen (a worker holds one batch, not the whole load)"
    )
    print(f"load average before: {load} (other processes share the machine)")
    print("outcomes: " + ", ".join(f"{name} {n:,}" for name, n in sorted(outcomes.items())))
    baseline = statistics.median(seconds["orjson.loads (baseline)"])
    print(
        f"{'':28} {'events/s':>12} {'us/event':>9} {'x orjson':>9} "
        f"{'fastest pass':>13} {'slowest pass':>13}"
    )
    for name, passes in seconds.items():
        median, fastest, slowest = statistics.median(passes), min(passes), max(passes)
        print(
            f"{name:28} {count / median:12,.0f} {median / count * 1e6:9.2f} "
            f"{median / baseline:9.1f} {count / fastest:11,.0f}/s {count / slowest:11,.0f}/s"
        )
