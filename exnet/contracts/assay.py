"""``assay/1``: one analyte measured in one specimen (SPEC §1)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, StringConstraints, model_validator

from exnet.contracts.envelope import EventBase, cross_field_error
from exnet.contracts.units import ANALYTE_UNITS, Analyte, Unit, to_canonical

__all__ = ["AssayV1"]

SpecimenType = Literal["serum", "plasma", "whole_blood", "saliva", "urine", "pbmc", "muscle"]
Timepoint = Literal["baseline", "acute_pre", "acute_post", "mid", "post", "follow_up"]


class AssayV1(EventBase):
    """A lab measured one analyte in one specimen."""

    EVENT_TYPE: ClassVar[str] = "assay"
    SCHEMA: ClassVar[str] = "assay/1"

    schema_: Literal["assay/1"] = Field(alias="schema")
    specimen_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{4,64}$")]
    specimen_type: SpecimenType
    timepoint: Timepoint
    analyte: Analyte
    value: Annotated[float, Field(ge=0)]
    unit: Unit
    lab_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{2,32}$")]
    #: The lab's batch label; bounded so that no long free text rides along.
    batch_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    below_lloq: bool = False

    @model_validator(mode="after")
    def _unit_fits_analyte(self) -> Self:
        allowed = ANALYTE_UNITS[self.analyte]
        if self.unit not in allowed:
            raise cross_field_error(
                [("unit", f"{self.analyte} takes {' or '.join(map(repr, allowed))}")]
            )
        return self

    def canonical(self) -> tuple[float, str]:
        """``(value_canonical, unit_canonical)``: the value in the analyte's canonical unit."""
        return to_canonical(self.analyte, self.value, self.unit)
