"""``exnet contracts export``: JSON Schemas generated from the models, and the topic registry."""

from __future__ import annotations

import calendar
import functools
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # ships no type information
import pytest
import typer
from typer.testing import CliRunner

from contracts import (
    ANALYTE_UNITS,
    EVENT_MODELS,
    INSTRUMENT_MAX,
    Accepted,
    AssayV1,
    AssessmentV1,
    EventBase,
    Topic,
)
from contracts.catalog import TOPICS, topic_spec
from contracts.envelope import OCCURRED_AT_EXACT_PATTERN, OCCURRED_AT_PATTERN
from contracts.errors import UserError
from contracts.export import (
    JSON_SCHEMA_DIALECT,
    TOPICS_FILE,
    event_json_schema,
    export_contracts,
    schema_file_name,
)
from contracts.units import CANONICAL_MAX
from exnet.cli import contracts as contracts_cli
from exnet.settings import load_settings

from .helpers import Example, event, load_examples, send

MODELS = [model for models in EVENT_MODELS.values() for model in models]
EXAMPLES = load_examples()

#: invalid_field examples whose rule JSON Schema cannot state, and why.
NOT_EXPRESSIBLE = {
    # 1e400 reads as infinity in Python's json, a number >= 0 to the jsonschema package
    # (ajv, reading it with JSON.parse, refuses it: tests/contracts/test_ajv.py); listed
    # under not_in_json_schema (test_finiteness_is_listed_beside_the_schemas).
    "assay_v1/invalid/value_infinite.json",
    # The earliest date is the registry's (SPEC §3), listed beside the schemas.
    "session_v1/invalid/occurred_at_year_1025.json",
    "session_v1/invalid/occurred_at_before_earliest_date.json",
}


def _unanchored(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: v.removesuffix("(?!\\n)") if k == "pattern" else _unanchored(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_unanchored(item) for item in node]
    return node


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "pattern"] + [
            p for v in node.values() for p in _patterns(v)
        ]
    if isinstance(node, list):
        return [p for item in node for p in _patterns(item)]
    return []


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("contracts") / "out"
    written = export_contracts(directory, topic_prefix="lab7.")
    assert [path.name for path in written] == [
        "enrollment_v1.schema.json",
        "session_v1.schema.json",
        "assay_v1.schema.json",
        "assessment_v1.schema.json",
        TOPICS_FILE,
    ]
    return directory


def _schema(directory: Path, model: type[EventBase]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((directory / schema_file_name(model)).read_text())
    return document


@functools.cache
def _checker(directory: Path, model: type[EventBase]) -> Any:
    schema = _schema(directory, model)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("model", MODELS, ids=[m.SCHEMA for m in MODELS])
def test_schema_is_generated_from_the_model(exported: Path, model: type[EventBase]) -> None:
    schema = _schema(exported, model)
    generated = model.model_json_schema(by_alias=True, mode="validation")
    assert schema == event_json_schema(model)
    # The model's own schema, but for patterns made to refuse a final newline in Python's
    # re too (its `$` matches before one; ECMA-262's and the platform's do not).
    shown = {k: v for k, v in schema.items() if k not in ("$schema", "$comment", "title")}
    assert _unanchored(shown) == {k: v for k, v in generated.items() if k != "title"}
    assert all(p.endswith("$(?!\\n)") for p in _patterns(shown)), _patterns(shown)
    assert schema["$schema"] == JSON_SCHEMA_DIALECT
    assert schema["title"] == model.SCHEMA
    assert schema["additionalProperties"] is False
    assert schema["properties"]["schema"]["const"] == model.SCHEMA
    assert "schema_" not in schema["properties"]
    assert set(schema["required"]) == {
        field.alias or name for name, field in model.model_fields.items() if field.is_required()
    }


def test_cross_field_rules_come_from_the_same_tables(exported: Path) -> None:
    rules = _schema(exported, AssayV1)["allOf"]
    assay = [c for c in rules if "unit" in c["then"]["properties"]]
    assert [c["if"]["properties"]["analyte"]["const"] for c in assay] == list(ANALYTE_UNITS)
    assert [c["then"]["properties"]["unit"]["enum"] for c in assay] == [
        list(units) for units in ANALYTE_UNITS.values()
    ]
    tops = [c for c in rules if "value" in c["then"]["properties"]]
    assert len(tops) + len(assay) == len(rules)
    assert {
        (c["if"]["properties"]["analyte"]["const"], c["if"]["properties"]["unit"]["const"]): c[
            "then"
        ]["properties"]["value"]["maximum"]
        for c in tops
    } == {(a, u): top for a, units in CANONICAL_MAX.items() for u, top in units.items()}
    assessment = _schema(exported, AssessmentV1)["allOf"]
    assert {
        c["if"]["properties"]["instrument"]["const"]: c["then"]["properties"]["score"]["maximum"]
        for c in assessment
    } == INSTRUMENT_MAX


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.valid], ids=lambda e: e.id)
def test_valid_examples_pass_their_schema(exported: Path, example: Example) -> None:
    model = next(m for m in MODELS if example.payload["schema"] == m.SCHEMA)
    errors = [error.message for error in _checker(exported, model).iter_errors(example.payload)]
    assert errors == []


