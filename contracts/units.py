"""Analytes' canonical units and the factors that normalise other units to them (SPEC §1)."""

from __future__ import annotations

import math
import sys
from typing import Final, Literal

__all__ = [
    "ANALYTE_UNITS",
    "CANONICAL_MAX",
    "CANONICAL_UNIT",
    "Analyte",
    "Unit",
    "to_canonical",
]

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


def _largest_convertible(factor: float) -> float:
    """The largest double ``x`` whose ``x * factor`` is finite (a double), for ``factor > 1``.

    Multiplying by a positive factor keeps order, so a value converts exactly when it
    is at most this bound: the rule a JSON Schema ``maximum`` can state.
    """
    top = sys.float_info.max / factor
    while math.isfinite(math.nextafter(top, math.inf) * factor):
        top = math.nextafter(top, math.inf)
    while not math.isfinite(top * factor):
        top = math.nextafter(top, -math.inf)
    return top


#: analyte -> {unit: the largest value in it whose canonical value is a finite double},
#: for the units whose factor is over 1 (any other finite value converts).
CANONICAL_MAX: Final[dict[str, dict[str, float]]] = {
    analyte: {unit: _largest_convertible(factor) for unit, factor in units.items() if factor > 1}
    for analyte, units in ANALYTE_UNITS.items()
}


def to_canonical(analyte: str, value: float, unit: str) -> tuple[float, str]:
    """``value`` in ``unit`` expressed in the analyte's canonical unit.

    Raises KeyError for a unit not allowed for the analyte (the contracts
    reject those before anything calls this, and values past :data:`CANONICAL_MAX`,
    whose canonical value would be infinite).
    """
    return value * ANALYTE_UNITS[analyte][unit], CANONICAL_UNIT[analyte]
