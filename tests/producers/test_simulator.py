"""The simulator: deterministic, valid where it should be, invalid as intended, realistic."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from contracts import (
    Accepted,
    AssayV1,
    AssessmentV1,
    EnrollmentV1,
    NetworkRegistry,
    Origin,
    Reason,
    Rejected,
    SessionV1,
    Validator,
)
from contracts.errors import UserError
from contracts.registry import DEMO_REGISTRY, load_registry
from contracts.views import compute_views
from exnet.settings import Settings
from producers import (
    DEFAULT_INVALID_KINDS,
    INVALID_KINDS,
    MessageKind,
    Simulation,
    SimulationConfig,
    generate,
    simulate,
)
from producers.simulate import ASSESSMENT_WEEKS, STUDY_ANCHOR, STUDY_START

from .helpers import pub_env, pub_exnet


def _accept(validator: Validator, simulation: Simulation) -> list[Accepted]:
    accepted = []
    for offset, message in enumerate(simulation.messages):
        if message.kind is MessageKind.EVENT:
            outcome = validator.validate_message(
                message.value, message.key, Origin(message.topic.value, 0, offset)
            )
            assert isinstance(outcome, Accepted), (message.value, outcome)
            accepted.append(outcome)
    return accepted


@pytest.fixture(scope="module")
def large(pub_registry: NetworkRegistry) -> Simulation:
    """Enough participants for the statistics of arms and sites."""
    return generate(pub_registry, SimulationConfig(seed=3, participants=500))


@pytest.fixture(scope="module")
def large_events(pub_registry: NetworkRegistry, large: Simulation) -> list[Accepted]:
    return _accept(Validator(pub_registry), large)


def test_the_same_seed_gives_the_same_bytes(pub_registry: NetworkRegistry) -> None:
    config = SimulationConfig(
        seed=11, participants=40, invalid_share=0.1, duplicate_share=0.1, conflict_share=0.05
    )
    first, second = generate(pub_registry, config), generate(pub_registry, config)
    assert first.messages == second.messages
    assert first.result == second.result
    other = generate(pub_registry, SimulationConfig(seed=12, participants=40))
    assert [m.value for m in other.messages] != [m.value for m in first.messages][
        : len(other.messages)
    ]


def test_the_same_seed_gives_the_same_bytes_in_another_process(
    pub_registry: NetworkRegistry,
) -> None:
    """No dependence on hash randomisation or the clock: a fresh interpreter agrees."""
    script = (
        "import hashlib\n"
        "from contracts import load_registry\n"
        "from producers import SimulationConfig, generate\n"
        "from contracts.registry import DEMO_REGISTRY\n"
        "sim = generate(load_registry(DEMO_REGISTRY), SimulationConfig(seed=11, participants=25,"
        " invalid_share=0.1, duplicate_share=0.1, conflict_share=0.05))\n"
        "digest = hashlib.sha256()\n"
        "for m in sim.messages: digest.update(m.topic.value.encode() + (m.key or b'') + m.value)\n"
        "print(digest.hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(digests) == 1


def test_every_generated_event_passes_the_validator(
    pub_registry: NetworkRegistry, pub_simulation: Simulation
) -> None:
    validator = Validator(pub_registry)
    accepted = _accept(validator, pub_simulation)
    assert len(accepted) == pub_simulation.result.accepted
    assert len({a.event_id for a in accepted}) == len(accepted)
    for outcome in accepted:
        assert STUDY_START <= outcome.event.occurred_at < STUDY_ANCHOR < datetime.now(UTC)


def test_invalid_messages_are_rejected_for_the_intended_reason(
    pub_registry: NetworkRegistry, pub_simulation: Simulation
) -> None:
    validator = Validator(pub_registry)
    seen: Counter[Reason] = Counter()
    for offset, message in enumerate(pub_simulation.messages):
        if message.kind is not MessageKind.INVALID:
            continue
        outcome = validator.validate_message(
            message.value, message.key, Origin(message.topic.value, 0, offset)
        )
        assert isinstance(outcome, Rejected), message.value
        assert outcome.reason is message.expected, (message.value, outcome)
        seen[outcome.reason] += 1
    assert set(seen) == set(SimulationConfig().invalid_kinds)
    assert {r.value: n for r, n in seen.items()} == {
        reason: count
        for reason, count in pub_simulation.result.rejected.items()
        if reason != Reason.CONFLICTING_DUPLICATE
    }


def test_every_reason_but_a_conflict_can_be_made_on_purpose() -> None:
    """The invalid kinds are the contracts' reasons: no second list to fall behind."""
    assert set(INVALID_KINDS) == set(Reason) - {Reason.CONFLICTING_DUPLICATE}
    assert set(DEFAULT_INVALID_KINDS) < set(INVALID_KINDS)
    with pytest.raises(UserError, match="conflicting_duplicate"):
        SimulationConfig(invalid_kinds=(Reason.CONFLICTING_DUPLICATE,))