INVALID_FIELD = [e for e in EXAMPLES if e.reason == "invalid_field"]


@pytest.mark.parametrize("example", INVALID_FIELD, ids=lambda e: e.id)
def test_invalid_field_examples_fail_their_schema(exported: Path, example: Example) -> None:
    model = next(m for m in MODELS if schema_file_name(m).startswith(example.version + "."))
    errors = list(_checker(exported, model).iter_errors(example.payload))
    if example.id in NOT_EXPRESSIBLE:
        assert errors == [], f"{example.id} is expressible now: take it off NOT_EXPRESSIBLE"
    else:
        assert errors, f"{example.id} ({example.description}) passes the JSON Schema"


def test_finiteness_is_listed_beside_the_schemas(exported: Path) -> None:
    """The jsonschema package takes infinity for an assay's value; the platform does not,
    so the rule is listed where sites read what the schemas leave out."""
    from contracts.export import OUT_OF_JSON_SCHEMA

    payload = event(Topic.ASSAY, value=float("inf"))
    assert _checker(exported, AssayV1).is_valid(payload)
    listed = json.loads((exported / TOPICS_FILE).read_text())["not_in_json_schema"]
    assert listed == OUT_OF_JSON_SCHEMA
    assert any("finite" in rule and "1e400" in rule for rule in listed), listed


def test_not_expressible_lists_only_examples_that_exist() -> None:
    assert {e.id for e in INVALID_FIELD} >= NOT_EXPRESSIBLE


@pytest.mark.parametrize("analyte", list(ANALYTE_UNITS))
def test_schema_and_validator_agree_on_units(exported: Path, analyte: str) -> None:
    checker = _checker(exported, AssayV1)
    for unit in ("pg/mL", "ng/mL", "ug/dL", "mg/L", "nmol/L"):
        payload = event(Topic.ASSAY, analyte=analyte, unit=unit)
        by_schema = checker.is_valid(payload)
        by_validator = isinstance(send(payload, Topic.ASSAY), Accepted)
        assert by_schema == by_validator == (unit in ANALYTE_UNITS[analyte]), (analyte, unit)


@pytest.mark.parametrize("analyte", list(ANALYTE_UNITS))
def test_schema_and_validator_agree_on_values_too_large_for_the_canonical_unit(
    exported: Path, analyte: str
) -> None:
    checker = _checker(exported, AssayV1)
    for unit, factor in ANALYTE_UNITS[analyte].items():
        top = CANONICAL_MAX[analyte].get(unit, 1.7976931348623157e308)
        for value in (top, math.nextafter(top, math.inf), 1.7976931348623157e308):
            if math.isinf(value):
                continue  # (Python's jsonschema takes infinity: not_in_json_schema)
            payload = event(Topic.ASSAY, analyte=analyte, unit=unit, value=value)
            by_validator = isinstance(send(payload, Topic.ASSAY), Accepted)
            assert checker.is_valid(payload) == by_validator == math.isfinite(value * factor)


@pytest.mark.parametrize(("instrument", "top"), list(INSTRUMENT_MAX.items()))
def test_schema_and_validator_agree_on_scores(exported: Path, instrument: str, top: int) -> None:
    checker = _checker(exported, AssessmentV1)
    for score in (-1, 0, top, top + 1):
        payload = event(Topic.ASSESSMENT, instrument=instrument, score=score)
        by_validator = isinstance(send(payload, Topic.ASSESSMENT), Accepted)
        assert checker.is_valid(payload) == by_validator == (0 <= score <= top)


def test_schema_and_validator_agree_on_status_rules(exported: Path) -> None:
    from contracts import EnrollmentV1, SessionV1

    enrollment, session = _checker(exported, EnrollmentV1), _checker(exported, SessionV1)
    cases = [
        (enrollment, Topic.ENROLLMENT, {"status": status, "modality": arm, "reason": reason})
        for status in ("screened", "consented", "randomized", "withdrawn", "completed")
        for arm in (None, "control")
        for reason in (None, "other")
    ] + [
        (session, Topic.SESSION, {"status": status, "duration_min": duration})
        for status in ("attended", "missed", "cancelled")
        for duration in (None, 30)
    ]
    for checker, topic, changes in cases:
        payload = event(topic, **changes)
        by_validator = isinstance(send(payload, topic), Accepted)
        assert checker.is_valid(payload) == by_validator, changes


