"""The compiled accepting path against pydantic, its reference.

The rule under test: whatever ``exnet_native`` accepts, pydantic accepts too,
into an identical instance (same field values, types, order, fields set, UTC
timestamps). It may decline what pydantic accepts only where it says it does
(strings written with escapes, repeated keys); everything else pydantic accepts,
it must accept too, or the fast path would quietly not be used (integers
beyond 64 bits, which pydantic reads into a float field, are declined too).

The messages: the example payloads, the benchmark's mixed load, and seeded
mutations of valid events (each field set to a battery of values and to
values at and across its bounds, timestamps of every shape, whole-message
variants).
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import random
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, ClassVar, Final, Literal

import exnet_native
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ConfigDict, Field, ValidationError, field_validator

from bench.validation import generate_messages
from exnet.contracts import (
    EVENT_MODELS,
    Accepted,
    EventBase,
    Origin,
    Rejected,
    Topic,
    Validator,
    native,
)
from exnet.contracts.native import NotCompilable, compile_model, field_specs
from exnet.contracts.validation import FUTURE_TOLERANCE, _decline

from .helpers import BASE, NOW, ORIGINS, REGISTRY, event, load_examples

MODELS: Final = [model for models in EVENT_MODELS.values() for model in models]
#: Compiled once: a model's native path is built per Validator in production.
COMPILED: Final = {model: compile_model(model) for model in MODELS}
PATHS: Final = {model: c.accept if c is not None else None for model, c in COMPILED.items()}


def test_the_extension_is_installed_and_compiles_every_event_model() -> None:
    # Not a skip: without the extension the validator is several times slower.
    assert native.AVAILABLE, "exnet_native is missing: run `make install`"
    assert all(PATHS.values()), [model.__name__ for model, path in PATHS.items() if not path]


# --- the comparison -------------------------------------------------------------------


def _state(event: EventBase) -> tuple[Any, ...]:
    """Everything an instance carries, with each value's type and exact repr (-0.0, tz)."""
    values = [(name, type(value), repr(value)) for name, value in event.__dict__.items()]
    return (
        type(event),
        values,
        event.__pydantic_fields_set__,
        type(event.__pydantic_fields_set__),
        event.__pydantic_extra__,
        event.__pydantic_private__,
        event.model_dump_json(),
    )


@dataclass(frozen=True)
class Case:
    model: type[EventBase]
    value: bytes
    #: The native path may leave this one to pydantic even if pydantic accepts it.
    may_decline: bool = False


@dataclass
class Tally:
    both: int = 0
    declined: int = 0
    rejected: int = 0


def _check(cases: list[Case]) -> Tally:
    tally = Tally()
    for case in cases:
        path = PATHS[case.model]
        assert path is not None
        try:
            reference: EventBase | None = case.model.__pydantic_validator__.validate_json(
                case.value
            )
        except ValidationError:
            reference = None
        got = path(case.value)
        if got is not None:
            assert reference is not None, f"native accepted what pydantic rejects: {case.value!r}"
            assert _state(got) == _state(reference), case.value
            assert got.occurred_at.tzinfo is UTC
            tally.both += 1
        elif reference is None:
            tally.rejected += 1
        else:
            # Anything written with an escape is pydantic's to read.
            escaped = b"\\" in case.value
            assert case.may_decline or escaped, (
                f"native declined what pydantic accepts: {case.value!r}"
            )
            tally.declined += 1
    return tally


# --- the messages ---------------------------------------------------------------------

EXAMPLES: Final = load_examples()
#: An example's ``version`` (its folder, ``session_v1``) -> its model.
BY_VERSION: Final = {f"{m.EVENT_TYPE}_v{m.SCHEMA.split('/')[1]}": m for m in MODELS}


def test_examples_agree() -> None:
    cases = [
        Case(BY_VERSION[example.version], example.value)
        for example in EXAMPLES
        if example.value is not None
    ]
    tally = _check(cases)
    valid = sum(1 for example in EXAMPLES if example.valid)
    # Every valid example is accepted natively (the future-timestamp and
    # key/site examples are valid documents too).
    assert tally.both >= valid
    assert tally.rejected > 0


