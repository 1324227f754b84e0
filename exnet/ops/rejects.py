"""``exnet rejects``: the rejected messages a site coordinator has to fix.

What callers may rely on:

- :func:`find_rejects` reads ``rejected_events FINAL`` (one row per source
  message), newest first, filtered by node, site, reason and a
  ``[since, until)`` window on ``rejected_at``; it also counts every match, so a
  limited listing says how many it left out.
- Each :class:`RejectedMessage` carries the failing field paths and messages
  of its ``detail`` JSON (``{"reason", "message", "errors": [{"path", "type",
  "message"}]}``); a detail that cannot be read becomes one issue with the
  row's one-line ``message``.
- :func:`write_worklist` writes the per-site work list as CSV: one row per
  failing field (:data:`WORKLIST_COLUMNS`), sorted by site, then time, then
  source position, with the payload as analysts may read it (identifiers
  redacted, SPEC §4) or, with :func:`with_originals`, the original bytes read
  from the dead-letter topic (invalid UTF-8 replaced by U+FFFD).
- To fix a rejected event, a site publishes the corrected record again with its
  ``event_id`` (a message rejected before the duplicate check takes none away):
  it is validated and accepted like any new event. A ``conflicting_duplicate``'s
  correction, and a record whose ``event_id`` was what failed, take a new one.
"""

from __future__ import annotations

import csv
import difflib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TextIO

import orjson
from rich.console import Group, RenderableType
from rich.text import Text

from contracts.errors import UserError
from contracts.reasons import Reason
from contracts.registry import NetworkRegistry
from exnet.ops._sql import from_millis, query_rows, quote_list, time_literal, to_int
from exnet.settings import Settings
from sinks.rows import FACT_TABLES, REDACTED

__all__ = [
    "WORKLIST_COLUMNS",
    "Issue",
    "RejectFilter",
    "RejectedMessage",
    "RejectsResult",
    "find_rejects",
    "parse_moment",
    "render_rejects",
    "rejects_as_dict",
    "write_worklist",
]

#: Rows shown on the terminal when no ``--limit`` is given.
DEFAULT_TERMINAL_LIMIT: Final = 100

#: Columns of the CSV work list, in order.
WORKLIST_COLUMNS: Final = (
    "site_id",
    "node_id",
    "participant_id",
    "event_type",
    "occurred_at",
    "event_id",
    "rejected_at",
    "reason",
    "field_path",
    "value",
    "what_to_do",
    "error_type",
    "message",
    "source_topic",
    "source_partition",
    "source_offset",
    "payload",
)

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
#: What may be a date and time (then compared as instants, not as text).
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True, slots=True)
class Issue:
    """One failing field: its path (empty for the whole message), error type, message."""

    path: str
    type: str
    message: str


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    rejected_at: datetime | None
    reason: str
    node_id: str | None
    site_id: str | None
    event_id: str | None
    issues: tuple[Issue, ...]
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    payload: str
    #: The payload's fields as sent (identifiers redacted), or {} when it is no object:
    #: parsed once (every column of a work-list row reads it), again on ``replace``.
    document: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            document = orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            document = {}
        object.__setattr__(self, "document", document if isinstance(document, dict) else {})

    def field(self, name: str) -> str:
        """A field of the payload as text ("" when absent or not a readable string)."""
        value = self.document.get(name)
        return value if isinstance(value, str) and value != REDACTED else ""

    @property
    def event_type(self) -> str:
        """``session`` from the payload's schema, else from the topic it was read from."""
        schema = self.field("schema")
        if "/" in schema:
            return schema.split("/")[0]
        return self.source_topic.rsplit("exnet.", 1)[-1]

    def value_at(self, path: str) -> str:
        """The value the message sent at ``path``, as JSON ("" when absent)."""
        document = self.document
        name = path.split(".")[0]
        if not path or name not in document:
            return ""
        return orjson.dumps(document[name]).decode()


def _registered(registry: NetworkRegistry) -> dict[str, list[str]]:
    """``node`` / ``site`` -> the registry's ids, sorted."""
    return {
        "node": sorted({node.id for node in registry.nodes}),
        "site": sorted(registry.node_of_site),
    }


