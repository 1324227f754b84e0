"""``enrollment/1``: a participant's progress through the trial (SPEC §1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal, get_args

from pydantic import ConfigDict, Field

from contracts.envelope import EventBase, NullUnless, RequiredWhen, Rule

__all__ = [
    "Adjunct",
    "AgeBand",
    "Arm",
    "EnrollmentStatus",
    "EnrollmentV1",
    "Sex",
    "WithdrawalReason",
]

EnrollmentStatus = Literal["screened", "consented", "randomized", "withdrawn", "completed"]
Arm = Literal["aerobic", "resistance", "combined", "control"]
Adjunct = Literal[
    "none", "psychotherapy", "pharmacotherapy", "nutrition_counseling", "brain_stimulation"
]
AgeBand = Literal["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
Sex = Literal["female", "male", "intersex", "unknown"]
WithdrawalReason = Literal[
    "adverse_event", "lost_to_follow_up", "participant_choice", "investigator_decision", "other"
]

#: The status that needs a ``modality`` (and the only one that may carry one).
_RANDOMIZED: Final = "randomized"
#: The only status that may carry a withdrawal ``reason``.
_WITHDRAWN: Final = "withdrawn"


def _when_status(statuses: list[str], then: dict[str, Any]) -> dict[str, Any]:
    """``then`` applies when ``status`` is one of ``statuses`` (an invalid or missing
    status decides nothing: its own error is the one to name, as the platform does)."""
    condition = {"properties": {"status": {"enum": statuses}}, "required": ["status"]}
    return {"if": condition, "then": then}


_STATUSES: Final = list(get_args(EnrollmentStatus))
#: The cross-field rules for JSON Schema readers (the same rules as ``rule_problems``).
_JSON_SCHEMA_RULES: Final[dict[str, Any]] = {
    "allOf": [
        _when_status(
            [_RANDOMIZED],
            {"required": ["modality"], "properties": {"modality": {"type": "string"}}},
        ),
        _when_status(
            [s for s in _STATUSES if s != _RANDOMIZED],
            {"properties": {"modality": {"type": "null"}}},
        ),
        _when_status(
            [s for s in _STATUSES if s != _WITHDRAWN],
            {"properties": {"reason": {"type": "null"}}},
        ),
    ]
}


class EnrollmentV1(EventBase):
    """A participant was screened, consented, randomized, withdrew or completed."""

    model_config = ConfigDict(json_schema_extra=_JSON_SCHEMA_RULES)

    EVENT_TYPE: ClassVar[str] = "enrollment"
    SCHEMA: ClassVar[str] = "enrollment/1"
    RULE_FIELDS: ClassVar[frozenset[str]] = frozenset({"status", "modality", "reason"})
    RULES: ClassVar[tuple[Rule, ...]] = (
        RequiredWhen("modality", "status", _RANDOMIZED),
        NullUnless("modality", "status", _RANDOMIZED),
        NullUnless("reason", "status", _WITHDRAWN),
    )

    schema_: Literal["enrollment/1"] = Field(alias="schema")
    status: EnrollmentStatus
    #: The arm; required when ``status`` is ``randomized``, else null or absent.
    modality: Arm | None = None
    adjunct: Adjunct = "none"
    age_band: AgeBand | None = None
    sex: Sex | None = None
    #: Why the participant withdrew; only with ``status`` ``withdrawn``.
    reason: WithdrawalReason | None = None

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        status = values["status"]
        if status == _RANDOMIZED:
            if values.get("modality") is None:
                problems.append(("modality", f"required when status is {_RANDOMIZED!r}"))
        elif values.get("modality") is not None:
            problems.append(
                ("modality", f"must be null or absent unless status is {_RANDOMIZED!r}")
            )
        if status != _WITHDRAWN and values.get("reason") is not None:
            problems.append(("reason", f"must be null or absent unless status is {_WITHDRAWN!r}"))
        return problems
