"""Analysts' read-only SQL, also while ``exnet up`` holds the embedded database.

chDB lets one process own its path, so the process that writes it also answers
``exnet sql``: a loopback-only HTTP endpoint, guarded by a random token in a
file only the owner can read (``<var_dir>/run/sql-endpoint.json``). Queries run
on a separate client whose session is pinned ``readonly=1``, and a text that is
not one read-only query (``KILL``, ``SYSTEM``, several statements, ``INTO
OUTFILE``: what ``readonly=1`` lets through in chDB) is refused first, on either
path (:func:`refuse_unless_read_only`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from contracts.errors import UserError
from exnet.settings import SHUTDOWN_POLL_S, Settings
from sinks.client import READ_ONLY_LIMITS, connect, redacted_dsn
from sinks.errors import DatabaseLocked

__all__ = ["QueryEndpoint", "endpoint_file", "refuse_unless_read_only", "run_query"]

log = logging.getLogger(__name__)

#: Seconds a query through the endpoint may take before the caller gives up.
QUERY_TIMEOUT_S = READ_ONLY_LIMITS["max_execution_time"]


def endpoint_file(settings: Settings) -> Path:
    return settings.var_dir / "run" / "sql-endpoint.json"


class QueryEndpoint:
    """Serves read-only queries on 127.0.0.1 for the process that owns the database."""

    def __init__(self, settings: Settings, client: Client) -> None:
        self._settings = settings
        self._client = client
        self._lock = threading.Lock()  # one query at a time on the read-only session
        self._token = secrets.token_hex(16)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  # http.server's naming
                given = self.headers.get("X-Exnet-Token", "").encode()
                if not secrets.compare_digest(given, endpoint._token.encode()):  # in time too
                    self._reply(HTTPStatus.FORBIDDEN, b"bad token")
                    return
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length))
                try:
                    body = endpoint.query(str(request["query"]), str(request["format"]))
                except UserError as exc:  # refused by exnet before ClickHouse ran it
                    self._reply(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc).encode())
                    return
                except Exception as exc:  # the analyst's SQL error, sent back as text
                    self._reply(HTTPStatus.BAD_REQUEST, clickhouse_message(exc).encode())
                    return
                self._reply(HTTPStatus.OK, body)

            def _reply(self, status: HTTPStatus, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("sql endpoint: " + format, *args)

        server = ThreadingHTTPServer(("127.0.0.1", self._settings.sql_port), Handler)
        self._server = server
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="exnet-sql",
            daemon=True,
        ).start()
        path = endpoint_file(self._settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(
                {
                    "pid": os.getpid(),
                    "port": server.server_address[1],
                    "token": self._token,
                    # What it serves: a caller asking for another database or path
                    # must not get this one's answers.
                    "dsn": self._settings.clickhouse_dsn,
                    "database": self._settings.clickhouse_database,
                },
                handle,
            )
        temporary.replace(path)

    def query(self, sql: str, fmt: str) -> bytes:
        """``sql``'s result in format ``fmt``; :class:`UserError` if it would write a file."""
        with self._lock:
            refuse_unless_read_only(self._client, sql, fmt)
            result: bytes = self._client.raw_query(sql, fmt=fmt)
            return result

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        path = endpoint_file(self._settings)
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: A query's own output format: ``FORMAT <name>`` at its end (before an optional
#: ``SETTINGS`` clause, which ClickHouse takes on either side of it, and ``;``).
_OWN_FORMAT = re.compile(
    r"\s+FORMAT\s+([A-Za-z][A-Za-z0-9]*)(\s+SETTINGS\s[^;]*?)?\s*;?\s*$", re.IGNORECASE | re.DOTALL
)


