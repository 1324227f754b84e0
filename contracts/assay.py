"""``assay/1``: one analyte measured in one specimen (SPEC §1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field, StringConstraints

from contracts.envelope import AtMostPerPair, EventBase, OneOfPer, PlainZero, Rule
from contracts.units import (
    ANALYTE_UNITS,
    CANONICAL_MAX,
    CANONICAL_UNIT,
    Analyte,
    Unit,
    to_canonical,
)

__all__ = ["AssayV1", "SpecimenType", "Timepoint"]

SpecimenType = Literal["serum", "plasma", "whole_blood", "saliva", "urine", "pbmc", "muscle"]
Timepoint = Literal["baseline", "acute_pre", "acute_post", "mid", "post", "follow_up"]

#: The unit rules for JSON Schema readers, from the same tables as ``rule_problems``:
#: each analyte's units, then each unit's largest value that converts to the canonical.
_JSON_SCHEMA_RULES: Final[dict[str, Any]] = {
    "allOf": [
        {
            "if": {"properties": {"analyte": {"const": analyte}}, "required": ["analyte"]},
            "then": {"properties": {"unit": {"enum": list(units)}}},
        }
        for analyte, units in ANALYTE_UNITS.items()
    ]
    + [
        {
            "if": {
                "properties": {"analyte": {"const": analyte}, "unit": {"const": unit}},
                "required": ["analyte", "unit"],
            },
            "then": {"properties": {"value": {"type": "number", "maximum": top}}},
        }
        for analyte, tops in CANONICAL_MAX.items()
        for unit, top in tops.items()
    ]
}


class AssayV1(EventBase):
    """A lab measured one analyte in one specimen."""

    model_config = ConfigDict(json_schema_extra=_JSON_SCHEMA_RULES)

    EVENT_TYPE: ClassVar[str] = "assay"
    SCHEMA: ClassVar[str] = "assay/1"
    RULE_FIELDS: ClassVar[frozenset[str]] = frozenset({"analyte", "unit", "value"})
    RULES: ClassVar[tuple[Rule, ...]] = (
        OneOfPer("unit", "analyte", ANALYTE_UNITS),
        # A value too large to express in the canonical unit (value_canonical, SPEC §1).
        AtMostPerPair("value", ("analyte", "unit"), CANONICAL_MAX),
    )

    schema_: Literal["assay/1"] = Field(alias="schema")
    specimen_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{4,64}$")]
    specimen_type: SpecimenType
    timepoint: Timepoint
    analyte: Analyte
    #: In ``unit``; finite (the model forbids infinities and NaN).
    value: Annotated[float, Field(ge=0), PlainZero]
    unit: Unit
    lab_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{2,32}$")]
    #: The lab's batch label; bounded so that no long free text rides along.
    #: A lab's batch label, never free text (SPEC §1).
    batch_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    below_lloq: bool = False

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        analyte = values["analyte"]
        allowed = ANALYTE_UNITS[analyte]
        unit = values["unit"]
        if unit not in allowed:
            takes = " or ".join(map(repr, allowed))
            return [("unit", f"{analyte} takes {takes}, not {unit!r}")]
        top = CANONICAL_MAX[analyte].get(unit)
        value = values.get("value")  # absent when it failed its own rule
        if top is not None and isinstance(value, int | float) and value > top:
            canonical = CANONICAL_UNIT[analyte]
            return [
                (
                    "value",
                    f"{value!r} {unit} is too large to express in {canonical}, {analyte}'s "
                    f"canonical unit (at most {top!r} {unit})",
                )
            ]
        return []

    def canonical(self) -> tuple[float, str]:
        """``(value_canonical, unit_canonical)``: the value in the analyte's canonical unit."""
        return to_canonical(self.analyte, self.value, self.unit)