@dataclass(frozen=True, slots=True)
class RejectFilter:
    """Which rejections to list; empty tuples match everything."""

    nodes: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    #: At most this many messages (newest first); None: all.
    limit: int | None = None

    def __post_init__(self) -> None:
        known = {r.value for r in Reason}
        unknown = [r for r in self.reasons if r not in known]
        if unknown:
            raise UserError(
                f"unknown reason {', '.join(unknown)}: one of {', '.join(sorted(known))}"
            )
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")

    def unregistered(self, registry: NetworkRegistry) -> dict[str, tuple[str, ...]]:
        """The ``--node`` (key ``node``) and ``--site`` (``site``) names not in ``registry``."""
        registered = _registered(registry)
        return {
            kind: tuple(name for name in names if name not in registered[kind])
            for kind, names in (("node", self.nodes), ("site", self.sites))
        }

    def check_names(
        self,
        registry: NetworkRegistry,
        source: str,
        carried: dict[str, set[str]] | None = None,
    ) -> None:
        """Raise :class:`UserError` for a ``--node`` or ``--site`` not in ``registry``
        (read from ``source``), suggesting the closest registered names: a typo must
        not look like a site with nothing to fix. A name rejected messages carry
        (``carried``: kind -> names, as :func:`names_in_rejects` finds them; an
        ``unknown_site`` rejection names a site the registry lacks) is allowed."""
        registered = _registered(registry)
        carried = carried or {}
        for kind, names in self.unregistered(registry).items():
            for name in names:
                if name in carried.get(kind, set()):
                    continue
                close = difflib.get_close_matches(name, registered[kind], n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise UserError(
                    f"{kind} {name!r} is not in the network registry ({source}){hint} "
                    f"Registered: {', '.join(registered[kind])}"
                )

    def where(self) -> str:
        clauses = ["1"]
        if self.nodes:
            clauses.append(f"node_id IN {quote_list(self.nodes)}")
        if self.sites:
            clauses.append(f"site_id IN {quote_list(self.sites)}")
        if self.reasons:
            clauses.append(f"reason IN {quote_list(self.reasons)}")
        if self.since is not None:
            clauses.append(f"rejected_at >= {time_literal(self.since)}")
        if self.until is not None:
            clauses.append(f"rejected_at < {time_literal(self.until)}")
        return " AND ".join(clauses)


@dataclass(frozen=True, slots=True)
class RejectsResult:
    filter: RejectFilter
    #: Every rejection that matches (the listing may hold fewer: ``limit``).
    matched: int
    messages: tuple[RejectedMessage, ...] = field(default=())


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """``2024-05-01``, ``2024-05-01T12:00`` (UTC unless an offset is given), or a
    span back from now: ``90s``, ``30m``, ``24h``, ``7d``, ``2w``."""
    moment = now if now is not None else datetime.now(UTC)
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2)
        return moment - timedelta(**{_UNITS[unit]: amount})
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"{text!r} is neither an ISO date/time (2024-05-01, 2024-05-01T12:00Z) "
            "nor a span back from now (24h, 7d, 30m, 2w)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def names_in_rejects(settings: Settings, names: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    """Of ``names`` (``node`` / ``site`` -> ids), those some rejected message carries."""
    db = settings.clickhouse_database
    found: dict[str, set[str]] = {}
    for kind, wanted in names.items():
        if not wanted:
            continue
        column = {"node": "node_id", "site": "site_id"}[kind]
        rows = query_rows(
            settings,
            f"SELECT DISTINCT {column} AS name FROM {db}.rejected_events "  # noqa: S608  # fixed column, quoted values
            f"WHERE {column} IN {quote_list(wanted)}",
        )
        found[kind] = {str(row["name"]) for row in rows}
    return found


def find_rejects(settings: Settings, query: RejectFilter) -> RejectsResult:
    """The matching rejections, newest first, and how many match in all."""
    db = settings.clickhouse_database
    where = query.where()
    matched = to_int(
        query_rows(settings, f"SELECT count() AS n FROM {db}.rejected_events FINAL WHERE {where}")[  # noqa: S608  # validated names, quoted values
            0
        ]["n"]
    )
    limit = f" LIMIT {int(query.limit)}" if query.limit is not None else ""
    rows = query_rows(
        settings,
        "SELECT toUnixTimestamp64Milli(rejected_at) AS rejected_ms, reason, "  # noqa: S608  # validated names, quoted values
        "toValidUTF8(detail) AS detail, toValidUTF8(message) AS message, "
        "source_topic, source_partition, source_offset, event_id, node_id, site_id, "
        f"toValidUTF8(payload) AS payload FROM {db}.rejected_events FINAL WHERE {where} "
        f"ORDER BY rejected_at DESC, source_topic, source_partition, source_offset DESC{limit}",
    )
    messages = tuple(_message(row) for row in rows)
    return RejectsResult(query, matched, _explain_conflicts(settings, messages))


def _explain_conflicts(
    settings: Settings, messages: tuple[RejectedMessage, ...]
) -> tuple[RejectedMessage, ...]:
    """Conflicting duplicates say which fields differ from the event the platform holds
    (``value``: 482.3 accepted, 516.1 sent), read from its fact table."""
    conflicts = [m for m in messages if _is_conflict(m)]
    if not conflicts:
        return messages
    db = settings.clickhouse_database
    accepted: dict[str, dict[str, Any]] = {}
    for event_type in sorted({m.event_type for m in conflicts} & FACT_TABLES.keys()):
        ids = quote_list(sorted({str(m.event_id) for m in conflicts if m.event_type == event_type}))
        for row in query_rows(
            settings,
            f"SELECT * FROM {db}.{FACT_TABLES[event_type]} FINAL WHERE event_id IN {ids}",  # noqa: S608  # fixed names, quoted values
        ):
            accepted[str(row["event_id"])] = row
    explained = []
    for m in messages:
        held = accepted.get(str(m.event_id)) if _is_conflict(m) else None
        if held is None:
            explained.append(m)
            continue
        differences = [
            f"{name} {_shown(held[name])} accepted, {_shown(sent)} sent"
            for name, sent in m.document.items()
            if name in held and name != "event_id" and not _same(held[name], sent)
        ]
        if differences:
            text = f"event {m.event_id} was already accepted with other content: " + "; ".join(
                differences
            )
            issues = tuple(replace(i, message=text) for i in m.issues)
            m = replace(m, issues=issues, message=f"event_id: {text}")
        explained.append(m)
    return tuple(explained)


def _is_conflict(message: RejectedMessage) -> bool:
    return message.reason == "conflicting_duplicate" and bool(message.event_id)


def _same(held: Any, sent: Any) -> bool:
    """Whether a fact table's value (as ``JSONEachRow`` gives it: a DateTime64 is
    text, ``2025-06-01 12:04:00.000000``, in UTC) and the value a site sent are the
    same: one instant, one number, or equal."""
    if isinstance(held, datetime | str) and isinstance(sent, str):
        stored, instant = _instant(held), _instant(sent)
        if stored is not None and instant is not None:
            stored = stored if stored.tzinfo else stored.replace(tzinfo=UTC)
            return instant.tzinfo is not None and instant == stored
    if isinstance(held, int | float) and isinstance(sent, int | float):
        return float(held) == float(sent)
    return bool(held == sent)


def _instant(value: datetime | str) -> datetime | None:
    """``value`` as a date and time, None when it is not one."""
    if isinstance(value, datetime):
        return value
    if not _DATE_TIME.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        return None


def _shown(value: Any) -> str:
    if isinstance(value, datetime):
        stored = value if value.tzinfo else value.replace(tzinfo=UTC)
        return stored.isoformat().replace("+00:00", "Z")
    return orjson.dumps(value).decode() if value is not None else "null"


#: Characters of a payload the terminal listing shows (CSV and JSON carry it whole).
PAYLOAD_SHOWN: Final = 240
#: Seconds ``--original`` may take to read the dead-letter topic to its end.
ORIGINALS_TIMEOUT_S: Final = 120.0


def with_originals(settings: Settings, result: RejectsResult) -> RejectsResult:
    """``result`` with each message's original bytes, read from ``exnet.deadletter``
    (the only place they are kept; analysts' tables hold them redacted).

    Reads the topic from its beginning to its current end with ``settings``'
    Kafka login (the platform's; a site's may not read topics). A message no
    longer on the topic (past its retention) keeps its redacted payload and
    says so. Raises :class:`UserError` when Kafka cannot be read.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from contracts import headers as H
    from contracts.topics import Topic, topic_name
    from contracts.wire import source_origin
    from exnet.settings import KafkaRefusals

    wanted = {(m.source_topic, m.source_partition, m.source_offset) for m in result.messages}
    found: dict[tuple[str, int, int], bytes] = {}
    topic = topic_name(Topic.DEADLETTER, settings.topic_prefix)
    with KafkaRefusals(settings) as refusals:
        try:
            consumer = KafkaConsumer(
                **settings.kafka_client_config(),
                client_id="exnet-rejects",
                enable_auto_commit=False,
            )
        except KafkaError as exc:
            raise UserError(f"cannot read {topic}: {refusals.reason() or exc}") from None
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + ORIGINALS_TIMEOUT_S
        while wanted - found.keys() and any(consumer.position(tp) < ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise UserError(f"reading {topic} took over {ORIGINALS_TIMEOUT_S:.0f} s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    headers = dict(record.headers or ())
                    try:
                        origin = source_origin(headers)
                    except (KeyError, ValueError):
                        continue
                    position = (origin.topic, origin.partition, origin.offset)
                    if position in wanted:
                        found[position] = record.value or b""
                        length = headers.get(H.ORIGINAL_LENGTH)
                        if length is not None:  # too large to keep whole
                            found[position] += (
                                f" [... the first {len(record.value or b''):,} of "
                                f"{int(length):,} bytes]"
                            ).encode()
    except KafkaError as exc:
        raise UserError(f"cannot read {topic}: {exc}") from None
    finally:
        consumer.close()
    gone = "(no longer on the dead-letter topic: past its retention) "
    messages = tuple(
        replace(m, payload=found[key].decode("utf-8", "replace"))
        if (key := (m.source_topic, m.source_partition, m.source_offset)) in found
        else replace(m, payload=gone + m.payload)
        for m in result.messages
    )
    return replace(result, messages=messages)


def _message(row: dict[str, Any]) -> RejectedMessage:
    message = str(row["message"])
    return RejectedMessage(
        rejected_at=from_millis(row["rejected_ms"]),
        reason=str(row["reason"]),
        node_id=row["node_id"],
        site_id=row["site_id"],
        event_id=row["event_id"],
        issues=_issues(str(row["detail"]), message),
        message=message,
        source_topic=str(row["source_topic"]),
        source_partition=to_int(row["source_partition"]),
        source_offset=to_int(row["source_offset"]),
        payload=str(row["payload"]),
    )


def _issues(detail: str, message: str) -> tuple[Issue, ...]:
    try:
        document = orjson.loads(detail)
        errors = document["errors"]
        issues = tuple(
            Issue(str(e.get("path", "")), str(e.get("type", "")), str(e.get("message", "")))
            for e in errors
            if isinstance(e, dict)
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        issues = ()
    return issues or (Issue("", "", message),)


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- output -------------------------------------------------------------------------


def render_rejects(result: RejectsResult) -> RenderableType:
    """For the terminal: per rejected message, one line of who/what/where, then its
    failing fields indented (readable at any width)."""
    if not result.matched:
        return Text("no rejected messages match", style="green")
    summary = f"{result.matched} rejected message(s) match"
    if len(result.messages) < result.matched:
        summary += f"; showing the newest {len(result.messages)} (--limit)"
    blocks: list[RenderableType] = [Text(summary, style="bold"), Text("")]
    for m in result.messages:
        when = f"{m.rejected_at:%Y-%m-%d %H:%M:%S}" if m.rejected_at else "?"
        head = Text.assemble(
            (when, "cyan"),
            "  ",
            (m.reason, "bold red"),
            "  ",
            (
                f"{m.node_id or '?'} / {m.site_id}" if m.site_id else "(the message names no site)",
                "bold",
            ),
        )
        what = ", ".join(
            part
            for part in (
                f"{m.event_type} event",
                m.field("participant_id") and f"participant {m.field('participant_id')}",
                m.field("occurred_at") and f"occurred {m.field('occurred_at')}",
                f"event_id {m.event_id or '?'}",
            )
            if part
        )
        where = Text(
            f"  {what}; source {m.source_topic}[{m.source_partition}]@{m.source_offset}",
            style="dim",
        )
        blocks.extend((head, where))
        for issue in m.issues:
            line = Text("  - ")
            line.append(what_to_do(m, issue))
            sent = m.value_at(issue.path)
            if sent:
                line.append(f" (sent {sent})", style="dim")
            blocks.append(line)
        shown = m.payload if len(m.payload) <= PAYLOAD_SHOWN else m.payload[:PAYLOAD_SHOWN] + "…"
        blocks.append(Text(f"  sent: {shown}", style="dim"))
    blocks.append(Text(""))
    blocks.append(
        Text(
            "Fix each record and publish it again, with its event_id (a "
            "conflicting_duplicate's correction takes a new one); `--csv` writes a "
            "per-site work list.",
            style="dim",
        )
    )
    return Group(*blocks)


def rejects_as_dict(result: RejectsResult) -> dict[str, Any]:
    """The ``--json`` document: ``matched``, ``shown`` and ``rejects`` (newest first)."""
    return {
        "matched": result.matched,
        "shown": len(result.messages),
        "rejects": [
            {
                "rejected_at": _iso(m.rejected_at) or None,
                "reason": m.reason,
                "node_id": m.node_id,
                "site_id": m.site_id,
                "participant_id": m.field("participant_id") or None,
                "event_type": m.event_type,
                "occurred_at": m.field("occurred_at") or None,
                "event_id": m.event_id,
                "message": m.message,
                "errors": [
                    {
                        "path": i.path,
                        "type": i.type,
                        "message": i.message,
                        "value": m.value_at(i.path) or None,
                        "what_to_do": what_to_do(m, i),
                    }
                    for i in m.issues
                ],
                "source_topic": m.source_topic,
                "source_partition": m.source_partition,
                "source_offset": m.source_offset,
                "payload": m.payload,
            }
            for m in result.messages
        ],
    }


def worklist_rows(messages: Sequence[RejectedMessage]) -> list[dict[str, str | int]]:
    """One row per failing field, by site, then newest first (as the terminal lists them)."""
    newest_first = sorted(
        messages,
        key=lambda m: (
            m.rejected_at or datetime.min.replace(tzinfo=UTC),
            m.source_topic,
            m.source_partition,
            m.source_offset,
        ),
        reverse=True,
    )
    ordered = sorted(newest_first, key=lambda m: (m.site_id or "", m.node_id or ""))
    return [
        {
            "site_id": m.site_id or "",
            "node_id": m.node_id or "",
            "participant_id": m.field("participant_id"),
            "event_type": m.event_type,
            "occurred_at": m.field("occurred_at"),
            "event_id": m.event_id or "",
            "rejected_at": _iso(m.rejected_at),
            "reason": m.reason,
            "field_path": issue.path,
            "value": m.value_at(issue.path),
            "what_to_do": what_to_do(m, issue),
            "error_type": issue.type,
            "message": issue.message,
            "source_topic": m.source_topic,
            "source_partition": m.source_partition,
            "source_offset": m.source_offset,
            "payload": m.payload,
        }
        for m in ordered
        for issue in m.issues
    ]


#: Each identifier field's form, in words.
_FORMS: Final = {
    "event_id": "a UUID such as 3f2504e0-4f89-41d3-9a0c-0305e82c3301 (a new one per event)",
    "participant_id": "the participant's pseudonym: P- and 10 to 64 lower-case hex digits, "
    "never a name or record number",
    "node_id": "the node's registered id, such as N01",
    "site_id": "the site's registered id, such as N01-S02",
    "specimen_id": "the specimen's label: 4 to 64 letters, digits or '-'",
    "lab_id": "the lab's id: 2 to 32 letters, digits or '-'",
    "batch_id": "the lab's batch label: 1 to 64 letters, digits, '.', '_' or '-', no free text",
    "occurred_at": "a date and time with its UTC offset, such as 2025-06-01T09:30:00+02:00",
}


def what_to_do(message: RejectedMessage, issue: Issue) -> str:
    """One sentence a site coordinator can act on, for one failing field of ``message``."""
    path, kind, reason = issue.path, issue.type, message.reason
    if reason == "conflicting_duplicate":
        return (
            f"{issue.message}; if the new values are a correction, send the corrected "
            "event with a new event_id"
        )
    if reason in ("too_large", "malformed_json"):
        return f"fix the export that wrote this message: {issue.message}"
    if reason == "unknown_schema":
        return f"set schema to the event's type and version: {issue.message}"
    if reason == "key_mismatch":
        return "publish with `exnet publish`, which keys each event by its participant_id"
    if reason == "unknown_site":
        return (
            f"{issue.message}: correct node_id/site_id, or ask the operators to register it, "
            "then send the same events again"
        )
    if reason == "future_timestamp":
        return f"{issue.message}: check the clock and time zone of the computer that wrote it"
    if kind == "extra_forbidden":
        withheld = (
            " (its name is withheld here: --original shows it)" if path.startswith("<") else ""
        )
        return f"remove {path}{withheld}: {message.event_type} events have no such field"
    if kind == "missing":
        required = issue.message in ("", "Field required")
        return f"add {path}: it is required" if required else f"add {path} ({issue.message})"
    if path in _FORMS and kind in ("string_pattern_mismatch", "datetime_utc_offset"):
        return f"{path} must be {_FORMS[path]}"
    return f"{path}: {issue.message}" if path else issue.message


def write_worklist(messages: Sequence[RejectedMessage], out: TextIO) -> int:
    """Write the CSV work list (header + :func:`worklist_rows`); return the rows written."""
    rows = worklist_rows(messages)
    writer = csv.DictWriter(out, fieldnames=WORKLIST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return len(rows)
