"""The exported JSON Schemas, applied by ajv as a site's pre-check, reach the platform's verdict.

SPEC §1: a standard validator applying the export must reach the platform's
verdict on every field rule. ajv (draft 2020-12, strict mode, ajv-formats;
``tests/contracts/ajv``, installed by ``make test``) reads every example and a
generated set of field mutations (every field set to a battery of values, at
and one past its bounds, numbers and times in every spelling, whole messages
formatted otherwise), and its verdict and failing field paths must equal the
validator's on every input.

Out of JSON Schema's reach, and so not compared (``topics.json`` lists them
beside the schemas): the message's size, key and I-JSON wire rules (repeated
member names, lone surrogates, a byte-order mark, nesting depth: JSON.parse
reads past them), the registry (``unknown_site``, the registry's
``earliest_date``) and processing time (``future_timestamp``). Each input where
only those part the two is counted, and the counts are checked too, so that
the comparison cannot quietly shrink to nothing.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from contracts import ANALYTE_UNITS, Rejected, Topic
from contracts.export import OUT_OF_JSON_SCHEMA, TOPICS_FILE, export_contracts, schema_file_name
from contracts.units import CANONICAL_MAX
from contracts.validation import EVENT_MODELS

from .helpers import NOW, ORIGINS, load_examples
from .test_mutations import (
    CONTRACTS,
    VALIDATOR,
    bases,
    dumps,
    field_mutations,
    key_of,
    message_variants,
    with_raw,
)

AJV: Final = Path(__file__).parent / "ajv"
#: The reasons a JSON Schema can give: a field rule failed (``schema`` included).
SCHEMA_REASONS: Final = frozenset({"invalid_field", "unknown_schema"})
#: The issue types whose rules lie beyond JSON Schema (SPEC §1: the registry).
REGISTRY_TYPES: Final = frozenset({"before_earliest_date"})


@dataclass(frozen=True)
class Case:
    topic: Topic
    text: str
    value: bytes


@dataclass(frozen=True)
class Verdict:
    valid: bool
    paths: tuple[str, ...]


def run_ajv(schemas: Path, cases: list[Case]) -> list[tuple[bool, Verdict]]:
    """ajv's verdict on each case, as (the text was JSON, verdict)."""
    node = shutil.which("node")
    assert node is not None, "Node.js is not on PATH: the ajv check needs it (make test)"
    assert (AJV / "node_modules" / "ajv").is_dir(), (
        f"ajv is not installed in {AJV}: run `make test` (it runs npm ci there)"
    )
    file_of = {topic: schema_file_name(models[0]) for topic, models in EVENT_MODELS.items()}
    lines = "".join(
        json.dumps({"schema": file_of[case.topic], "text": case.text}) + "\n" for case in cases
    )
    done = subprocess.run(
        [node, str(AJV / "check.mjs"), str(schemas)],
        input=lines,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(cases)
    return [(a["json"], Verdict(a["valid"], tuple(a["paths"]))) for a in answers]


def platform_verdict(case: Case) -> tuple[str, Verdict | None]:
    """The validator's verdict as far as JSON Schema reaches: (outcome, verdict or None).

    ``outcome`` is ``accepted``, a reason, or ``registry``; the verdict is None
    when the message is out of JSON Schema's reach.
    """
    outcome = VALIDATOR.validate_message(
        case.value, key_of(case.value, {"participant_id": "P-0000000000"}), ORIGINS[case.topic], NOW
    )
    if not isinstance(outcome, Rejected):
        return "accepted", Verdict(True, ())
    reason = outcome.reason.value
    if [issue.type for issue in outcome.issues] == ["not_an_object"]:
        return reason, Verdict(False, ("",))  # JSON, but not an object: `type: object`
    if reason not in SCHEMA_REASONS:
        # Rules on the key, the registry and processing time run only after every
        # field rule passed: a JSON Schema validator must find the message valid.
        return reason, None if reason in {"too_large", "malformed_json"} else Verdict(True, ())
    paths = {issue.path for issue in outcome.issues if issue.type not in REGISTRY_TYPES}
    if not paths:
        return "registry", Verdict(True, ())
    return reason, Verdict(False, tuple(sorted(paths)))


def _another_topics_event(case: Case) -> bool:
    """Whether the message names another known event type's schema than its topic's."""
    document = json.loads(case.text, parse_int=float)  # no digit limit (9 * 5000: JSON)
    schema = document.get("schema") if isinstance(document, dict) else None
    own = EVENT_MODELS[case.topic][0].EVENT_TYPE
    types = {model.EVENT_TYPE for models in EVENT_MODELS.values() for model in models}
    return isinstance(schema, str) and schema.partition("/")[0] in types - {own}


def cases() -> Iterator[Case]:
    """Every example, and each topic's field mutations and message variants."""
    for example in load_examples():
        if example.topic is not None:
            yield from _case(example.topic, example.value)
    for topic in CONTRACTS:
        rng = random.Random(f"ajv-{topic}")
        for base in bases(topic, 4):
            for value in field_mutations(topic, base, rng):
                yield from _case(topic, value)
            for value in message_variants(base, rng):
                yield from _case(topic, value)
            yield from _case(topic, dumps(base))


def _case(topic: Topic, value: bytes) -> Iterator[Case]:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return  # no site's tool reads it as text; the validator's malformed_json is tested apart
    yield Case(topic, text, value)


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("contracts")
    export_contracts(directory)
    return directory


def test_ajv_reaches_the_platforms_verdict_on_every_field_rule(schemas: Path) -> None:
    all_cases = list(cases())
    answers = run_ajv(schemas, all_cases)
    tally: Counter[str] = Counter()
    disagreements: list[str] = []
    for case, (is_json, ajv) in zip(all_cases, answers, strict=True):
        outcome, platform = platform_verdict(case)
        tally[outcome] += 1
        if outcome == "too_large":
            tally["out of reach"] += 1
            continue
        if outcome == "malformed_json" and not is_json:
            continue  # neither reads it as JSON
        if not is_json:
            disagreements.append(f"{case.text!r}: not JSON to ajv, {outcome} to the platform")
            continue
        if platform is None:
            tally["out of reach"] += 1  # I-JSON rules JSON.parse reads past, or the size
            continue
        if _another_topics_event(case) and platform.paths == ("schema",) and "schema" in ajv.paths:
            # Another topic's event (assay/1 on exnet.session): the platform names its
            # schema only; a site's tool applies the schema the event names, not the topic's.
            tally["another topic's event"] += 1
            continue
        if ajv != platform:
            disagreements.append(f"{case.text}\n    ajv: {ajv}\n    exnet ({outcome}): {platform}")
    assert not disagreements, f"{len(disagreements)} disagreements:\n" + "\n".join(
        disagreements[:20]
    )
    # The comparison covers both sides of every kind of rule, many times over.
    assert tally["accepted"] > 1_000, tally
    assert tally["invalid_field"] > 10_000, tally
    assert tally["unknown_schema"] > 50, tally
    assert tally["registry"] + tally["unknown_site"] + tally["future_timestamp"] > 100, tally
    assert tally["out of reach"] < 0.01 * len(all_cases), tally


ISSUE_CASES: Final = [
    # (topic, field, raw JSON value, valid): the bad-input issue's case 9, one by one.
    (Topic.SESSION, "occurred_at", '"2025-03-19T07:05Z"', True),
    (Topic.SESSION, "occurred_at", '"2016-12-31T23:59:60Z"', False),
    # Years 0001 and 9999, also where a time has no UTC equivalent in Python's datetime:
    # the registry's earliest date and the clock judge them, not a field rule.
    (Topic.SESSION, "occurred_at", '"9999-12-31T23:59:59Z"', True),
    (Topic.SESSION, "occurred_at", '"9999-12-31T23:59:59-12:00"', True),
    (Topic.SESSION, "occurred_at", '"0001-01-01T00:30+01:00"', True),
    (Topic.SESSION, "occurred_at", '"0400-02-29T00:00Z"', True),
    (Topic.SESSION, "occurred_at", '"0100-02-29T00:00Z"', False),
    (Topic.SESSION, "occurred_at", '"2025-03-19T07:05-00:00"', False),  # offset unknown
    (Topic.SESSION, "occurred_at", '"2025-03-19T07:05-00:30"', True),
    (Topic.SESSION, "session_number", "12.0", True),
    (Topic.SESSION, "session_number", "1.2e1", True),
    (Topic.SESSION, "session_number", "12.5", False),
    (Topic.ASSESSMENT, "score", "3.0", True),
    (Topic.ENROLLMENT, "status", '"enrolled"', False),
]


@pytest.mark.parametrize(("topic", "name", "raw", "valid"), ISSUE_CASES)
def test_the_cases_that_parted_them(
    schemas: Path, topic: Topic, name: str, raw: str, valid: bool
) -> None:
    """Each case found by trying the export with ajv, with the right verdict on both sides."""
    value = with_raw(bases(topic, 1)[0], name, raw)
    case = Case(topic, value.decode(), value)
    [(is_json, ajv)] = run_ajv(schemas, [case])
    outcome, platform = platform_verdict(case)
    assert is_json
    assert platform == Verdict(valid, () if valid else (name,))
    assert ajv == platform, outcome


def test_a_value_too_large_for_the_canonical_unit(schemas: Path) -> None:
    """Each unit's largest value that converts, and the next double, against ajv (its
    ``maximum``, read by JSON.parse as the same double); and the largest double."""
    base = bases(Topic.ASSAY, 1)[0]
    cases = [
        Case(Topic.ASSAY, text.decode(), text)
        for analyte, units in ANALYTE_UNITS.items()
        for unit in units
        for value in {
            CANONICAL_MAX[analyte].get(unit, 1e308),
            math.nextafter(CANONICAL_MAX[analyte].get(unit, 1e308), math.inf),
            1.7976931348623157e308,
        }
        for text in [dumps({**base, "analyte": analyte, "unit": unit, "value": value})]
    ]
    verdicts = [platform_verdict(case)[1] for case in cases]
    assert [ajv for _, ajv in run_ajv(schemas, cases)] == verdicts
    assert Verdict(False, ("value",)) in verdicts and Verdict(True, ()) in verdicts


def test_every_schema_compiles_in_strict_mode(schemas: Path) -> None:
    """check.mjs exits 1 when a schema does not compile; one case per schema proves it ran."""
    answers = run_ajv(schemas, [Case(t, "{}", b"{}") for t in EVENT_MODELS])
    assert all(is_json and not verdict.valid for is_json, verdict in answers)


def test_the_rules_beyond_json_schema_are_listed_beside_it(schemas: Path) -> None:
    listed = json.loads((schemas / TOPICS_FILE).read_text())["not_in_json_schema"]
    assert listed == OUT_OF_JSON_SCHEMA
    text = " ".join(listed)
    for rule in (
        "64 KiB", "repeated member", "finite", "key", "registered", "earliest_date", "5 minutes"
    ):  # fmt: skip
        assert rule in text, rule