def test_opt_in_kinds_are_rejected_too(pub_registry: NetworkRegistry) -> None:
    kinds = (Reason.FUTURE_TIMESTAMP, Reason.TOO_LARGE)
    simulation = generate(
        pub_registry,
        SimulationConfig(seed=5, participants=10, invalid_share=0.05, invalid_kinds=kinds),
    )
    validator = Validator(pub_registry)
    reasons: Counter[Reason] = Counter()
    for message in simulation.messages:
        if message.kind is MessageKind.INVALID:
            outcome = validator.validate_message(
                message.value, message.key, Origin(message.topic.value, 0, 0)
            )
            assert isinstance(outcome, Rejected)
            assert outcome.reason is message.expected
            reasons[outcome.reason] += 1
    assert set(reasons) == {Reason.FUTURE_TIMESTAMP, Reason.TOO_LARGE}
    # Never a future timestamp unless asked:
    assert (
        Reason.FUTURE_TIMESTAMP.value
        not in generate(
            pub_registry, SimulationConfig(seed=5, participants=10, invalid_share=0.2)
        ).result.rejected
    )


def test_duplicates_repeat_the_content_and_conflicts_change_it(
    pub_registry: NetworkRegistry, pub_simulation: Simulation
) -> None:
    validator = Validator(pub_registry)
    first_seen: dict[str, tuple[int, str, bytes]] = {}
    kinds: Counter[str] = Counter()
    for position, message in enumerate(pub_simulation.messages):
        if message.kind is MessageKind.INVALID:
            continue
        outcome = validator.validate_message(
            message.value, message.key, Origin(message.topic.value, 0, position)
        )
        assert isinstance(outcome, Accepted)
        if message.kind is MessageKind.EVENT:
            first_seen[outcome.event_id] = (position, outcome.fingerprint(), message.value)
            continue
        original_position, fingerprint, original_bytes = first_seen[outcome.event_id]
        assert original_position < position  # a re-send follows its original
        if message.kind is MessageKind.DUPLICATE:
            assert outcome.fingerprint() == fingerprint
            kinds["identical" if message.value == original_bytes else "reformatted"] += 1
        else:
            assert message.expected is Reason.CONFLICTING_DUPLICATE
            assert outcome.fingerprint() != fingerprint
            kinds["conflict"] += 1
    result = pub_simulation.result
    assert kinds["identical"] > 0 and kinds["reformatted"] > 0
    assert kinds["identical"] + kinds["reformatted"] == result.duplicate_total
    assert kinds["conflict"] == result.rejected[Reason.CONFLICTING_DUPLICATE.value]