def _without_trailing_comments(sql: str) -> str:
    """``sql`` up to its last character of code: trailing ``--`` and ``/* */`` comments
    (nested, as ClickHouse reads them) and blanks dropped. Quotes are skipped whole
    ('...', "...", `...`, $$...$$), so comment marks inside them stay code."""
    end, i, n = 0, 0, len(sql)
    while i < n:
        if sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif sql.startswith("$$", i):
            close = sql.find("$$", i + 2)
            i = end = n if close < 0 else close + 2
        elif sql[i] in "'\"`":
            quote, i = sql[i], i + 1
            while i < n and sql[i] != quote:
                i += 2 if sql[i] == "\\" else 1
            i = end = min(n, i + 1)
        else:
            if not sql[i].isspace():
                end = i + 1
            i += 1
    return sql[:end]


def own_format(sql: str) -> tuple[str, str | None]:
    """``sql`` without its own trailing ``FORMAT`` clause and ``;``, and that format (or None).

    ClickHouse clients append the output format to the query; a query that names
    its own would then carry two and fail with a syntax error the user never typed.
    Comments after the clause (a saved query's closing line) do not hide it; a
    ``SETTINGS`` clause after it stays in the query.
    """
    code = _without_trailing_comments(sql)
    found = _OWN_FORMAT.search(code)
    if found is not None:
        return code[: found.start()] + (found.group(2) or "").rstrip(), found.group(1)
    return code.removesuffix(";").rstrip(), None


#: Where ``exnet sql``'s results go instead of a file named in the query.
_TO_A_FILE = (
    "to save results, choose the format with --format and redirect the output, e.g. "
    "exnet sql 'SELECT ...' --format CSV > results.csv"
)

#: A string literal or quoted identifier as ClickHouse writes a query back out
#: (``formatQuerySingleLine``): single quotes or backquotes, backslash escapes.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)

#: The clause that writes the result to a file, in that canonical text outside quotes.
_INTO_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)


def refuse_unless_read_only(client: Client, sql: str, fmt: str) -> None:
    """Raise :class:`UserError` when ``sql``, run with output format ``fmt``, is not one
    read-only statement: another kind than a query (``KILL``, ``SYSTEM``...), several
    statements, a query that writes a file or calls a function that reaches outside
    the database; return None otherwise.

    ``readonly=1`` refuses writes to tables and settings, but not what an analyst's text
    can still do in chDB (measured on chDB 26.9): read the host's files with the
    ``file()`` function, fetch URLs and read files' first lines with ``DESCRIBE TABLE
    url(...)`` or ``file(...)`` (refused: every function that reaches outside the
    database, :func:`_outside_functions`); ``INTO OUTFILE``, which clickhouse-local
    carries out itself, as the process running the query, after any statement with a
    result; ``KILL QUERY`` (the writer's insert); ``SYSTEM`` commands (``SYSTEM STOP
    MERGES; SELECT 1`` ran: chDB runs ``;``-separated statements, a server refuses
    them). So the text is parsed by ClickHouse first (``formatQuerySingleLine``, on
    ``client``, the read-only session; the same for a server): its canonical form must
    be one statement of a read-only kind (:data:`_READ_KINDS`), and hold no ``INTO
    OUTFILE`` outside quotes (comments, heredocs and unusual quotes are gone from that
    form, literals and identifiers quoted one way). A text that parses only without the
    appended ``FORMAT`` (``SET``, ``USE``: statements with no result) is judged by its
    kind the same way; one that does not parse for another reason than several
    statements runs, for ClickHouse's own error, unless it mentions ``outfile``. One
    parse: a millisecond or so a query.
    """
    text = f"{sql}\n FORMAT {fmt}"  # what clickhouse-connect sends
    try:
        canonical = _canonical(client, text)
    except Exception as exc:
        reason = _parse_failure(exc)
        if "outfile" in text.lower():
            raise UserError(
                "`exnet sql` is read-only and cannot tell whether this query writes a file "
                f"(INTO OUTFILE): ClickHouse does not parse it as one statement "
                f"({reason}); {_TO_A_FILE}"
            ) from None
        if "Multi-statements" in str(exc):
            raise UserError(
                f"`exnet sql` runs one statement at a time ({reason}): send them one by one"
            ) from None
        # A syntax error, or a statement that takes no FORMAT (SET, USE...): the bare
        # text decides; if it does not parse either, the query itself says where.
        try:
            canonical = _canonical(client, sql)
        except Exception:
            return
    kind = canonical.lstrip("( ").split(" ", 1)[0].upper()
    if kind not in _READ_KINDS:
        raise UserError(
            f"`exnet sql` is read-only: it runs queries ({', '.join(sorted(_READ_KINDS))}), "
            f"not {kind or 'this'} statements"
        )
    unquoted = _QUOTED.sub("''", canonical)
    if _INTO_OUTFILE.search(unquoted):
        raise UserError(
            f"`exnet sql` is read-only: it does not write files (INTO OUTFILE); {_TO_A_FILE}"
        )
    outside = _outside_functions(client)
    reaching = sorted({name for name in _CALLED.findall(unquoted) if name.lower() in outside})
    if reaching:
        raise UserError(
            f"`exnet sql` reads the analytics database only: it does not run "
            f"{', '.join(f'{name}()' for name in reaching)}, which reach outside it "
            "(the host's files, URLs, other servers or processes)"
        )