def test_the_benchmark_load_agrees() -> None:
    model_of = {f"exnet.{model.EVENT_TYPE}": model for model in MODELS}
    cases = [
        Case(model_of[origin.topic], value)
        for value, _, origin in generate_messages(4_000, seed=3)
        if value is not None and origin.topic in model_of
    ]
    tally = _check(cases)
    assert tally.both > 3_500 and tally.rejected > 0


#: Values any field is set to.
ANY_FIELD: Final[list[Any]] = [
    None, True, False, 0, -1, 1, 7, 1.0, -0.0, 0.5, 2**53 + 1, 2**63, -(2**63) - 1,
    10**30, "", "x", "5", "A" * 65, "é", "\u0000", " N01", "N01\n", [], {}, [1],
]  # fmt: skip
#: Raw JSON number texts (json.dumps cannot write some of these).
NUMBER_TEXTS: Final = [
    "1e2", "1E2", "-0", "0.0", "1.5e1", "1e400", "-1e400", "0.1e-400", "12345678901234567890",
    "1.0000000000000002", "299.99999999999997", "300.00000000000006", "1e-7",
]  # fmt: skip


#: Integers beyond 64 bits (pydantic reads them into a float field; the native path declines).
BIG_TEXTS: Final = frozenset({"12345678901234567890"})


def _beyond_i64(value: Any) -> bool:
    return type(value) is int and not -(2**63) <= value < 2**63


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


def _field_values(model: type[EventBase], name: str, current: Any) -> Iterator[Any]:
    """Values across ``name``'s constraints: bounds and one step past them, each choice."""
    spec = next(spec for spec in field_specs(model)[0] if spec["alias"] == name)
    kind = spec["kind"]
    if kind == "literal":
        for choice in spec["expected"]:
            yield from (choice, choice.upper(), choice + " ")
    if kind in ("int", "float"):
        for bound in (spec.get("ge"), spec.get("le")):
            if bound is not None:
                for step in (-1, 0, 1, -0.001, 0.001):
                    yield bound + step
                    yield float(bound + step)
    if kind == "str" and isinstance(current, str):
        yield from (current.upper(), current.lower(), current + "0" * 60, current[:-1])
        for low in (spec.get("min_length"), spec.get("max_length")):
            if low is not None:
                yield from ("a" * (low - 1), "a" * low, "a" * (low + 1), "é" * low)


def _timestamps(rng: random.Random, count: int) -> Iterator[str]:
    yield from [
        "2025-01-01T00:00:00Z", "2024-02-29T23:59:59.999999-00:00", "2025-02-29T00:00Z",
        "2025-04-31T10:00Z", "2025-01-01T24:00:00Z", "2025-01-01T23:59:60Z",
        "1000-01-01T00:30+01:00", "9998-12-31T23:30-01:00", "9999-01-01T00:00Z",
        "0999-12-31T23:00Z", "2025-06-01 09:30+02:00", "2025-06-01T09:30:00.1234567891+05:45",
        "2025-06-01T09:30:00.+02:00", "2025-06-01T09:30:00", "2025-06-01",
        "2025-06-01T09:30Z\n", "2025-13-01T00:00Z", "2025-00-10T00:00Z", "2025-06-00T00:00Z",
        "2025-06-01T09:30+24:00", "2025-06-01T09:30+23:59", "2025-06-01T09:30-23:59",
        "2025-06-01t09:30Z", "2025-06-01T09:30z",
    ]  # fmt: skip
    for _ in range(count):
        fraction = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 10)))
        seconds = f":{rng.randint(0, 60):02d}" + (f".{fraction}" if fraction else "")
        offset = rng.choice(
            ["Z", f"{rng.choice('+-')}{rng.randint(0, 24):02d}:{rng.randint(0, 59):02d}"]
        )
        yield (
            f"{rng.randint(990, 9999):04d}-{rng.randint(1, 13):02d}-{rng.randint(1, 31):02d}"
            f"{rng.choice('T ')}{rng.randint(0, 24):02d}:{rng.randint(0, 59):02d}"
            f"{seconds if rng.random() < 0.8 else ''}{offset}"
        )


