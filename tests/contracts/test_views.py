"""The views' one oracle (SPEC §4), held to hand-counted figures."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, get_args

import pytest

from contracts import CANONICAL_UNIT, SCHEMAS, EventBase
from contracts.enrollment import EnrollmentStatus
from contracts.registry import PrimaryEndpoint, outcome_definition
from contracts.session import SessionStatus
from contracts.views import (
    ARM_COLUMNS,
    DAILY_COLUMNS,
    SUMMARY_COLUMNS,
    ArmKey,
    DailyKey,
    compute_views,
)

START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
A, B, C, D = "P-00000000aa", "P-00000000bb", "P-00000000cc", "P-00000000dd"
NODES = ("N01", "N02", "N03")


class Make:
    """Valid events as the contracts' models; ids count up, times from :data:`START`."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def _event(
        self, schema: str, who: str, site: str, day: float, at: datetime | None, **fields: Any
    ) -> EventBase:
        _topic, model = SCHEMAS[schema]
        return model.model_validate(
            {
                "schema": schema,
                "event_id": str(uuid.UUID(int=next(self._ids), version=4)),
                "occurred_at": at if at is not None else START + timedelta(days=day),
                "node_id": site.split("-")[0],
                "site_id": site,
                "participant_id": who,
                **fields,
            }
        )

    def enrollment(
        self, who: str, site: str, status: str, day: float = 0, at: datetime | None = None, **f: Any
    ) -> EventBase:
        return self._event("enrollment/1", who, site, day, at, status=status, **f)

    def session(
        self,
        who: str,
        site: str,
        status: str = "attended",
        minutes: float | None = 40.0,
        day: float = 0,
        at: datetime | None = None,
        **f: Any,
    ) -> EventBase:
        fields: dict[str, Any] = {"session_number": 1, "status": status, "modality": "aerobic"}
        fields |= {"supervised": True, "duration_min": minutes, **f}
        return self._event("session/1", who, site, day, at, **fields)

    def assay(self, who: str, site: str, specimen: str, analyte: str = "BDNF") -> EventBase:
        fields: dict[str, Any] = {
            "specimen_id": specimen,
            "specimen_type": "serum",
            "timepoint": "baseline",
        }
        fields |= {"analyte": analyte, "value": 1.0, "unit": CANONICAL_UNIT[analyte]}
        fields["lab_id"] = "LAB-1"
        return self._event("assay/1", who, site, 0, None, **fields)

    def assessment(
        self, who: str, site: str, instrument: str, score: int, week: int, day: float | None = None
    ) -> EventBase:
        when = 7 * week if day is None else day
        fields: dict[str, Any] = {"instrument": instrument, "score": score, "week": week}
        return self._event("assessment/1", who, site, when, None, **fields)


def test_the_columns_follow_the_contracts() -> None:
    statuses = get_args(EnrollmentStatus)
    sessions = tuple(f"sessions_{status}" for status in get_args(SessionStatus))
    assert SUMMARY_COLUMNS[: len(statuses)] == statuses
    assert SUMMARY_COLUMNS[len(statuses) : len(statuses) + len(sessions)] == sessions
    assert set(DAILY_COLUMNS) == {*statuses, *sessions, "exercise_minutes", "adverse_events"}


def test_nothing_happened_gives_zeros_not_gaps() -> None:
    views = compute_views([], NODES)
    assert views.network_summary == dict.fromkeys(SUMMARY_COLUMNS, 0)
    assert views.node_summary == {node: dict.fromkeys(SUMMARY_COLUMNS, 0) for node in NODES}
    assert views.arm_summary == {} and views.node_daily == {}


