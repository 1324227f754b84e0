"""``session/1``: one delivered or scheduled exercise session (SPEC §1)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, model_validator

from exnet.contracts.envelope import EventBase, cross_field_error

__all__ = ["SessionV1"]


class SessionV1(EventBase):
    """A session was attended, missed or cancelled."""

    EVENT_TYPE: ClassVar[str] = "session"
    SCHEMA: ClassVar[str] = "session/1"

    schema_: Literal["session/1"] = Field(alias="schema")
    session_number: Annotated[int, Field(ge=1, le=500)]
    status: Literal["attended", "missed", "cancelled"]
    modality: Literal["aerobic", "resistance", "combined"]
    supervised: bool
    #: Minutes; required when attended.
    duration_min: Annotated[float, Field(ge=0, le=300)] | None = None
    #: Mean heart rate, % of age-predicted maximum.
    mean_hr_pct_max: Annotated[float, Field(ge=30, le=100)] | None = None
    #: Borg rating of perceived exertion.
    rpe: Annotated[int, Field(ge=6, le=20)] | None = None
    adverse_event: Literal["mild", "moderate", "severe", "serious"] | None = None

    @model_validator(mode="after")
    def _attended_rules(self) -> Self:
        if self.status == "attended" and self.duration_min is None:
            raise cross_field_error([("duration_min", "required when status is 'attended'")])
        return self
