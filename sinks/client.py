"""Opening ClickHouse: embedded chDB (``chdb:///path``) or a server (``http(s)://``), one path."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import clickhouse_connect
import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from exnet.settings import Settings
from sinks.errors import ClickHouseUnavailable, DatabaseLocked

__all__ = [
    "INSERT_SETTINGS",
    "JSON_SETTINGS",
    "Client",
    "connect",
    "insert_json",
    "redacted_dsn",
    "server_login",
]

log = logging.getLogger(__name__)

#: Pinned on every insert: synchronous (chDB's build defaults to async_insert=1,
#: which would acknowledge before the rows are durable) and deduplicated by token.
INSERT_SETTINGS: dict[str, Any] = {
    "async_insert": 0,
    "insert_deduplicate": 1,
}

#: JSON rows: ISO-8601 times as the contracts write them; no key that is not a column
#: (a key the table lacks is a bug, not something to drop quietly); floats parsed to
#: the nearest double, as the site wrote them (the fast parser may differ in the last
#: bit).
JSON_SETTINGS: dict[str, Any] = {
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": 0,
    "precise_float_parsing": 1,
}


#: chDB's allocator (jemalloc, its variable prefixed ``JE_``): return freed pages to the
#: system at once. By default it keeps them for seconds, and an insert's working set
#: stayed resident: 300,000 session rows inserted 20,000 at a time left 430-455 MB
#: resident (peak 472-496) against 360 (peak 437-444) with this, for 0-15% more insert
#: time (measured in one process, 2026-12-01). Read when chDB loads; a value set in the
#: environment wins.
CHDB_ALLOCATOR_CONF: Final = "dirty_decay_ms:0,muzzy_decay_ms:0"


def connect(settings: Settings, *, readonly: bool = False, create_database: bool = False) -> Client:
    """A client for the analytics database.

    ``readonly`` pins ``readonly=1`` on this client's own session (per client
    handle in chDB, per connection on a server), so analysts' SQL can never
    write, and ``final=1``, so every read is as with ``FINAL``. With the embedded
    default a second process cannot open the same path: that is
    :class:`DatabaseLocked`.
    """
    dsn = settings.clickhouse_dsn
    database = settings.clickhouse_database
    try:
        if dsn.startswith("chdb:"):
            path = dsn.removeprefix("chdb://")
            _ensure_parent(path)
            os.environ.setdefault("JE_MALLOC_CONF", CHDB_ALLOCATOR_CONF)
            with _chdb_lock_message_dropped():
                client = clickhouse_connect.get_client(dsn=dsn)
        else:
            client = _server_client(dsn)
    except ClickHouseError as exc:
        if dsn.startswith("chdb:"):
            raise DatabaseLocked(
                f"the embedded database {dsn.removeprefix('chdb://')} is held by another "
                "process (chDB lets one process own it): query it with `exnet sql`, which "
                "goes through the process that owns it"
            ) from exc
        raise ClickHouseUnavailable(
            f"cannot reach ClickHouse at {redacted_dsn(dsn)}: {exc}"
        ) from exc
    if create_database:
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    if readonly:
        # SET on this client's own session; it outlives the call on purpose. The
        # limits first: readonly=1 then keeps an analyst's query from lifting them.
        for name, value in READ_ONLY_LIMITS.items():
            client.command(f"SET {name} = {value}")
        # FINAL on every table it applies to, as `docs/analytics.md` asks of every
        # read: until ClickHouse merges them, a summary table holds each row's older
        # versions, and an analyst's `SELECT count() FROM node_summary` right after a
        # drain counted 9 rows for 3 nodes (an outside check, 2026-12-05).
        client.command("SET final = 1")
        client.command("SET readonly = 1")
    client.database = database
    return client


#: What chDB writes on the process's standard error when another process holds the
#: database: its exception, which :class:`DatabaseLocked` says in exnet's words.
_CHDB_LOCK_MESSAGE: Final = re.compile(
    rb"^Code: 76\. DB::Exception: Cannot lock file [^\n]*\n?", re.MULTILINE
)


@contextmanager
def _chdb_lock_message_dropped() -> Iterator[None]:
    """While chDB opens a database: file descriptor 2 goes to a temporary file, and
    after, everything written there goes on to standard error but
    :data:`_CHDB_LOCK_MESSAGE`.

    Why: chDB (C++) writes its exception to descriptor 2 itself before raising it. A
    standby writer tries to open the database every few seconds while another
    process holds it, and wrote that line into its log each time (12 lines in 23 s,
    2026-12-01), beside exnet's own message saying it waits. Descriptor 2 is the
    process's: another thread's output meanwhile is held too, and written out after,
    in order, when the open returns (milliseconds).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2, or no sys.stderr
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()  # Python's own buffered text: into the held file too
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            rest = _CHDB_LOCK_MESSAGE.sub(b"", held.read())
            if rest:
                os.write(2, rest)


def insert_json(
    client: Client,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    settings: Mapping[str, Any] | None = None,
) -> None:
    """Insert ``rows`` (values in ``columns``' order: str, int, float, None, a
    timezone-aware datetime, or UTF-8 bytes) into ``table`` as ``JSONEachRow``,
    synchronously (:data:`INSERT_SETTINGS`, then ``settings``).

    Every exnet insert goes as JSON (the facts and views as they came from
    Kafka): clickhouse-connect's own row insert imports pandas on first use
    (through ``InsertContext.data``), 42 MB of the writer's memory for a few
    registry and rejected rows (measured 2026-12-01). Raises what
    clickhouse-connect raises.
    """
    block = b"\n".join(
        orjson.dumps(dict(zip(columns, row, strict=True)), default=_json_default) for row in rows
    )
    client.raw_insert(
        table,
        insert_block=block,
        settings={**INSERT_SETTINGS, **JSON_SETTINGS, **(settings or {})},
        fmt="JSONEachRow",
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()  # UTF-8: the payloads exnet stores are JSON it wrote
    raise TypeError(f"no JSON for a {type(value).__name__}")


#: Bounds of every query on a read-only session (``exnet sql``, the view check): in
#: embedded chDB it runs in the process that writes the database, which an analyst's
#: unbounded query could otherwise take all the memory of. Seconds: also how long
#: ``exnet sql`` waits for an answer (``sinks.query.QUERY_TIMEOUT_S``); bytes: 4 GiB.
READ_ONLY_LIMITS: Final = {"max_execution_time": 300, "max_memory_usage": 4 * 1024**3}


def _ensure_parent(path: str) -> None:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)


def _server_client(dsn: str) -> Client:
    return clickhouse_connect.get_client(
        **server_login(dsn),
        # Retries are ours (tenacity, in the sink); a server answers promptly or is down.
        connect_timeout=10,
        send_receive_timeout=300,
    )


def server_login(dsn: str) -> dict[str, Any]:
    """Where and as whom ``http(s)://user:password@host:port`` connects: the user and
    password percent-decoded (a password holding ``/`` is written ``%2F`` there)."""
    parts = urlsplit(dsn)
    return {
        "host": parts.hostname or "localhost",
        "port": parts.port or (8443 if parts.scheme == "https" else 8123),
        "username": unquote(parts.username or "") or "default",
        "password": unquote(parts.password or ""),
        "secure": parts.scheme == "https",
    }


def redacted_dsn(dsn: str) -> str:
    """``dsn`` with its password, if any, shown as ``***``: safe to print."""
    parts = urlsplit(dsn)
    if parts.password:
        return dsn.replace(f":{parts.password}@", ":***@")
    return dsn
