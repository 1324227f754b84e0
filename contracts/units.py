"""Analytes' canonical units and the factors that normalise other units to them (SPEC §1)."""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["ANALYTE_UNITS", "CANONICAL_UNIT", "Analyte", "Unit", "to_canonical"]

Analyte = Literal[
    "BDNF", "cortisol", "IL6", "TNFA", "CRP", "serotonin", "norepinephrine", "kynurenine"
]
Unit = Literal["pg/mL", "ng/mL", "ug/dL", "mg/L", "nmol/L"]

#: analyte -> {allowed unit: factor to the canonical unit}; the canonical unit has factor 1.
ANALYTE_UNITS: Final[dict[str, dict[str, float]]] = {
    "BDNF": {"ng/mL": 1.0, "pg/mL": 0.001},
    "cortisol": {"nmol/L": 1.0, "ug/dL": 27.59},
    "IL6": {"pg/mL": 1.0, "ng/mL": 1000.0},
    "TNFA": {"pg/mL": 1.0, "ng/mL": 1000.0},
    "CRP": {"mg/L": 1.0, "ng/mL": 0.001},
    "serotonin": {"ng/mL": 1.0, "nmol/L": 0.1762},
    "norepinephrine": {"pg/mL": 1.0, "nmol/L": 169.2},
    "kynurenine": {"nmol/L": 1.0, "ng/mL": 4.803},
}

#: analyte -> its canonical unit.
CANONICAL_UNIT: Final[dict[str, str]] = {
    analyte: next(unit for unit, factor in units.items() if factor == 1.0)
    for analyte, units in ANALYTE_UNITS.items()
}


def to_canonical(analyte: str, value: float, unit: str) -> tuple[float, str]:
    """``value`` in ``unit`` expressed in the analyte's canonical unit.

    Raises KeyError for a unit not allowed for the analyte (the contracts
    reject those before anything calls this).
    """
    return value * ANALYTE_UNITS[analyte][unit], CANONICAL_UNIT[analyte]