#: A function called, by name, in the canonical text (with its literals blanked).
_CALLED = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(")

#: Table functions that read nothing but their arguments or the database's own tables.
_INSIDE_TABLE_FUNCTIONS: Final = frozenset(
    {
        "numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateseries",
        "primes", "values", "sqlstandardvalues", "null", "generaterandom", "format", "loop",
        "fuzzjson", "view", "viewifpermitted", "viewexplain", "merge", "dictionary",
        "mergetreeindex", "mergetreeprojection", "mergetreetextindex",
        "mergetreeanalyzeindexes", "mergetreeanalyzeindexesuuid", "mergetreecodecblockcounts",
        "timeseriesdata", "timeseriestags", "timeseriesmetrics", "timeseriesmetricfamilies",
        "timeseriessamples", "timeseriesselector",
    }
)  # fmt: skip
#: Ordinary functions that read the host: ``file()`` returns a file's contents (under
#: ``readonly=1`` too, measured on chDB 26.9: the process's environment, with any
#: password in it, and the SQL endpoint's token were read so), ``catboostEvaluate()``
#: loads a model from a path.
_OUTSIDE_FUNCTIONS: Final = frozenset({"file", "catboostevaluate"})
#: The lower-case names of the functions :func:`refuse_unless_read_only` refuses, read
#: once a process (one ClickHouse build a process: its chDB, or its server).
_outside: frozenset[str] | None = None


def _outside_functions(client: Client) -> frozenset[str]:
    """The functions that reach outside the database, lower case: every table function
    of this ClickHouse (``system.table_functions``: a newer one's included) but those
    of :data:`_INSIDE_TABLE_FUNCTIONS`, and :data:`_OUTSIDE_FUNCTIONS`. Names are
    compared in lower case, as some ClickHouse names are case-insensitive."""
    global _outside  # noqa: PLW0603  # a cache, filled once
    if _outside is None:
        listed: bytes = client.raw_query(
            "SELECT name FROM system.table_functions", fmt="TabSeparatedRaw"
        )
        table_functions = {name.lower() for name in listed.decode().split()}
        _outside = frozenset(table_functions - _INSIDE_TABLE_FUNCTIONS) | _OUTSIDE_FUNCTIONS
    return _outside


def _canonical(client: Client, text: str) -> str:
    """``text`` as ClickHouse writes it back out on one line (``formatQuerySingleLine``);
    raises what the client raises when ClickHouse does not parse it."""
    result: bytes = client.raw_query(
        "SELECT formatQuerySingleLine({query:String})",
        parameters={"query": text},
        fmt="TabSeparatedRaw",
    )
    return result.decode("utf-8", "replace")


#: The statements an analyst's text may be, by their first keyword in ClickHouse's
#: canonical form (``DESC`` is written ``DESCRIBE`` there).
_READ_KINDS: Final = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "EXPLAIN", "EXISTS"})