def _network() -> list[EventBase]:
    make = Make()
    return [
        make.enrollment(A, "N01-S01", "screened", 0),
        make.enrollment(A, "N01-S01", "screened", 1),  # reached twice: one participant
        make.enrollment(A, "N01-S01", "consented", 1),
        make.enrollment(A, "N01-S01", "randomized", 2, modality="aerobic"),
        make.session(A, "N01-S01", "attended", 45.0, 3),
        make.session(A, "N01-S01", "missed", None, 5),
        make.session(A, "N01-S01", "attended", 30.5, 7, adverse_event="mild"),
        make.assessment(A, "N01-S01", "PHQ9", 20, 0),
        make.assessment(A, "N01-S01", "PHQ9", 10, 8),  # 10 * 2 <= 20: responds; 10 > 4
        make.enrollment(B, "N01-S02", "randomized", 3, modality="control"),
        make.assessment(B, "N01-S02", "HAMD17", 20, 0),
        make.assessment(B, "N01-S02", "HAMD17", 7, 12),  # responds and remits (<= 7)
        make.assessment(B, "N01-S02", "PHQ9", 6, 12),  # no PHQ9 baseline: neither
        make.enrollment(
            C, "N02-S01", "randomized", 4, modality="resistance", adjunct="psychotherapy"
        ),
        make.session(C, "N02-S01", "cancelled", None, 6),
        make.session(C, "N02-S01", "attended", 35.5, 8, modality="resistance"),
        make.enrollment(C, "N02-S01", "withdrawn", 20, reason="adverse_event"),
        make.assay(D, "N03-S01", "SPEC-0001"),
        make.assay(D, "N03-S01", "SPEC-0001", "cortisol"),  # one specimen, two assays
        make.assay(D, "N03-S01", "SPEC-0002"),
    ]


def test_summaries_count_as_spec_4_says() -> None:
    views = compute_views(_network(), NODES)
    assert views.network_summary == {
        "screened": 1,
        "consented": 1,
        "randomized": 3,
        "withdrawn": 1,
        "completed": 0,
        "sessions_attended": 3,
        "sessions_missed": 1,
        "sessions_cancelled": 1,
        "exercise_minutes": 45.0 + 30.5 + 35.5,
        "adverse_events": 1,
        "specimens": 2,
        "assays": 3,
        "assessments": 5,
    }
    assert list(views.network_summary) == list(SUMMARY_COLUMNS)
    n01, n02, n03 = (views.node_summary[node] for node in NODES)
    assert (n01["randomized"], n01["sessions_attended"], n01["exercise_minutes"]) == (2, 2, 75.5)
    assert (n02["withdrawn"], n02["sessions_cancelled"], n02["assessments"]) == (1, 1, 0)
    assert (n03["specimens"], n03["assays"], n03["screened"]) == (2, 3, 0)


def test_arms_hold_their_randomized_participants_and_outcomes() -> None:
    arms = compute_views(_network(), NODES).arm_summary
    assert arms[ArmKey("network", "", "aerobic", "none")] == {
        "randomized": 1,
        "sessions_attended": 2,
        "exercise_minutes": 75.5,
        "responders": 1,
        "remitters": 0,
    }
    assert arms[ArmKey("node", "N01", "control", "none")] == {
        "randomized": 1,
        "sessions_attended": 0,
        "exercise_minutes": 0.0,
        "responders": 1,
        "remitters": 1,
    }
    assert arms[ArmKey("node", "N02", "resistance", "psychotherapy")]["sessions_attended"] == 1
    assert len(arms) == 6  # three arms, each per node and network-wide
    assert all(list(figures) == list(ARM_COLUMNS) for figures in arms.values())
    assert list(arms) == sorted(arms)


def test_the_latest_randomization_and_baseline_count() -> None:
    """Ties broken as the views break them: later occurred_at, then greater event_id."""
    make = Make()
    first = make.enrollment(A, "N01-S01", "randomized", 2, modality="aerobic")
    moved = make.enrollment(A, "N02-S01", "randomized", 9, modality="combined")
    same_time = START + timedelta(days=20)
    low = make.enrollment(B, "N01-S01", "randomized", at=same_time, modality="aerobic")
    high = make.enrollment(B, "N01-S01", "randomized", at=same_time, modality="resistance")
    assert high.event_id > low.event_id
    old_base = make.assessment(A, "N02-S01", "PHQ9", 26, 0, day=1)
    new_base = make.assessment(A, "N02-S01", "PHQ9", 16, 0, day=3)
    later = make.assessment(A, "N02-S01", "PHQ9", 12, 4)  # responds to 26, not to 16
    events = [moved, first, high, low, new_base, old_base, later]
    arms = compute_views(events, NODES).arm_summary
    assert set(arms) == {
        ("node", "N02", "combined", "none"),
        ("network", "", "combined", "none"),
        ("node", "N01", "resistance", "none"),
        ("network", "", "resistance", "none"),
    }
    assert arms[ArmKey("network", "", "combined", "none")]["responders"] == 0


