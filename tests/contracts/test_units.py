"""Units (SPEC §1): which units each analyte takes, and the normalisation to its canonical unit."""

from __future__ import annotations

import math
import typing

import orjson
import pytest

from contracts import ANALYTE_UNITS, CANONICAL_UNIT, AssayV1, Topic, to_canonical
from contracts.units import CANONICAL_MAX, Analyte, Unit

from .helpers import NOW, accepted, event, new_validator, rejected, send

A = Topic.ASSAY

#: SPEC §1's table, written out: analyte -> (canonical unit, {other allowed unit: factor}).
SPEC_UNITS: dict[str, tuple[str, dict[str, float]]] = {
    "BDNF": ("ng/mL", {"pg/mL": 0.001}),
    "cortisol": ("nmol/L", {"ug/dL": 27.59}),
    "IL6": ("pg/mL", {"ng/mL": 1000}),
    "TNFA": ("pg/mL", {"ng/mL": 1000}),
    "CRP": ("mg/L", {"ng/mL": 0.001}),
    "serotonin": ("ng/mL", {"nmol/L": 0.1762}),
    "norepinephrine": ("pg/mL", {"nmol/L": 169.2}),
    "kynurenine": ("nmol/L", {"ng/mL": 4.803}),
}
ANALYTES = typing.get_args(Analyte)
UNITS = typing.get_args(Unit)
PAIRS = [(analyte, unit) for analyte in ANALYTES for unit in UNITS]


def test_the_table_is_the_spec_table() -> None:
    assert set(ANALYTE_UNITS) == set(SPEC_UNITS) == set(ANALYTES)
    for analyte, (canonical, others) in SPEC_UNITS.items():
        assert CANONICAL_UNIT[analyte] == canonical
        assert ANALYTE_UNITS[analyte] == {canonical: 1.0, **others}
    assert {unit for units in ANALYTE_UNITS.values() for unit in units} == set(UNITS)


def test_each_analyte_has_one_canonical_unit() -> None:
    for analyte, units in ANALYTE_UNITS.items():
        assert [unit for unit, factor in units.items() if factor == 1.0] == [
            CANONICAL_UNIT[analyte]
        ]


@pytest.mark.parametrize(("analyte", "unit"), PAIRS, ids=[f"{a}-{u}" for a, u in PAIRS])
def test_every_analyte_with_every_unit(analyte: str, unit: str) -> None:
    canonical, others = SPEC_UNITS[analyte]
    message = event(Topic.ASSAY, analyte=analyte, unit=unit, value=12.5)
    if unit == canonical or unit in others:
        assay = accepted(send(message, Topic.ASSAY)).event
        assert isinstance(assay, AssayV1)
        factor = 1.0 if unit == canonical else others[unit]
        value_canonical, unit_canonical = assay.canonical()
        assert unit_canonical == canonical
        assert math.isclose(value_canonical, 12.5 * factor, rel_tol=1e-12)
        assert assay.value == 12.5  # the value as sent is kept; the canonical one is derived
        assert assay.unit == unit
    else:
        outcome = rejected(send(message, Topic.ASSAY), "invalid_field", "unit")
        allowed = " or ".join(repr(u) for u in ANALYTE_UNITS[analyte])
        assert outcome.message == f"unit: {analyte} takes {allowed}, not {unit!r}"
        assert outcome.issues[0].type == "cross_field"


@pytest.mark.parametrize(
    ("analyte", "value", "unit", "expected"),
    [
        ("BDNF", 1830.0, "pg/mL", 1.83),
        ("cortisol", 0.42, "ug/dL", 11.5878),
        ("IL6", 0.0031, "ng/mL", 3.1),
        ("CRP", 3400.0, "ng/mL", 3.4),
        ("serotonin", 612.5, "nmol/L", 107.9225),
        ("norepinephrine", 2.1, "nmol/L", 355.32),
        ("kynurenine", 410.0, "ng/mL", 1969.23),
        ("TNFA", 0.0, "ng/mL", 0.0),
        ("kynurenine", 410.0, "nmol/L", 410.0),
    ],
)
def test_to_canonical_values(analyte: str, value: float, unit: str, expected: float) -> None:
    got, canonical = to_canonical(analyte, value, unit)
    assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)
    assert canonical == CANONICAL_UNIT[analyte]


def test_to_canonical_refuses_a_unit_the_contract_rejects() -> None:
    with pytest.raises(KeyError):
        to_canonical("BDNF", 1.0, "mg/L")


def test_unit_rule_and_unit_enum_are_separate_failures() -> None:
    rejected(send(event(Topic.ASSAY, unit="mmol/L"), Topic.ASSAY), "invalid_field", "unit")
    outcome = rejected(send(event(Topic.ASSAY, unit="ng/ml"), Topic.ASSAY), "invalid_field", "unit")
    assert outcome.issues[0].type == "literal_error"  # units are case-sensitive


BIGGEST = 1.7976931348623157e308  # the largest double


@pytest.mark.parametrize(("analyte", "unit"), PAIRS, ids=[f"{a}-{u}" for a, u in PAIRS])
def test_a_value_too_large_for_the_canonical_unit_is_invalid(analyte: str, unit: str) -> None:
    """value_canonical is value x factor: where that overflows to infinity (a factor over
    1), the value is invalid, said in the unit's words; up to the bound it converts."""
    canonical, others = SPEC_UNITS[analyte]
    if unit != canonical and unit not in others:
        return
    factor = others.get(unit, 1.0)
    top = CANONICAL_MAX[analyte].get(unit, BIGGEST)
    assert (top == BIGGEST) == (factor <= 1)
    assay = accepted(send(event(Topic.ASSAY, analyte=analyte, unit=unit, value=top), A)).event
    assert isinstance(assay, AssayV1) and math.isfinite(assay.canonical()[0])
    if factor <= 1:
        return
    for value in (math.nextafter(top, math.inf), BIGGEST):
        message = event(Topic.ASSAY, analyte=analyte, unit=unit, value=value)
        outcome = rejected(send(message, A), "invalid_field", "value")
        assert outcome.message == (
            f"value: {value!r} {unit} is too large to express in {canonical}, {analyte}'s "
            f"canonical unit (at most {top!r} {unit})"
        )
        assert math.isinf(value * factor)
        # Named beside another failing field too, and in the publisher's check.
        message["lab_id"] = "a lab"
        rejected(send(message, A), "invalid_field", "value", "lab_id")
        rejected(new_validator().validate_record(orjson.dumps(message), NOW),
                 "invalid_field", "value", "lab_id")  # fmt: skip


def test_the_reported_cases_of_a_value_too_large_for_the_canonical_unit() -> None:
    for analyte, unit, value in (
        ("cortisol", "ug/dL", b"1.7976931348623157e308"),
        ("norepinephrine", "nmol/L", b"1e307"),
    ):
        message = orjson.dumps(event(A, analyte=analyte, unit=unit, value=0.5))
        outcome = rejected(send(message.replace(b"0.5", value), A), "invalid_field", "value")
        assert "is too large to express in" in outcome.message, outcome.message
        assert CANONICAL_UNIT[analyte] in outcome.message