def _mutations(model: type[EventBase], base: dict[str, Any], rng: random.Random) -> Iterator[Case]:
    yield Case(model, _dumps(base))
    for name, current in base.items():
        rest = {key: value for key, value in base.items() if key != name}
        yield Case(model, _dumps(rest))
        values = itertools.chain(ANY_FIELD, _field_values(model, name, current))
        if name == "occurred_at":
            values = itertools.chain(values, _timestamps(rng, 150))
        for value in values:
            yield Case(model, _dumps({**base, name: value}), may_decline=_beyond_i64(value))
        for text in NUMBER_TEXTS:
            yield Case(model, _with_raw(base, name, text), may_decline=text in BIG_TEXTS)
    keys = list(base)
    shuffled = keys[:]
    rng.shuffle(shuffled)
    yield Case(model, _dumps({key: base[key] for key in reversed(keys)}))
    yield Case(model, _dumps({key: base[key] for key in shuffled}))
    yield Case(model, json.dumps(base, indent=2).encode())
    yield Case(model, b" \n" + _dumps(base) + b"\n\t ")
    yield Case(model, _dumps(base) + b"x")
    yield Case(model, _dumps(base) + b"{}")
    yield Case(model, b"\xef\xbb\xbf" + _dumps(base))
    yield Case(model, _dumps({**base, "extra": 1}))
    yield Case(model, _dumps({**base, "schema_": base["schema"]}))
    yield Case(model, b"[" + _dumps(base) + b"]")
    yield Case(model, b"{}")
    yield Case(model, _dumps(base)[:-1])
    body = _dumps(base)
    first = keys[1]
    # A repeated key, with the same and with another value.
    for again in (base[first], "0" if isinstance(base[first], str) else "x"):
        duplicate = body[:-1] + b", " + json.dumps(first).encode() + b": "
        yield Case(model, duplicate + json.dumps(again).encode() + b"}", may_decline=True)
    # Escapes in a key and in values (pydantic reads them; the native path declines).
    yield Case(model, body.replace(b'"schema"', b'"sch\\u0065ma"', 1), may_decline=True)
    event_id = base["event_id"].encode()
    escaped = event_id[:-1] + b"\\u00" + f"{event_id[-1]:02x}".encode()
    yield Case(model, body.replace(event_id, escaped, 1), may_decline=True)
    yield Case(model, body.replace(b'"N0', b'"\\u004e0', 1), may_decline=True)
    yield Case(model, body.replace(b'"N0', b'"\\N0', 1), may_decline=True)


def _with_raw(base: dict[str, Any], name: str, text: str) -> bytes:
    """``base`` with ``name`` set to the raw JSON ``text``."""
    marker = "\u2603raw\u2603"
    placeholder = json.dumps(marker, ensure_ascii=False).encode()
    return _dumps({**base, name: marker}).replace(placeholder, text.encode())


def _bases(model: type[EventBase]) -> list[dict[str, Any]]:
    topic = next(topic for topic, models in EVENT_MODELS.items() if model in models)
    documents = [BASE[topic]] if BASE[topic]["schema"] == model.SCHEMA else []
    documents += [
        example.payload
        for example in EXAMPLES
        if example.valid
        and BY_VERSION[example.version] is model
        and isinstance(example.payload, dict)
    ]
    return documents


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.SCHEMA)
def test_mutations_agree(model: type[EventBase]) -> None:
    rng = random.Random(20261128)
    cases = [case for base in _bases(model)[:6] for case in _mutations(model, base, rng)]
    tally = _check(cases)
    # The mutations hit both sides of the rules, not just one.
    assert tally.both > 100 and tally.rejected > 1_000, tally


def test_the_validator_gives_the_same_outcomes_with_and_without_it() -> None:
    with_native = Validator(REGISTRY, clock=lambda: NOW)
    without = Validator(REGISTRY, clock=lambda: NOW, use_native=False)
    assert all(contract.accept is not _decline for contract in with_native._contracts.values())
    assert all(contract.accept is _decline for contract in without._contracts.values())
    messages = generate_messages(3_000, seed=5)
    assert [with_native.validate_message(*m, now=NOW) for m in messages] == [
        without.validate_message(*m, now=NOW) for m in messages
    ]


# --- what the native path refuses to compile -------------------------------------------


class _Gt(EventBase):
    SCHEMA: ClassVar[str] = "gt/1"
    schema_: Literal["gt/1"] = Field(alias="schema")
    count: Annotated[int, Field(gt=0)]