def test_the_result_counts_what_was_generated(pub_simulation: Simulation) -> None:
    result = pub_simulation.result
    messages = pub_simulation.messages
    assert result.messages == len(messages) == sum(result.per_topic.values())
    assert result.per_topic == dict(Counter(m.topic.value for m in messages))
    by_type = Counter(str(m.topic.event_type) for m in messages if m.kind is MessageKind.EVENT)
    assert result.events == dict(by_type)
    assert result.rejected_total == sum(m.expected is not None for m in messages)
    network = result.views.network_summary
    assert network["assays"] == result.events["assay"]
    assert network["assessments"] == result.events["assessment"]
    sessions = network["sessions_attended"] + network["sessions_missed"]
    assert sessions + network["sessions_cancelled"] == result.events["session"]
    nodes = result.views.node_summary
    assert sum(node["assays"] for node in nodes.values()) == network["assays"]
    assert set(nodes) == {"N01", "N02", "N03"}  # a row per registered node


def test_the_expected_views_are_those_of_the_accepted_messages(
    pub_registry: NetworkRegistry, pub_simulation: Simulation
) -> None:
    """What the simulator promises is the oracle's figures of what the validator accepts."""
    accepted = _accept(Validator(pub_registry), pub_simulation)
    nodes = [node.id for node in pub_registry.nodes]
    assert compute_views((a.event for a in accepted), nodes) == pub_simulation.result.views


def test_keys_are_participant_ids_except_for_key_mismatches(pub_simulation: Simulation) -> None:
    for message in pub_simulation.messages:
        if message.expected in (Reason.KEY_MISMATCH, Reason.MALFORMED_JSON, Reason.INVALID_FIELD):
            continue
        if message.expected is Reason.UNKNOWN_SCHEMA:
            continue
        assert message.key == orjson.loads(message.value)["participant_id"].encode()


def test_participants_flow_through_the_trial(large_events: list[Accepted]) -> None:
    statuses: dict[str, list[str]] = defaultdict(list)
    arms: dict[str, str] = {}
    for accepted in sorted(large_events, key=lambda a: a.event.occurred_at):
        event = accepted.event
        if isinstance(event, EnrollmentV1):
            statuses[event.participant_id].append(event.status)
            if event.status == "randomized":
                assert event.modality is not None
                arms[event.participant_id] = event.modality
            if event.status == "withdrawn":
                assert event.reason is not None
    allowed = {
        ("screened",),
        ("screened", "consented"),
        ("screened", "consented", "randomized", "withdrawn"),
        ("screened", "consented", "randomized", "completed"),
    }
    flows = Counter(tuple(flow) for flow in statuses.values())
    assert set(flows) == allowed
    completed = flows[("screened", "consented", "randomized", "completed")]
    withdrawn = flows[("screened", "consented", "randomized", "withdrawn")]
    assert 0.05 < withdrawn / (withdrawn + completed) < 0.3
    assert set(Counter(arms.values())) == {"aerobic", "resistance", "combined", "control"}


def test_sessions_look_like_exercise_programmes(large_events: list[Accepted]) -> None:
    arm_of = {
        a.event.participant_id: a.event.modality
        for a in large_events
        if isinstance(a.event, EnrollmentV1) and a.event.status == "randomized"
    }
    sessions = [a.event for a in large_events if isinstance(a.event, SessionV1)]
    assert all(arm_of[s.participant_id] != "control" for s in sessions)  # control: no sessions
    per_participant = Counter(s.participant_id for s in sessions)
    assert max(per_participant.values()) == 36  # 3 a week for 12 weeks

    aerobic = [s for s in sessions if s.modality == "aerobic" and s.status == "attended"]
    resistance = [s for s in sessions if s.modality == "resistance" and s.status == "attended"]
    assert all(s.duration_min is not None and 30 <= s.duration_min <= 50 for s in aerobic)
    aerobic_hr = [s.mean_hr_pct_max for s in aerobic if s.mean_hr_pct_max is not None]
    resistance_hr = [s.mean_hr_pct_max for s in resistance if s.mean_hr_pct_max is not None]
    assert all(60 <= hr <= 85 for hr in aerobic_hr)
    assert statistics.mean(resistance_hr) < statistics.mean(aerobic_hr)
    assert all(s.rpe is not None and 6 <= s.rpe <= 20 for s in aerobic)
    for s in sessions:
        if s.status != "attended":
            assert (s.duration_min, s.rpe, s.adverse_event) == (None, None, None)

    by_site: dict[str, Counter[str]] = defaultdict(Counter)
    for s in sessions:
        by_site[s.site_id][s.status] += 1
    rates = [c["attended"] / sum(c.values()) for c in by_site.values()]
    assert all(0.7 <= rate <= 0.9 for rate in rates)
    assert max(rates) - min(rates) > 0.02  # attendance varies by site
    adverse = sum(s.adverse_event is not None for s in sessions)
    assert 0 < adverse < 0.03 * len(sessions)