def test_node_daily_counts_by_utc_day() -> None:
    make = Make()
    minus5 = timezone(timedelta(hours=-5))
    late = datetime(2025, 3, 3, 21, 30, tzinfo=minus5)  # 02:30 UTC on the 4th
    events = [
        make.session(A, "N01-S01", "attended", 40.0, at=late),
        make.session(A, "N01-S01", "missed", None, at=late - timedelta(hours=6)),
        make.enrollment(A, "N01-S01", "screened", at=late),
        make.enrollment(B, "N01-S01", "screened", at=late),  # enrollment events, not people
        make.assay(A, "N01-S01", "SPEC-0001"),  # neither session nor enrollment: no row
    ]
    daily = compute_views(events, NODES).node_daily
    assert list(daily) == [DailyKey("N01", date(2025, 3, 3)), DailyKey("N01", date(2025, 3, 4))]
    assert daily[DailyKey("N01", date(2025, 3, 3))]["sessions_missed"] == 1
    fourth = daily[DailyKey("N01", date(2025, 3, 4))]
    assert list(fourth) == list(DAILY_COLUMNS)
    assert (fourth["sessions_attended"], fourth["exercise_minutes"], fourth["screened"]) == (
        1,
        40.0,
        2,
    )


def test_only_asked_for_nodes_have_rows_and_every_event_counts_network_wide() -> None:
    events = _network()
    views = compute_views(events, ("N01", "N09"))
    assert set(views.node_summary) == {"N01", "N09"}
    assert views.node_summary["N09"] == dict.fromkeys(SUMMARY_COLUMNS, 0)
    assert views.network_summary == compute_views(events, NODES).network_summary


def test_the_order_of_events_does_not_matter() -> None:
    events = _network()
    make = Make()
    events += [make.session(A, "N01-S01", "attended", 0.1, 30 + n) for n in range(30)]
    expected = compute_views(events, NODES)
    for seed in range(5):
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        assert compute_views(shuffled, NODES) == expected
    assert expected.network_summary["exercise_minutes"] == pytest.approx(111.0 + 3.0)


def _outcomes(events: list[EventBase], endpoint: PrimaryEndpoint | None) -> tuple[int, int]:
    (figures,) = [
        f
        for k, f in compute_views(events, NODES, endpoint).arm_summary.items()
        if k.scope == "network"
    ]
    return int(figures["responders"]), int(figures["remitters"])


def test_a_primary_endpoint_counts_only_its_instrument_and_week() -> None:
    """SPEC §3: with HAMD17 at week 12, a PHQ9 response at week 4 does not count."""
    make = Make()
    randomized = make.enrollment(A, "N01-S01", "randomized", 1, modality="aerobic")
    phq9 = [
        make.assessment(A, "N01-S01", "PHQ9", 20, 0),
        make.assessment(A, "N01-S01", "PHQ9", 3, 4),
    ]
    hamd0 = make.assessment(A, "N01-S01", "HAMD17", 24, 0)
    hamd8 = make.assessment(A, "N01-S01", "HAMD17", 6, 8)  # responds and remits, wrong week
    hamd12 = make.assessment(A, "N01-S01", "HAMD17", 13, 12)  # 13 * 2 > 24; 13 > 7
    events = [randomized, *phq9, hamd0, hamd8, hamd12]
    endpoint = PrimaryEndpoint(instrument="HAMD17", week=12)
    assert _outcomes(events, None) == (1, 1)  # SPEC §1: any instrument, any later week
    assert _outcomes(events, endpoint) == (0, 0)
    # Its thresholds: a 45 % reduction (13 <= 0.55 * 24 = 13.2) and remission at <= 13.
    lenient = PrimaryEndpoint(
        instrument="HAMD17", week=12, response_reduction_pct=45, remission_max=13
    )
    assert _outcomes(events, lenient) == (1, 1)
    # Exactly half the baseline is a response at the default 50 %.
    half = make.assessment(A, "N01-S01", "HAMD17", 12, 12)
    assert _outcomes([randomized, hamd0, half], endpoint) == (1, 0)
    # No baseline on the endpoint's instrument: no response, whatever the score.
    assert _outcomes([randomized, half], endpoint) == (0, 0)
    assert "HAMD17 at week 12" in outcome_definition(endpoint)
    assert "any instrument at any later week" in outcome_definition(None)