class _FieldValidator(EventBase):
    SCHEMA: ClassVar[str] = "fv/1"
    schema_: Literal["fv/1"] = Field(alias="schema")
    label: str

    @field_validator("label")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class _Lax(EventBase):
    model_config = ConfigDict(strict=False)
    SCHEMA: ClassVar[str] = "lax/1"
    schema_: Literal["lax/1"] = Field(alias="schema")


@pytest.mark.parametrize("model", [_Gt, _FieldValidator, _Lax], ids=lambda m: m.__name__)
def test_a_schema_element_it_does_not_know_leaves_the_model_to_pydantic(
    model: type[EventBase], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(NotCompilable):
        field_specs(model)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert compile_model(model) is None
    assert f"{model.__name__} is validated by pydantic alone" in caplog.text


# --- the checks after the fields (key, site, time), compiled -----------------------------


def _both(registry: Any = REGISTRY) -> tuple[Validator, Validator]:
    return (
        Validator(registry, clock=lambda: NOW),
        Validator(registry, clock=lambda: NOW, use_native=False),
    )


def _message(topic: Topic, **changes: Any) -> tuple[bytes, bytes, Origin]:
    document = event(topic, **changes)
    return _dumps(document), document["participant_id"].encode(), ORIGINS[topic]


LIMIT: Final = NOW + FUTURE_TOLERANCE


@pytest.mark.parametrize(
    ("changes", "key", "now", "outcome"),
    [
        ({}, None, NOW, "accepted"),
        ({"occurred_at": LIMIT.isoformat()}, None, NOW, "accepted"),  # the boundary itself
        ({"occurred_at": (LIMIT + timedelta(microseconds=1)).isoformat()}, None, NOW, "future"),
        ({"occurred_at": LIMIT.astimezone(timezone(timedelta(hours=-7))).isoformat()}, None, NOW,
         "accepted"),
        ({}, b"P-0000000000", NOW, "key_mismatch"),
        ({}, b"", NOW, "key_mismatch"),
        ({"node_id": "N01", "site_id": "N02-S01"}, None, NOW, "unknown_site"),
        ({"site_id": "N09-S01", "node_id": "N09"}, None, NOW, "unknown_site"),
        # A processing time in another zone: left to the Python steps, same answer.
        ({}, None, NOW.astimezone(timezone(timedelta(hours=2))), "accepted"),
    ],
)  # fmt: skip
def test_the_compiled_checks_agree(
    changes: dict[str, Any], key: bytes | None, now: datetime, outcome: str
) -> None:
    compiled, reference = _both()
    for topic in BASE:
        value, own_key, origin = _message(topic, **changes)
        key_used = own_key if key is None else key
        got = compiled.validate_message(value, key_used, origin, now)
        assert got == reference.validate_message(value, key_used, origin, now)
        assert (got.reason.value if isinstance(got, Rejected) else "accepted") == (
            "future_timestamp" if outcome == "future" else outcome
        )
        answered = _compiled_path(compiled, origin).accept_message(value, key_used, origin, now)
        assert (answered is not None) == (outcome == "accepted" and now.tzinfo is UTC)
        assert compiled.validate_batch([(value, key_used, origin)], now) == [got]


def _compiled_path(validator: Validator, origin: Origin) -> Any:
    compiled = validator._contracts[origin.topic].compiled
    assert compiled is not None
    return compiled


def test_without_a_registry_the_site_is_not_checked_natively_either() -> None:
    compiled, reference = _both(None)
    for topic in BASE:
        value, key, origin = _message(topic, site_id="N09-S01", node_id="N09")
        got = compiled.validate_message(value, key, origin, NOW)
        assert isinstance(got, Accepted)
        assert got == reference.validate_message(value, key, origin, NOW)


def test_no_value_no_key_and_too_large_are_left_to_the_python_steps() -> None:
    compiled, reference = _both()
    value, key, origin = _message(Topic.SESSION)
    large = value[:-1] + b"," + b" " * 70_000 + b"}"
    for message in [(None, key), (value, None), (large, key)]:
        assert _compiled_path(compiled, origin).accept_message(*message, origin, NOW) is None
        assert compiled.validate_message(*message, origin, NOW) == reference.validate_message(
            *message, origin, NOW
        )


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.SCHEMA)
def test_byte_level_mutations_agree(model: type[EventBase]) -> None:
    """Random bytes inserted, replaced and deleted anywhere in valid messages: the
    native path may decline whatever it likes, but never accept what pydantic rejects."""
    rng = random.Random(f"bytes-{model.SCHEMA}")
    alphabet = b' \t\r\n"\\/:,{}[]-+.eE0123456789aeflnrstuTZ\x00\x1f\x7f\xc3\xa9\xff'
    cases = []
    for base in _bases(model)[:4]:
        body = bytearray(_dumps(base))
        for _ in range(1_500):
            mutated = bytearray(body)
            for _ in range(rng.choice((1, 1, 2, 3))):
                at = rng.randrange(len(mutated) + 1)
                action = rng.random()
                if action < 0.4 and at < len(mutated):
                    mutated[at] = rng.choice(alphabet)
                elif action < 0.7:
                    mutated[at:at] = bytes([rng.choice(alphabet)])
                elif at < len(mutated):
                    del mutated[at]
            cases.append(Case(model, bytes(mutated), may_decline=True))
    tally = _check(cases)
    assert tally.both > 100 and tally.rejected > 1_000, tally


