"""``enrollment/1``: a participant's progress through the trial (SPEC §1)."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

from exnet.contracts.envelope import EventBase, cross_field_error

__all__ = ["EnrollmentV1"]

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


class EnrollmentV1(EventBase):
    """A participant was screened, consented, randomized, withdrew or completed."""

    EVENT_TYPE: ClassVar[str] = "enrollment"
    SCHEMA: ClassVar[str] = "enrollment/1"

    schema_: Literal["enrollment/1"] = Field(alias="schema")
    status: EnrollmentStatus
    #: The arm; required when ``status`` is ``randomized``, else null or absent.
    modality: Arm | None = None
    adjunct: Adjunct = "none"
    age_band: AgeBand | None = None
    sex: Sex | None = None
    #: Why the participant withdrew; only with ``status`` ``withdrawn``.
    reason: WithdrawalReason | None = None

    @model_validator(mode="after")
    def _status_rules(self) -> Self:
        problems: list[tuple[str, str]] = []
        if self.status == "randomized" and self.modality is None:
            problems.append(("modality", "required when status is 'randomized'"))
        if self.status != "randomized" and self.modality is not None:
            problems.append(("modality", "must be null or absent unless status is 'randomized'"))
        if self.status != "withdrawn" and self.reason is not None:
            problems.append(("reason", "must be null or absent unless status is 'withdrawn'"))
        if problems:
            raise cross_field_error(problems)
        return self
