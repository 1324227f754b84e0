"""``assessment/1``: one depression rating (SPEC §1)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal, Self

from pydantic import Field, model_validator

from exnet.contracts.envelope import EventBase, cross_field_error

__all__ = ["INSTRUMENT_MAX", "REMISSION_MAX", "AssessmentV1"]

Instrument = Literal["PHQ9", "HAMD17", "MADRS", "BDI2"]

#: The highest score of each instrument (its range starts at 0).
INSTRUMENT_MAX: Final[dict[str, int]] = {"PHQ9": 27, "HAMD17": 52, "MADRS": 60, "BDI2": 63}
#: The highest score that counts as remission (SPEC §1: PHQ9 < 5, HAMD17 <= 7, ...).
REMISSION_MAX: Final[dict[str, int]] = {"PHQ9": 4, "HAMD17": 7, "MADRS": 10, "BDI2": 13}


class AssessmentV1(EventBase):
    """A participant's depression was rated on one instrument."""

    EVENT_TYPE: ClassVar[str] = "assessment"
    SCHEMA: ClassVar[str] = "assessment/1"

    schema_: Literal["assessment/1"] = Field(alias="schema")
    instrument: Instrument
    score: Annotated[int, Field(ge=0)]
    #: Weeks since baseline (week 0).
    week: Annotated[int, Field(ge=0, le=104)]

    @model_validator(mode="after")
    def _score_in_range(self) -> Self:
        top = INSTRUMENT_MAX[self.instrument]
        if self.score > top:
            raise cross_field_error([("score", f"{self.instrument} scores run 0..{top}")])
        return self