# --- field patterns ---------------------------------------------------------------------

#: Every pattern a compiled model checks (occurred_at's has alternations: regex's).
FIELD_PATTERNS: Final = sorted(
    {
        spec["pattern"]
        for model in MODELS
        for spec in field_specs(model)[0]
        if spec.get("pattern") and spec["kind"] == "str"
    }
)
#: Patterns that take the run matcher or fall back to regex at its edges.
EDGE_PATTERNS: Final = [
    (r"^a?b$", "run"),
    (r"^[a-c]*-[a-c]{0,2}x?$", "run"),
    (r"^$", "run"),
    (r"(?i)^[a-f]{2,3}$", "run"),
    (r"^a+a$", "regex"),  # the run could give back a byte: regex
    (r"^[a-z]{1,3}[0-9a]{2}$", "regex"),
    (r"^[a-z]{1,3}b?[a-c]$", "regex"),  # what can follow includes what b? skips to
    (r"^\w+$", "regex"),  # not ASCII
    (r"^[^-]{2}$", "regex"),
    (r"^(ab)+$", "regex"),
    (r"^x|y$", "regex"),
    (r"(?m)^abc$", "regex"),
    (r"^abc", "regex"),
]


def test_every_identifier_pattern_takes_the_run_matcher() -> None:
    assert len(FIELD_PATTERNS) >= 5, FIELD_PATTERNS
    assert {p: exnet_native.Pattern(p).kind for p in FIELD_PATTERNS} == dict.fromkeys(
        FIELD_PATTERNS, "run"
    )
    assert [exnet_native.Pattern(p).kind for p, _ in EDGE_PATTERNS] == [
        kind for _, kind in EDGE_PATTERNS
    ]


def _near(text: str, rng: random.Random) -> Iterator[str]:
    """``text`` and strings one edit away from it, with characters from near and far."""
    alphabet = "aAfFgGzZ09P-_ .é\n\x00"
    yield text
    for at in range(len(text) + 1):
        yield text[:at] + rng.choice(alphabet) + text[at:]
        if at < len(text):
            yield text[:at] + text[at + 1 :]
            yield text[:at] + rng.choice(alphabet) + text[at + 1 :]
    yield text + "\n"
    yield text * 2


@pytest.mark.parametrize("pattern", FIELD_PATTERNS + [p for p, _ in EDGE_PATTERNS])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_patterns_match_as_the_regex_crate_does(pattern: str, data: st.DataObject) -> None:
    """Strings in the pattern's language (drawn by hypothesis from the pattern) and
    one edit away from it: the run matcher answers as pydantic-core's engine does."""
    compiled = exnet_native.Pattern(pattern)
    text = data.draw(
        st.from_regex(pattern.replace("$", r"\Z"), alphabet=st.characters(codec="utf-8"))
    )
    rng = random.Random(text)
    for candidate in _near(text, rng):
        assert compiled.is_match(candidate) == compiled.regex_is_match(candidate), (
            pattern,
            candidate,
        )


def test_a_validator_is_collected_once_dropped() -> None:
    """Its ``validate_message`` is the router's, whose fallback is the validator's
    own method: a cycle through the extension that the collector must see."""
    validator = Validator(REGISTRY)
    assert type(validator.validate_message).__name__ == "builtin_function_or_method"
    gone = weakref.ref(validator)
    del validator
    gc.collect()
    assert gone() is None
