"""The envelope every event carries (SPEC §1), as the frozen base of every event model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "CROSS_FIELD_ERROR",
    "NODE_ID_PATTERN",
    "PARTICIPANT_ID_PATTERN",
    "SITE_ID_PATTERN",
    "EVENT_ID_PATTERN",
    "EventBase",
    "EventId",
    "NodeId",
    "ParticipantId",
    "SiteId",
    "cross_field_error",
]

NODE_ID_PATTERN = r"^[A-Z][A-Z0-9]{1,15}$"
SITE_ID_PATTERN = r"^[A-Z][A-Z0-9]{1,15}-[A-Z0-9]{1,15}$"
PARTICIPANT_ID_PATTERN = r"^P-[0-9a-f]{10,64}$"
#: A UUID in its standard 8-4-4-4-12 hex form, either case (stored lower-case).
EVENT_ID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

NodeId = Annotated[str, StringConstraints(pattern=NODE_ID_PATTERN)]
SiteId = Annotated[str, StringConstraints(pattern=SITE_ID_PATTERN)]
ParticipantId = Annotated[str, StringConstraints(pattern=PARTICIPANT_ID_PATTERN)]
#: Lower-cased before the pattern runs, so ``ABC...`` and ``abc...`` are one identity.
EventId = Annotated[str, StringConstraints(to_lower=True, pattern=EVENT_ID_PATTERN)]

#: The error type of a rule that spans fields; its context names every failing path.
CROSS_FIELD_ERROR = "cross_field"


def cross_field_error(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """One error for the rules spanning fields that failed, as (field path, message) pairs.

    A model validator cannot set an error's location, so the paths travel in
    the error's context and the validator expands them (``validation.py``).
    """
    summary = "; ".join(f"{path}: {message}" for path, message in problems)
    return PydanticCustomError(CROSS_FIELD_ERROR, summary, {"problems": problems})


class EventBase(BaseModel):
    """Fields and rules shared by every event type.

    Strict: a JSON string is not a number, ``5.0`` is not an int, a timestamp
    needs its UTC offset; unknown fields are invalid (no free text can smuggle
    identifiers in).
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        populate_by_name=True,
        allow_inf_nan=False,
        serialize_by_alias=True,
    )

    #: ``enrollment`` etc.; set by each event type.
    EVENT_TYPE: ClassVar[str]
    #: ``enrollment/1`` etc.; set by each event type.
    SCHEMA: ClassVar[str]

    event_id: EventId
    occurred_at: AwareDatetime
    node_id: NodeId
    site_id: SiteId
    participant_id: ParticipantId

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def row_fields(self) -> dict[str, Any]:
        """The event's fields by their wire names (``schema`` included), Python values."""
        return self.model_dump(by_alias=True)