#: One ClickHouse error as the embedded client words it, wrapped once more at each
#: layer: the code's prefix repeated ahead, the name and version repeated behind.
_REPEATED_PREFIX = re.compile(r"^(Code: \d+\. DB::Exception: )(?:Code: \d+\. DB::Exception: )+")
_REPEATED_SUFFIX = re.compile(r"( \([A-Z_]+\))(?: \(version [^)]*\)\. \([A-Z_]+\))+$")


def clickhouse_message(exc: BaseException) -> str:
    """ClickHouse's error in ``exc``, said once: chDB through clickhouse-connect gave
    "Code: 164. DB::Exception: Code: 164. DB::Exception: Cannot modify ... (READONLY)
    (version 26.9.2.1). (READONLY)" (three times over for an unknown format)."""
    text = str(exc).strip()
    text = _REPEATED_PREFIX.sub(r"\1", text)
    return _REPEATED_SUFFIX.sub(r"\1", text)


def _parse_failure(exc: Exception) -> str:
    """The start of ClickHouse's reason in ``exc`` (e.g. ``Syntax error (Multi-statements
    are not allowed): failed at position 9 (end of query)``): not the driver's words,
    the list of what the parser expected, or the wrapping query."""
    text = str(exc)
    reason = text[text.find("DB::Exception: ") :].removeprefix("DB::Exception: ")
    reason = re.split(r"\n|: In scope | Expected ", reason, maxsplit=1)[0]
    return reason.strip() or type(exc).__name__


def run_query(settings: Settings, sql: str, fmt: str) -> bytes:
    """Run ``sql`` read-only: through the owning process's endpoint, or directly.

    The query's own ``FORMAT`` clause wins over ``fmt``; errors quote the query as
    it was written. A query that would write a file raises :class:`UserError`
    (:func:`refuse_unless_read_only`), whichever process runs it.
    """
    sql, named = own_format(sql)
    fmt = named or fmt
    if not sql.strip():
        kinds = ", ".join(sorted(_READ_KINDS))
        example = "exnet sql 'SELECT * FROM node_summary FINAL'"
        raise UserError(f"no query to run: give one statement ({kinds}), e.g. {example}")
    try:
        return _run_query(settings, sql, fmt)
    except UserError as exc:
        raise UserError(str(exc).replace(f"\n FORMAT {fmt}", "")) from None


#: Seconds a query waits for an embedded database that another process holds without
#: answering queries: an `exnet status`, `report` or `verify` holds it while it reads
#: (each query a moment), an `exnet up` that starts serves queries within seconds.
HELD_WAIT_S: Final = 10.0


def _endpoint_or_client(settings: Settings) -> dict[str, Any] | Client:
    """The running writer's endpoint, else a read-only client of this process's own.
    Raises :class:`DatabaseLocked` when another process holds the embedded database."""
    endpoint = _live_endpoint(settings)
    if endpoint is not None:
        return endpoint
    if settings.embedded_clickhouse and not Path(_location(settings)).exists():
        raise _not_initialized(settings)  # a read-only tool makes no directory
    return connect(settings, readonly=True)


def _live_endpoint(settings: Settings) -> dict[str, Any] | None:
    """The endpoint of the running `exnet up` that owns the embedded database, if any."""
    path = endpoint_file(settings)
    if not (settings.embedded_clickhouse and path.exists()):
        return None
    try:
        endpoint: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if endpoint.get("dsn", settings.clickhouse_dsn) != settings.clickhouse_dsn:
        return None
    return endpoint if _alive(int(endpoint["pid"])) else None


