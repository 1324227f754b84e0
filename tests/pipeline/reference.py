"""What the analysts' views must say, computed in plain Python from the accepted events.

An independent statement of SPEC §4's definitions, to compare ClickHouse against.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from contracts.assessment import REMISSION_MAX

__all__ = ["arm_summary", "network_summary", "node_daily", "node_summary"]

STATUSES = ("screened", "consented", "randomized", "withdrawn", "completed")
Event = dict[str, Any]


def _when(event: Event) -> datetime:
    return datetime.fromisoformat(event["occurred_at"]).astimezone(UTC)


def _summary(events: Iterable[Event]) -> dict[str, Any]:
    reached: dict[str, set[str]] = {status: set() for status in STATUSES}
    row: dict[str, Any] = {
        "sessions_attended": 0,
        "sessions_missed": 0,
        "sessions_cancelled": 0,
        "exercise_minutes": 0.0,
        "adverse_events": 0,
        "assays": 0,
        "assessments": 0,
    }
    specimens: set[str] = set()
    for event in events:
        kind = event["schema"].split("/")[0]
        if kind == "enrollment":
            reached[event["status"]].add(event["participant_id"])
        elif kind == "session":
            row[f"sessions_{event['status']}"] += 1
            if event["status"] == "attended":
                row["exercise_minutes"] += event["duration_min"]
            if event.get("adverse_event") is not None:
                row["adverse_events"] += 1
        elif kind == "assay":
            specimens.add(event["specimen_id"])
            row["assays"] += 1
        else:
            row["assessments"] += 1
    row.update({status: len(people) for status, people in reached.items()})
    row["specimens"] = len(specimens)
    return row


def node_summary(events: list[Event], nodes: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {node: _summary(e for e in events if e["node_id"] == node) for node in nodes}


def network_summary(events: list[Event]) -> dict[str, Any]:
    return _summary(events)


def arm_summary(events: list[Event]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """(scope, node_id, modality, adjunct) -> counts, over randomized participants."""
    latest: dict[str, Event] = {}
    for event in events:
        if event["schema"].startswith("enrollment") and event["status"] == "randomized":
            rank = (_when(event), event["event_id"])
            prior = latest.get(event["participant_id"])
            if prior is None or rank > (_when(prior), prior["event_id"]):
                latest[event["participant_id"]] = event
    attended: dict[str, int] = defaultdict(int)
    minutes: dict[str, float] = defaultdict(float)
    baseline: dict[tuple[str, str], Event] = {}
    later: list[Event] = []
    for event in events:
        if event["schema"].startswith("session") and event["status"] == "attended":
            attended[event["participant_id"]] += 1
            minutes[event["participant_id"]] += event["duration_min"]
        if event["schema"].startswith("assessment"):
            if event["week"] == 0:
                key = (event["participant_id"], event["instrument"])
                prior = baseline.get(key)
                if prior is None or (_when(event), event["event_id"]) > (
                    _when(prior),
                    prior["event_id"],
                ):
                    baseline[key] = event
            else:
                later.append(event)
    responders = {
        e["participant_id"]
        for e in later
        if (e["participant_id"], e["instrument"]) in baseline
        and e["score"] * 2 <= baseline[(e["participant_id"], e["instrument"])]["score"]
    }
    remitters = {e["participant_id"] for e in later if e["score"] <= REMISSION_MAX[e["instrument"]]}
    result: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for participant, event in latest.items():
        arm = (event["modality"], event.get("adjunct", "none"))
        for arm_key in (("node", event["node_id"], *arm), ("network", "", *arm)):
            row = result.setdefault(
                arm_key,
                {
                    "randomized": 0,
                    "sessions_attended": 0,
                    "exercise_minutes": 0.0,
                    "responders": 0,
                    "remitters": 0,
                },
            )
            row["randomized"] += 1
            row["sessions_attended"] += attended[participant]
            row["exercise_minutes"] += minutes[participant]
            row["responders"] += participant in responders
            row["remitters"] += participant in remitters
    return result


def node_daily(events: list[Event]) -> dict[tuple[str, date], dict[str, Any]]:
    result: dict[tuple[str, date], dict[str, Any]] = {}
    for event in events:
        kind = event["schema"].split("/")[0]
        if kind not in ("session", "enrollment"):
            continue
        key = (event["node_id"], _when(event).date())
        row = result.setdefault(
            key,
            {
                "sessions_attended": 0,
                "sessions_missed": 0,
                "sessions_cancelled": 0,
                "exercise_minutes": 0.0,
                "adverse_events": 0,
                **dict.fromkeys(STATUSES, 0),
            },
        )
        if kind == "session":
            row[f"sessions_{event['status']}"] += 1
            if event["status"] == "attended":
                row["exercise_minutes"] += event["duration_min"]
            if event.get("adverse_event") is not None:
                row["adverse_events"] += 1
        else:
            row[event["status"]] += 1
    return result