def test_assessments_at_four_weeks_and_exercise_helps_more(
    large_events: list[Accepted],
) -> None:
    arm_of = {
        a.event.participant_id: a.event.modality
        for a in large_events
        if isinstance(a.event, EnrollmentV1) and a.event.status == "randomized"
    }
    scores: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for accepted in large_events:
        event = accepted.event
        if isinstance(event, AssessmentV1):
            scores[(event.participant_id, event.instrument)][event.week] = event.score
    assert {week for by_week in scores.values() for week in by_week} == set(ASSESSMENT_WEEKS)
    assert {instrument for _pid, instrument in scores} == {"PHQ9", "HAMD17"}

    def responder_share(arms: set[str]) -> float:
        people = [
            pid
            for (pid, instrument), by_week in scores.items()
            if instrument == "PHQ9" and arm_of.get(pid) in arms and 12 in by_week
        ]
        responders = [
            pid for pid in people if scores[(pid, "PHQ9")][12] * 2 <= scores[(pid, "PHQ9")][0]
        ]
        return len(responders) / len(people)

    assert (
        responder_share({"aerobic", "resistance", "combined"}) > responder_share({"control"}) + 0.15
    )


def test_assays_use_mixed_units_unique_specimens_and_node_labs(
    large_events: list[Accepted],
) -> None:
    assays = [a.event for a in large_events if isinstance(a.event, AssayV1)]
    units: dict[str, set[str]] = defaultdict(set)
    specimens: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for assay in assays:
        units[assay.analyte].add(assay.unit)
        specimens[assay.specimen_id].add(
            (assay.participant_id, assay.specimen_type, assay.timepoint)
        )
        assert assay.lab_id.startswith(assay.node_id)
    assert units["BDNF"] == {"pg/mL", "ng/mL"}
    assert all(len(found) == 2 for found in units.values())
    assert all(len(owners) == 1 for owners in specimens.values())  # one specimen, one draw
    assert {a.timepoint for a in assays} >= {"baseline", "post", "acute_pre", "acute_post"}
    bdnf = [a.canonical()[0] for a in assays if a.analyte == "BDNF" and a.timepoint == "baseline"]
    assert 10 < statistics.median(bdnf) < 40  # ng/mL, serum


def test_timestamps_use_varied_offsets_and_key_orders(large: Simulation) -> None:
    offsets: Counter[str] = Counter()
    orders: set[tuple[str, ...]] = set()
    for message in large.messages:
        text = orjson.loads(message.value)["occurred_at"]
        offsets["Z" if text.endswith("Z") else text[-6:]] += 1
        orders.add(tuple(orjson.loads(message.value)))
    assert {"Z", "+01:00", "-05:00"} <= set(offsets)
    assert len(orders) > 50