def _run_query(settings: Settings, sql: str, fmt: str) -> bytes:
    # A database held by a process that answers no queries is waited for (an `exnet sql`
    # beside a monitoring loop's `exnet status` failed at once, told to use `exnet sql`);
    # each try looks for a writer's endpoint first, which an `exnet up` starting publishes.
    retrying = Retrying(
        retry=retry_if_exception_type(DatabaseLocked),
        wait=wait_fixed(0.2),
        stop=stop_after_delay(HELD_WAIT_S),
        reraise=True,
    )
    try:
        target = retrying(_endpoint_or_client, settings)
    except DatabaseLocked:
        raise DatabaseLocked(
            f"the embedded database {_location(settings)} is held by another "
            f"process that answers no queries, for over {HELD_WAIT_S:g} s (chDB "
            "lets one process own it): an `exnet status`, `report` or `verify` "
            "still running, or an `exnet up` that has not started its writer; "
            "try again once it is done"
        ) from None
    if isinstance(target, dict):
        served = target.get("database", settings.clickhouse_database)
        if served != settings.clickhouse_database:
            raise UserError(
                f"exnet up (pid {target['pid']}) holds the embedded database "
                f"{_location(settings)} and answers for its "
                f"database {served!r} only, not {settings.clickhouse_database!r} "
                f"(EXNET_CLICKHOUSE_DATABASE): query {served!r}, name the other's tables "
                f"in full ({settings.clickhouse_database}.<table>), or stop it first"
            )
        return _query_endpoint(target, sql, fmt)
    client = target
    try:
        refuse_unless_read_only(client, sql, fmt)
        try:
            result: bytes = client.raw_query(sql, fmt=fmt)
        except Exception as exc:
            if "(UNKNOWN_DATABASE)" in str(exc) and not _database_exists(client, settings):
                raise _not_initialized(settings) from None
            raise UserError(f"query failed: {clickhouse_message(exc)}") from None
        return result
    finally:
        client.close()


def _location(settings: Settings) -> str:
    """Where the database is: the embedded one's folder, or the server's URL (its
    password hidden)."""
    return redacted_dsn(settings.clickhouse_dsn.removeprefix("chdb://"))


def _database_exists(client: Client, settings: Settings) -> bool:
    """Whether exnet's own database is there: a query naming another that does not
    exist fails the same way (UNKNOWN_DATABASE), and must be told so, not sent to
    ``exnet init``."""
    exists = client.command(f"EXISTS DATABASE {quote_identifier(settings.clickhouse_database)}")
    return str(exists).strip() == "1"


def _not_initialized(settings: Settings) -> UserError:
    where = "EXNET_CLICKHOUSE_URL" if settings.clickhouse_url is not None else "EXNET_VAR_DIR"
    return UserError(
        f"the database {settings.clickhouse_database!r} does not exist in "
        f"{_location(settings)} yet: run `exnet init` "
        f"(or check {where})"
    )


def _query_endpoint(endpoint: dict[str, Any], sql: str, fmt: str) -> bytes:
    request = urllib.request.Request(  # noqa: S310  # loopback URL we built ourselves
        f"http://127.0.0.1:{int(endpoint['port'])}/",
        data=json.dumps({"query": sql, "format": fmt}).encode(),
        headers={"X-Exnet-Token": str(endpoint["token"]), "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=QUERY_TIMEOUT_S) as response:  # noqa: S310
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        message = exc.read().decode("utf-8", "replace")
        if exc.code == HTTPStatus.UNPROCESSABLE_ENTITY:  # refused by exnet: says why itself
            raise UserError(message) from None
        raise UserError(f"query failed: {message}") from None
    except urllib.error.URLError as exc:
        raise UserError(
            f"the exnet process that owns the database (pid {endpoint['pid']}) did not answer: "
            f"{exc.reason}"
        ) from None
