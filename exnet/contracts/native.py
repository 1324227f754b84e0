"""The compiled accepting path: each event model's core schema, read into ``exnet_native``.

pydantic-core spends most of the validation stage's time on the bookkeeping
it does per field, whatever the field (see ``docs/architecture.md``). About
95% of messages are valid, so the stream workers first try ``exnet_native``
(a Rust extension in ``native/``, built by ``make install``): it reads the
one JSON shape an event has (a flat object of plain strings, numbers,
booleans and nulls), checks patterns with the regex crate (the engine
pydantic-core itself uses), checks the model's ``RULES`` (the same data its
Python test reads), and builds the very instance pydantic would build. It
never rejects: whenever it cannot vouch for a message (an escape in a
string, a repeated key, anything out of the ordinary), it declines and
pydantic decides, so every rejection and its wording stay pydantic's.

The native model is *derived* from the pydantic model's core schema here, not
written by hand: a contract change reaches it without code, and a schema
element it does not know makes :func:`compile_model` give no native path for
that model at all (pydantic alone then), never a looser check. (A topic with
several versions side by side is left to pydantic's tagged union.) The
differential tests (``tests/contracts/test_native.py``) hold the two to the
same answer over the examples, the benchmark's load, field-level mutations and
random byte-level mutations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from exnet.contracts.envelope import (
    NATIVE_KIND,
    AtMostPer,
    EventBase,
    NullUnless,
    OneOfPer,
    RequiredWhen,
    Rule,
)

__all__ = ["AVAILABLE", "CompiledModel", "NotCompilable", "compile_model", "field_specs", "router"]

log = logging.getLogger(__name__)

try:
    import exnet_native
except ImportError:  # pragma: no cover  # `make install` builds it; the tests require it
    exnet_native = None  # type: ignore[assignment]

#: Whether the extension is installed.
AVAILABLE: Final = exnet_native is not None

if TYPE_CHECKING:
    CompiledModel: TypeAlias = exnet_native.Model
else:
    CompiledModel: TypeAlias = Any

#: The models' Python test of their ``RULES``, which the native path replaces.
_RULES_TEST: Final = EventBase.__pydantic_decorators__.model_validators["_rules"].func

#: Keys of a field's schema node that need no handling (documentation, serialisation).
_IGNORED: Final = frozenset({"type", "metadata", "serialization", "ref"})


class NotCompilable(Exception):
    """The model uses a schema element the native path does not implement."""


def compile_model(
    model: type[EventBase], checks: Mapping[str, Any] | None = None
) -> CompiledModel | None:
    """``model``'s native accepting path, or None when the extension is missing or
    cannot express the model. ``checks``: what ``accept_message`` checks after the
    fields (see the stub, ``native/exnet_native.pyi``)."""
    if exnet_native is None:
        return None
    try:
        fields, after, rules = field_specs(model)
    except NotCompilable as exc:
        log.warning("%s is validated by pydantic alone: %s", model.__name__, exc)
        return None
    return exnet_native.Model(model, fields, after, dict(checks) if checks else None, rules)


def router(
    models: Mapping[str, CompiledModel],
    fallback: Callable[..., Any],
    clock: Callable[[], Any],
) -> exnet_native.Router | None:
    """One call per message over the topics' compiled paths (physical topic name ->
    model); ``fallback(value, key, origin, now, event)`` decides every message
    they do not accept. None when the extension is missing."""
    if exnet_native is None:
        return None
    return exnet_native.Router(dict(models), fallback, clock)


def field_specs(
    model: type[EventBase],
) -> tuple[list[dict[str, Any]], list[Any], list[dict[str, Any]]]:
    """The native model's description: one dict per field, the after-validators
    to call, and the rules that span fields (``model.RULES``, checked natively
    in place of :meth:`EventBase._rules`, their Python test)."""
    schema: Mapping[str, Any] = model.__pydantic_core_schema__
    after: list[Any] = []
    rules: list[dict[str, Any]] = []
    while schema["type"] == "function-after":
        function = schema["function"]
        if function["type"] != "no-info":
            raise NotCompilable("an after-validator that takes validation info")
        if function["function"] is _RULES_TEST:
            rules = [_rule(rule) for rule in model.RULES]
        else:
            after.append(function["function"])
        schema = schema["schema"]
    after.reverse()  # the innermost runs first
    _expect(schema, "model")
    if schema["cls"] is not model or schema.get("custom_init") or schema.get("root_model"):
        raise NotCompilable("a model with a custom __init__ or a root model")
    if schema.get("post_init"):
        raise NotCompilable("a model with model_post_init")
    config = schema.get("config", {})
    wanted = {"strict": True, "extra_fields_behavior": "forbid", "validate_by_name": False}
    for key, value in wanted.items():
        if config.get(key) != value:
            raise NotCompilable(f"config {key}={config.get(key)!r} (needs {value!r})")
    if config.get("validate_by_alias") is False or config.get("allow_inf_nan"):
        raise NotCompilable("config that reads fields by name or allows inf/nan")
    fields_schema = schema["schema"]
    _expect(fields_schema, "model-fields")
    if fields_schema.get("computed_fields") or fields_schema.get("extras_schema"):
        raise NotCompilable("computed fields or an extras schema")
    fields = [_field(name, field) for name, field in fields_schema["fields"].items()]
    return fields, after, rules


def _rule(rule: Rule) -> dict[str, Any]:
    match rule:
        case RequiredWhen(field, when, value):
            return {"kind": "required_when", "field": field, "when": when, "value": value}
        case NullUnless(field, when, value):
            return {"kind": "null_unless", "field": field, "when": when, "value": value}
        case OneOfPer(field, by, allowed):
            return {"kind": "one_of_per", "field": field, "by": by, "table": allowed}
        case AtMostPer(field, by, top):
            return {"kind": "at_most_per", "field": field, "by": by, "table": top}
    raise NotCompilable(f"a rule of kind {type(rule).__name__}")


def _field(name: str, field: Mapping[str, Any]) -> dict[str, Any]:
    _expect(field, "model-field")
    _only(field, {"schema", "validation_alias", "serialization_alias"}, name)
    alias = field.get("validation_alias", name)
    if not isinstance(alias, str):
        raise NotCompilable(f"{name}: alias choices or paths")
    spec: dict[str, Any] = {"name": name, "alias": alias}
    schema = field["schema"]
    if schema["type"] == "default":
        _only(schema, {"schema", "default"}, name)
        if "default" not in schema:
            raise NotCompilable(f"{name}: a default factory")
        spec["default"] = schema["default"]
        schema = schema["schema"]
    if schema["type"] == "nullable":
        _only(schema, {"schema"}, name)
        spec["nullable"] = True
        schema = schema["schema"]
    spec.update(_kind(name, schema))
    return spec


def _kind(name: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    native = schema.get("metadata", {}).get(NATIVE_KIND)
    if native is not None:
        return dict(native)
    kind = schema["type"]
    if schema.get("strict") is False:
        raise NotCompilable(f"{name}: a lax field in a strict model")
    if kind == "str":
        _only(schema, {"pattern", "to_lower", "min_length", "max_length", "strict"}, name)
        return {
            "kind": "str",
            **_constraints(schema, "pattern", "to_lower", "min_length", "max_length"),
        }
    if kind == "literal":
        _only(schema, {"expected"}, name)
        if not all(type(value) is str for value in schema["expected"]):
            raise NotCompilable(f"{name}: a literal that is not a string")
        return {"kind": "literal", "expected": list(schema["expected"])}
    if kind == "int":
        _only(schema, {"ge", "le", "strict"}, name)
        bounds = _constraints(schema, "ge", "le")
        if not all(type(bound) is int for bound in bounds.values()):
            raise NotCompilable(f"{name}: an int bound that is not an int")
        return {"kind": "int", **bounds}
    if kind == "float":
        _only(schema, {"ge", "le", "strict"}, name)
        bounds = _constraints(schema, "ge", "le")
        if not all(type(bound) in (int, float) for bound in bounds.values()):
            raise NotCompilable(f"{name}: a float bound that is not a number")
        return {"kind": "float", **{key: float(bound) for key, bound in bounds.items()}}
    if kind == "bool":
        _only(schema, {"strict"}, name)
        return {"kind": "bool"}
    raise NotCompilable(f"{name}: a {kind!r} schema")


def _constraints(schema: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: schema[key] for key in keys if schema.get(key) is not None}


def _only(schema: Mapping[str, Any], allowed: set[str], name: str) -> None:
    unknown = set(schema) - allowed - _IGNORED
    if unknown:
        raise NotCompilable(f"{name}: {schema['type']} schema with {sorted(unknown)}")


def _expect(schema: Mapping[str, Any], kind: str) -> None:
    if schema["type"] != kind:
        raise NotCompilable(f"a {schema['type']!r} schema where a {kind!r} was expected")