def test_the_exported_time_pattern_takes_every_year_datetime_holds() -> None:
    """Years 0001..9999, leap days as the proleptic Gregorian calendar has them (the
    platform's ``datetime``); year 0 and five-digit years are no time."""
    exact, loose = re.compile(OCCURRED_AT_EXACT_PATTERN), re.compile(OCCURRED_AT_PATTERN)
    for year in range(1, 10_000):
        for day in ("01-01", "02-28", "02-29", "12-31"):
            written = f"{year:04d}-{day}T00:00Z"
            real = day != "02-29" or calendar.isleap(year)
            assert bool(exact.fullmatch(written)) == real, written
            assert loose.fullmatch(written), written
    for written in ("0000-01-01T00:00Z", "10000-01-01T00:00Z", "999-01-01T00:00Z"):
        assert not exact.fullmatch(written) and not loose.fullmatch(written), written


@pytest.mark.parametrize(
    "written",
    ["9999-12-31T23:59:59-12:00", "9999-01-01T00:00:00+14:00", "0001-01-01T00:30+01:00"],
)
def test_schema_takes_a_time_whose_verdict_is_the_clocks_or_the_registrys(
    exported: Path, written: str
) -> None:
    """A time of year 9999 is in the future, one of year 0001 before the earliest date:
    rules beyond JSON Schema (``not_in_json_schema``), so the schema takes both."""
    from contracts import SessionV1

    assert _checker(exported, SessionV1).is_valid(event(Topic.SESSION, occurred_at=written))


def test_topic_registry(exported: Path) -> None:
    registry = json.loads((exported / TOPICS_FILE).read_text())
    assert registry["topic_prefix"] == "lab7."
    assert registry["max_message_bytes"] == 65536
    topics = {entry["logical_name"]: entry for entry in registry["topics"]}
    assert set(topics) == {topic.value for topic in Topic}
    for topic in Topic:
        entry = topics[topic.value]
        assert entry["name"] == f"lab7.{topic.value}"
        assert entry["owner"] and entry["description"] and entry["key"]
        assert entry["compatibility"] in {"backward", "none"}
        # One rollup sees the whole network: its input has one partition.
        assert entry["partitions"] == (1 if topic is Topic.CONTRIBUTIONS else 6)
        if topic is Topic.VIEWS:  # the latest row per key is all a reader needs
            assert entry["config"]["cleanup.policy"] == "compact"
            continue
        assert entry["config"]["cleanup.policy"] == "delete"
        assert int(entry["config"]["retention.ms"]) >= 7 * 24 * 3600 * 1000
        for schema in entry["schemas"]:
            assert (exported / schema["json_schema"]).is_file()
    for topic, models in EVENT_MODELS.items():
        entry = topics[topic.value]
        assert [s["schema"] for s in entry["schemas"]] == [m.SCHEMA for m in models]
        assert entry["key"].startswith("participant_id")
        assert entry["compatibility"] == "backward"
        # Over the contract's limit: too-large messages reach the validator and get a reason.
        assert int(entry["config"]["max.message.bytes"]) > 65536
    assert topics["exnet.deadletter"]["schemas"] == []
    assert "exnet-reason" in topics["exnet.deadletter"]["description"]


def test_catalog_covers_every_topic_once() -> None:
    assert sorted(spec.topic for spec in TOPICS) == sorted(Topic)
    assert topic_spec(Topic.SESSION).schemas == ("session/1",)


def test_catalog_config_is_what_init_creates() -> None:
    from exnet.admin import topic_configs

    created = topic_configs(load_settings(topic_prefix="p."))
    for spec in TOPICS:
        recommended = dict(spec.config)
        for name, value in created[f"p.{spec.topic.value}"].items():
            assert recommended.get(name) == value, (spec.topic, name)


def test_export_into_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="cannot write the contracts to"):
        export_contracts(blocker / "out")


def test_cli_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXNET_TOPIC_PREFIX", "cli.")
    app = typer.Typer()
    contracts_cli.register(app)
    result = CliRunner().invoke(app, ["contracts", "export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert names == sorted([*(schema_file_name(m) for m in MODELS), TOPICS_FILE])
    assert str(tmp_path / "out" / TOPICS_FILE) in result.output
    registry = json.loads((tmp_path / "out" / TOPICS_FILE).read_text())
    assert registry["topics"][0]["name"] == "cli.exnet.enrollment"
