"""What sites and operators receive: each event version's JSON Schema and the topic registry.

Everything here is generated from the models and the catalog, never written by
hand: ``<type>_v<major>.schema.json`` from ``model_json_schema`` (the rules that
span fields come from each model's ``json_schema_extra``, built from the same
tables its validators use), and ``topics.json`` from
:data:`contracts.catalog.TOPICS` with the physical names a deployment gives them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from contracts.catalog import TOPICS
from contracts.envelope import EventBase
from contracts.errors import UserError
from contracts.topics import topic_name
from contracts.validation import EVENT_MODELS, MAX_MESSAGE_BYTES, SCHEMAS

__all__ = [
    "JSON_SCHEMA_DIALECT",
    "OUT_OF_JSON_SCHEMA",
    "TOPICS_FILE",
    "event_json_schema",
    "export_contracts",
    "schema_file_name",
    "topic_registry",
]

#: The JSON Schema dialect pydantic generates.
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
#: What the platform checks that JSON Schema cannot express (SPEC §1), listed in
#: ``topics.json`` beside the schemas: a site's validator that accepts a message has
#: not checked these.
OUT_OF_JSON_SCHEMA: Final = [
    f"a message is at most {MAX_MESSAGE_BYTES // 1024} KiB ({MAX_MESSAGE_BYTES} bytes)",
    "the message is I-JSON (RFC 7493): no repeated member names, no lone surrogates, no "
    "noncharacters (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF), no byte-order mark, nothing after the object",
    "every number is finite: a number beyond a double's range (1e400) reads as infinity "
    "in some JSON readers (Python's json), which JSON Schema's number takes where no "
    "maximum bounds it (an assay's value)",
    "the message key is the event's participant_id, as UTF-8 bytes",
    "node_id and site_id are registered, and the site is under that node",
    "occurred_at is not before the registry's earliest_date (default 2000-01-01)",
    "occurred_at is at most 5 minutes after the platform's processing time",
    "an event_id already accepted with other content is a conflicting_duplicate",
]
#: The topic registry's file name in the export directory.
TOPICS_FILE: Final = "topics.json"


def schema_file_name(model: type[EventBase]) -> str:
    """``session_v1.schema.json`` for ``session/1``."""
    event_type, major = model.SCHEMA.split("/")
    return f"{event_type}_v{major}.schema.json"


def _anchored_at_the_end(node: Any) -> Any:
    """``node`` with every ``pattern`` that ends in ``$`` also refusing a final newline.

    ``$`` means the end of the value to ECMA-262 (JSON Schema's regular
    expressions, ajv) and to the platform, but Python's ``re`` (the
    ``jsonschema`` package) also lets it match before a final newline;
    ``(?!\n)`` makes both read the pattern as the platform does.
    """
    if isinstance(node, dict):
        return {
            key: (
                value + "(?!\\n)"
                if key == "pattern" and isinstance(value, str) and value.endswith("$")
                else _anchored_at_the_end(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_anchored_at_the_end(item) for item in node]
    return node


def event_json_schema(model: type[EventBase]) -> dict[str, Any]:
    """The JSON Schema of one event version, as sites validate their messages with it."""
    schema = _anchored_at_the_end(model.model_json_schema(by_alias=True, mode="validation"))
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$comment": (
            f"Generated from contracts.{model.__name__} by `exnet contracts export`; "
            "do not edit. The message key is the event's participant_id; node_id and "
            "site_id must be registered; occurred_at may lie at most 5 minutes ahead and "
            "not before the registry's earliest_date (default 2000-01-01)."
        ),
        **schema,
        "title": model.SCHEMA,
    }


def topic_registry(
    *, topic_prefix: str, partitions: int, replication_factor: int | None
) -> dict[str, Any]:
    """The topic registry with a deployment's physical names and partitioning
    (``EXNET_TOPIC_PREFIX``, ``EXNET_PARTITIONS``, ``EXNET_REPLICATION_FACTOR``; a
    replication factor of None, written as null, is the cluster's brokers up to 3)."""
    files = {model.SCHEMA: schema_file_name(model) for _, model in SCHEMAS.values()}
    return {
        "topic_prefix": topic_prefix,
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "not_in_json_schema": OUT_OF_JSON_SCHEMA,
        "topics": [
            {
                "name": topic_name(spec.topic, topic_prefix),
                "logical_name": spec.topic.value,
                "owner": spec.owner,
                "schemas": [{"schema": s, "json_schema": files[s]} for s in spec.schemas],
                "key": spec.key,
                "compatibility": spec.compatibility,
                "partitions": spec.partitions or partitions,
                "replication_factor": replication_factor,
                "config": dict(spec.config),
                "description": spec.description,
            }
            for spec in TOPICS
        ],
    }


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_contracts(
    directory: Path,
    *,
    topic_prefix: str = "",
    partitions: int = 6,
    replication_factor: int | None = None,
) -> list[Path]:
    """Write every event version's JSON Schema and ``topics.json`` into ``directory``.

    Creates the directory if needed; overwrites earlier exports. Returns the files written.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for models in EVENT_MODELS.values():
            for model in models:
                path = directory / schema_file_name(model)
                _write_json(path, event_json_schema(model))
                written.append(path)
        path = directory / TOPICS_FILE
        _write_json(
            path,
            topic_registry(
                topic_prefix=topic_prefix,
                partitions=partitions,
                replication_factor=replication_factor,
            ),
        )
        written.append(path)
    except OSError as exc:
        raise UserError(f"cannot write the contracts to {directory}: {exc.strerror}") from None
    return written
