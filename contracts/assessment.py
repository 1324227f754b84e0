"""``assessment/1``: one depression rating (SPEC §1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field

from contracts.envelope import AtMostPer, EventBase, Rule, WholeNumber

__all__ = ["INSTRUMENT_MAX", "REMISSION_MAX", "AssessmentV1", "Instrument"]

Instrument = Literal["PHQ9", "HAMD17", "MADRS", "BDI2"]

#: The highest score of each instrument (its range starts at 0).
INSTRUMENT_MAX: Final[dict[str, int]] = {"PHQ9": 27, "HAMD17": 52, "MADRS": 60, "BDI2": 63}
#: The highest score that counts as remission (SPEC §1: PHQ9 < 5, HAMD17 <= 7, ...).
REMISSION_MAX: Final[dict[str, int]] = {"PHQ9": 4, "HAMD17": 7, "MADRS": 10, "BDI2": 13}

#: The score ranges for JSON Schema readers, from the same table as ``rule_problems``.
_JSON_SCHEMA_RULES: Final[dict[str, Any]] = {
    "allOf": [
        {
            "if": {"properties": {"instrument": {"const": instrument}}, "required": ["instrument"]},
            "then": {"properties": {"score": {"type": "integer", "maximum": top}}},
        }
        for instrument, top in INSTRUMENT_MAX.items()
    ]
}


class AssessmentV1(EventBase):
    """A participant's depression was rated on one instrument."""

    model_config = ConfigDict(json_schema_extra=_JSON_SCHEMA_RULES)

    EVENT_TYPE: ClassVar[str] = "assessment"
    SCHEMA: ClassVar[str] = "assessment/1"
    RULE_FIELDS: ClassVar[frozenset[str]] = frozenset({"instrument", "score"})
    RULES: ClassVar[tuple[Rule, ...]] = (AtMostPer("score", "instrument", INSTRUMENT_MAX),)

    schema_: Literal["assessment/1"] = Field(alias="schema")
    instrument: Instrument
    #: 0 up to the instrument's maximum (:data:`INSTRUMENT_MAX`).
    score: Annotated[int, WholeNumber(ge=0)]
    #: Weeks since baseline (week 0).
    week: Annotated[int, WholeNumber(ge=0, le=104)]

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        instrument = values["instrument"]
        top = INSTRUMENT_MAX[instrument]
        if values["score"] > top:
            return [("score", f"{instrument} scores run 0..{top}")]
        return []