def test_sites_report_in_their_registry_zone_daylight_saving_included(
    pub_registry: NetworkRegistry, large: Simulation
) -> None:
    zones = {site.id: site.timezone for node in pub_registry.nodes for site in node.sites}
    assert all(zones.values())  # the demo registry gives every site its zone
    seen: dict[str, set[timedelta]] = defaultdict(set)
    for message in large.messages:
        if message.kind is not MessageKind.EVENT:
            continue
        doc = orjson.loads(message.value)
        at = datetime.fromisoformat(doc["occurred_at"])
        offset = at.utcoffset()
        assert offset is not None
        if doc["occurred_at"].endswith("Z"):
            continue  # some sites' clients send UTC
        zone = ZoneInfo(str(zones[doc["site_id"]]))
        assert offset == at.astimezone(zone).utcoffset(), doc
        seen[str(zones[doc["site_id"]])].add(offset)
    hour = timedelta(hours=1)
    hours = {zone: sorted(offset / hour for offset in offsets) for zone, offsets in seen.items()}
    assert hours == {
        "America/Chicago": [-6, -5],
        "America/Toronto": [-5, -4],
        "Europe/London": [1],  # GMT's +00:00 is written Z
    }


def test_sites_without_a_zone_report_in_their_node_s_fixed_offset(tmp_path: Path) -> None:
    text = DEMO_REGISTRY.read_text()
    path = tmp_path / "registry.yaml"
    path.write_text(re.sub(r", timezone: [A-Za-z/_]+", "", text))
    registry = load_registry(path)
    simulation = generate(registry, SimulationConfig(seed=3, participants=40))
    offsets: dict[str, set[str]] = defaultdict(set)
    for message in simulation.messages:
        if message.kind is MessageKind.EVENT:
            doc = orjson.loads(message.value)
            text = doc["occurred_at"]
            offsets[doc["node_id"]].add("Z" if text.endswith("Z") else text[-6:])
    assert offsets == {"N01": {"+01:00", "Z"}, "N02": {"-05:00", "Z"}, "N03": {"Z"}}


def test_writing_a_file_leaves_out_key_mismatches(pub_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "sim.jsonl"
    result = simulate(pub_settings, participants=20, invalid_share=0.1, out=out)
    lines = out.read_bytes().splitlines()
    assert len(lines) == result.messages
    assert result.keyless
    assert Reason.KEY_MISMATCH.value not in result.rejected
    assert result.rejected  # the other kinds are there
    assert all(line.strip() for line in lines)
    validator = Validator(None)
    valid = sum(isinstance(validator.validate_record(line), Accepted) for line in lines)
    unknown_sites = result.rejected.get(Reason.UNKNOWN_SITE.value, 0)
    assert valid == result.accepted + unknown_sites  # no registry at the publisher


def test_bad_shares_are_refused() -> None:
    with pytest.raises(UserError, match="between 0 and 1"):
        SimulationConfig(invalid_share=1.5)
    with pytest.raises(UserError, match="no kind"):
        SimulationConfig(invalid_share=0.1, invalid_kinds=(Reason.KEY_MISMATCH,), keyless=True)


def test_the_cli_takes_reason_codes_as_invalid_kinds(
    pub_settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "sim.jsonl"
    env = pub_env(pub_settings)
    kinds = "too_large,future_timestamp"
    args = ("--participants", "5", "--invalid-share", "0.2", "--invalid-kinds", kinds)
    result = pub_exnet("simulate", *args, "--out", str(out), "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(orjson.loads(result.stdout)["rejected"]) == {"too_large", "future_timestamp"}
    refused = pub_exnet(
        "simulate", "--invalid-kinds", "conflicting_duplicate", env=env, cwd=tmp_path
    )
    assert refused.returncode == 2
    assert b"not one of: too_large, malformed_json" in refused.stderr


def test_simulate_without_a_broker_is_a_clear_error(pub_settings: Settings, tmp_path: Path) -> None:
    env = pub_env(pub_settings, EXNET_KAFKA_BOOTSTRAP="127.0.0.1:1")
    result = pub_exnet("simulate", "--participants", "2", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert b"unreachable" in result.stderr
    assert b"Traceback" not in result.stderr
