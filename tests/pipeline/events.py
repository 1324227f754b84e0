"""Builders of valid site events (SPEC §1) for pipeline tests, as JSON-ready dicts."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from contracts import SCHEMAS, EventBase

__all__ = ["EventMaker", "as_event"]

#: Far enough in the past that nothing is a future_timestamp.
STUDY_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class EventMaker:
    """Deterministic events: ids from a counter, times from the study start."""

    def __init__(self, seed: int = 0) -> None:
        self._ids = itertools.count(seed * 1_000_000)

    def event_id(self) -> str:
        return str(uuid.UUID(int=next(self._ids) + 1, version=4))

    def _envelope(
        self, schema: str, participant: str, site: str, at: datetime | None, day: int
    ) -> dict[str, Any]:
        node = site.split("-")[0]
        when = at if at is not None else STUDY_START + timedelta(days=day)
        return {
            "schema": schema,
            "event_id": self.event_id(),
            "occurred_at": when.isoformat().replace("+00:00", "Z"),
            "node_id": node,
            "site_id": site,
            "participant_id": participant,
        }

    def enrollment(
        self,
        participant: str,
        site: str,
        status: str,
        *,
        day: int = 0,
        at: datetime | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        return {
            **self._envelope("enrollment/1", participant, site, at, day),
            "status": status,
            **fields,
        }

    def session(
        self,
        participant: str,
        site: str,
        number: int,
        status: str = "attended",
        *,
        day: int = 0,
        modality: str = "aerobic",
        duration: float | None = 40.0,
        **fields: Any,
    ) -> dict[str, Any]:
        return {
            **self._envelope("session/1", participant, site, None, day),
            "session_number": number,
            "status": status,
            "modality": modality,
            "supervised": True,
            "duration_min": duration if status == "attended" else None,
            **fields,
        }

    def assay(
        self,
        participant: str,
        site: str,
        specimen: str,
        analyte: str,
        value: float,
        unit: str,
        *,
        timepoint: str = "baseline",
        day: int = 0,
        **fields: Any,
    ) -> dict[str, Any]:
        return {
            **self._envelope("assay/1", participant, site, None, day),
            "specimen_id": specimen,
            "specimen_type": "serum",
            "timepoint": timepoint,
            "analyte": analyte,
            "value": value,
            "unit": unit,
            "lab_id": "LAB-1",
            **fields,
        }

    def assessment(
        self,
        participant: str,
        site: str,
        instrument: str,
        score: int,
        week: int,
        *,
        day: int | None = None,
    ) -> dict[str, Any]:
        return {
            **self._envelope(
                "assessment/1", participant, site, None, week * 7 if day is None else day
            ),
            "instrument": instrument,
            "score": score,
            "week": week,
        }


def as_event(document: dict[str, Any]) -> EventBase:
    """A valid event's JSON document as the platform accepts it: its contract's model."""
    _topic, model = SCHEMAS[document["schema"]]
    return model.model_validate_json(orjson.dumps(document))
