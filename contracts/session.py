"""``session/1``: one delivered or scheduled exercise session (SPEC §1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field

from contracts.envelope import EventBase, PlainZero, RequiredWhen, Rule, WholeNumber

__all__ = ["AdverseEvent", "SessionModality", "SessionStatus", "SessionV1"]

SessionStatus = Literal["attended", "missed", "cancelled"]
#: What a session trains (the control arm has no sessions).
SessionModality = Literal["aerobic", "resistance", "combined"]
#: The severity of an adverse event during a session.
AdverseEvent = Literal["mild", "moderate", "severe", "serious"]

#: The status that needs a ``duration_min``.
_ATTENDED: Final = "attended"

#: The cross-field rule for JSON Schema readers (the same rule as ``rule_problems``).
_JSON_SCHEMA_RULES: Final[dict[str, Any]] = {
    "allOf": [
        {
            "if": {"properties": {"status": {"const": _ATTENDED}}, "required": ["status"]},
            "then": {
                "required": ["duration_min"],
                "properties": {"duration_min": {"type": "number"}},
            },
        }
    ]
}


class SessionV1(EventBase):
    """A session was attended, missed or cancelled."""

    model_config = ConfigDict(json_schema_extra=_JSON_SCHEMA_RULES)

    EVENT_TYPE: ClassVar[str] = "session"
    SCHEMA: ClassVar[str] = "session/1"
    RULE_FIELDS: ClassVar[frozenset[str]] = frozenset({"status", "duration_min"})
    RULES: ClassVar[tuple[Rule, ...]] = (RequiredWhen("duration_min", "status", _ATTENDED),)

    schema_: Literal["session/1"] = Field(alias="schema")
    session_number: Annotated[int, WholeNumber(ge=1, le=500)]
    status: SessionStatus
    modality: SessionModality
    supervised: bool
    #: Minutes; required when attended.
    duration_min: Annotated[float, Field(ge=0, le=300), PlainZero] | None = None
    #: Mean heart rate, % of age-predicted maximum.
    mean_hr_pct_max: Annotated[float, Field(ge=30, le=100)] | None = None
    #: Borg rating of perceived exertion.
    rpe: Annotated[int, WholeNumber(ge=6, le=20)] | None = None
    adverse_event: AdverseEvent | None = None

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        if values["status"] == _ATTENDED and values.get("duration_min") is None:
            return [("duration_min", f"required when status is {_ATTENDED!r}")]
        return []
