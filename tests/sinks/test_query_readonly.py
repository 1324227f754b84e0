"""``exnet sql`` writes no file: ``INTO OUTFILE``, which ``readonly=1`` lets through in
chDB, is refused on both paths (this process's own session, and the endpoint of the
process that owns the database); the words in literals, identifiers and comments pass."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest

from contracts.errors import UserError
from exnet.settings import Settings
from sinks.client import connect
from sinks.query import QueryEndpoint, endpoint_file, run_query
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.clickhouse

EXNET = str(Path(sys.executable).with_name("exnet"))

#: What the victim file holds before, and must still hold after, every refused query.
PRECIOUS = "precious\n"

#: Queries that write ``{file}`` (an existing file) or ``{new}`` (none yet) in chDB
#: under ``readonly=1``: spellings, comments, other quotes, other statements, a
#: second statement (chDB runs ``;``-separated ones).
WRITES_A_FILE = [
    "SELECT 'gone' INTO OUTFILE '{file}' TRUNCATE",
    "SELECT 'gone' INTO OUTFILE '{file}' APPEND FORMAT CSV;",
    "select 'gone' into\n  outfile '{file}' truncate",
    "SELECT 'gone' InTo/**/OuTfIlE '{file}' TRUNCATE",
    "SELECT 'gone' INTO /* a /* nested */ comment */ OUTFILE '{file}' TRUNCATE",
    "SELECT 'gone' INTO -- comment\nOUTFILE '{file}' TRUNCATE",
    "SELECT 'gone' INTO OUTFILE $${file}$$ TRUNCATE",
    "SELECT 'gone' INTO OUTFILE \u2018{file}\u2019 TRUNCATE",
    "SELECT $$it's$$ INTO OUTFILE '{file}' TRUNCATE",
    "SELECT 'a\\\\' INTO OUTFILE '{file}' TRUNCATE",
    "(SELECT 'gone') INTO OUTFILE '{file}' TRUNCATE",
    "SELECT 1 UNION ALL SELECT 2 INTO OUTFILE '{file}' APPEND",
    "WITH 'gone' AS g SELECT g INTO OUTFILE '{file}' TRUNCATE",
    "SHOW DATABASES INTO OUTFILE '{file}' APPEND",
    "EXPLAIN SELECT 1 INTO OUTFILE '{file}' TRUNCATE",
    "SELECT 1; SELECT 'gone' INTO OUTFILE '{file}' APPEND",
    "SELECT 'gone' INTO OUTFILE '{new}' AND STDOUT",
    "SELECT 'gone' INTO OUTFILE '{new}' COMPRESSION 'gzip' LEVEL 3",
]

#: Queries with the words where they write nothing, and what they print (TSVRaw).
MENTIONS_OUTFILE = [
    ("SELECT 'INTO OUTFILE' AS a", b"INTO OUTFILE\n"),
    ("SELECT 'it''s INTO OUTFILE' AS a", b"it's INTO OUTFILE\n"),
    ("SELECT 'x\\' INTO OUTFILE ' AS a", b"x' INTO OUTFILE \n"),
    ("SELECT $$INTO OUTFILE 'x'$$ AS a", b"INTO OUTFILE 'x'\n"),
    ("SELECT 1 AS \"into outfile\", 2 AS `INTO OUTFILE` -- INTO OUTFILE 'x'", b"1\t2\n"),
    ("SELECT 1 /* INTO OUTFILE 'x' */ AS outfile", b"1\n"),
]


@pytest.fixture
def settings(settings_factory: SettingsFactory) -> Settings:
    """An embedded database with exnet's (empty) database in it, held by nobody."""
    settings = settings_factory()
    connect(settings, create_database=True).close()
    return settings


@pytest.fixture
def endpoint(settings: Settings) -> Iterator[QueryEndpoint]:
    """This process answering ``exnet sql`` as ``exnet up`` does while it owns the database."""
    client = connect(settings, readonly=True)
    served = QueryEndpoint(settings, client)
    served.start()
    yield served
    served.stop()
    client.close()


@pytest.fixture(params=["direct", "endpoint"])
def route(request: pytest.FixtureRequest, settings: Settings) -> str:
    """Both ways ``run_query`` runs a query: on its own session, or through the endpoint."""
    if request.param == "endpoint":
        request.getfixturevalue("endpoint")
        assert endpoint_file(settings).exists()
    else:
        assert not endpoint_file(settings).exists()
    return str(request.param)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(PRECIOUS)
    return path


def _refusal_is_clear(message: str) -> None:
    assert "`exnet sql` is read-only" in message
    assert "INTO OUTFILE" in message
    assert "--format" in message and "> results.csv" in message


@pytest.mark.parametrize("template", WRITES_A_FILE)
def test_a_query_that_writes_a_file_is_refused(
    route: str, settings: Settings, victim: Path, tmp_path: Path, template: str
) -> None:
    new = tmp_path / "new.out"
    sql = template.format(file=victim, new=new)
    with pytest.raises(UserError) as refused:
        run_query(settings, sql, "TabSeparated")
    _refusal_is_clear(str(refused.value))
    assert not str(refused.value).startswith("query failed")  # exnet's refusal, not ClickHouse's
    assert victim.read_text() == PRECIOUS
    assert not new.exists()


@pytest.mark.parametrize(("sql", "expected"), MENTIONS_OUTFILE)
def test_the_words_in_literals_identifiers_and_comments_pass(
    route: str, settings: Settings, sql: str, expected: bytes
) -> None:
    assert run_query(settings, sql, "TSVRaw") == expected


def test_a_query_that_cannot_be_parsed_keeps_its_own_error_without_outfile(
    route: str, settings: Settings
) -> None:
    with pytest.raises(UserError) as failed:
        run_query(settings, "SELEC 1", "TSV")
    assert "Syntax error" in str(failed.value) and "read-only" not in str(failed.value)


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        (
            "KILL QUERY WHERE 1",
            "it runs queries (DESCRIBE, EXISTS, EXPLAIN, SELECT, SHOW, WITH), not KILL",
        ),
        ("SYSTEM STOP MERGES; SELECT 1", "runs one statement at a time"),
        ("SELECT 1; SELECT 2", "runs one statement at a time"),
        # Statements that take no FORMAT clause: told as what they are, not as the
        # syntax error the appended FORMAT made of them.
        ("SET max_threads = 1", "not SET statements"),
        ("USE system", "not USE statements"),
        ("", "no query to run"),
        ("   \n", "no query to run"),
    ],
)
def test_only_one_read_only_query_runs(route: str, settings: Settings, sql: str, says: str) -> None:
    # chDB under readonly=1 ran both of the first two (measured): the writer's insert
    # killed, or its database's merges stopped, by an analyst's text.
    with pytest.raises(UserError, match=re.escape(says)):
        run_query(settings, sql, "TSV")


@pytest.mark.parametrize(
    "sql", ["SHOW DATABASES", "DESC system.one", "EXISTS TABLE system.one", "EXPLAIN SELECT 1"]
)
def test_every_read_only_kind_of_query_runs(route: str, settings: Settings, sql: str) -> None:
    assert run_query(settings, sql, "TSV")


def test_a_database_never_initialized_is_told_so(settings_factory: SettingsFactory) -> None:
    bare = settings_factory()  # no `exnet init`: chDB opens, exnet's database is not there
    with pytest.raises(UserError) as failed:
        run_query(bare, "SELECT count() FROM session_events", "TSV")
    assert f"the database {bare.clickhouse_database!r} does not exist" in str(failed.value)
    assert "run `exnet init`" in str(failed.value)


def _exnet_sql(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXNET_VAR_DIR": str(settings.var_dir), **(env or {})}
    return subprocess.run(  # noqa: S603  # our own console script
        [EXNET, "sql", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_exnet_sql_exits_2_and_leaves_the_file_alone(
    route: str, settings: Settings, victim: Path
) -> None:
    done = _exnet_sql(settings, f"SELECT 'gone' INTO OUTFILE '{victim}' TRUNCATE")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("error: `exnet sql` is read-only")
    _refusal_is_clear(done.stderr)
    assert victim.read_text() == PRECIOUS
    # The way the message points to.
    kept = _exnet_sql(settings, "SELECT 'INTO OUTFILE' AS a", "--format", "CSV")
    assert kept.returncode == 0 and kept.stdout == '"INTO OUTFILE"\n', kept.stderr


def test_the_endpoint_answers_for_its_own_database_and_path_only(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    client = connect(settings, create_database=True)
    client.command("CREATE TABLE marker (x UInt8) ENGINE = MergeTree ORDER BY x")
    client.command("INSERT INTO marker VALUES (1)")
    client.close()
    reader = connect(settings, readonly=True)
    served = QueryEndpoint(settings, reader)
    served.start()
    try:
        assert run_query(settings, "SELECT count() FROM marker", "TSVRaw") == b"1\n"
        # Another database in the same (held) embedded path: told so, not given this
        # one's answers.
        other = settings.model_copy(update={"clickhouse_database": "exnet_other"})
        with pytest.raises(UserError) as refused:
            run_query(other, "SELECT currentDatabase()", "TSVRaw")
        message = str(refused.value)
        assert f"exnet up (pid {os.getpid()}) holds the embedded database" in message
        assert f"{settings.clickhouse_database!r} only, not 'exnet_other'" in message
        # Another embedded path (another process: chDB opens one path a process) is
        # queried there, not through this endpoint, whose file it finds all the same.
        (settings.var_dir / "elsewhere").mkdir()  # an empty embedded database
        elsewhere = _exnet_sql(
            settings,
            "SELECT count() FROM system.tables WHERE name = 'marker'",
            env={
                "EXNET_CLICKHOUSE_URL": f"chdb://{settings.var_dir / 'elsewhere'}",
                "EXNET_CLICKHOUSE_DATABASE": "default",
            },
        )
        assert elsewhere.returncode == 0, elsewhere.stderr
        assert elsewhere.stdout.splitlines()[-1] == "0", elsewhere.stdout
    finally:
        served.stop()
        reader.close()


def test_a_query_may_open_with_a_comment_and_end_with_one(route: str, settings: Settings) -> None:
    # Saved queries often do: the first was taken for an unknown option, the second
    # hid the query's own FORMAT, which then came twice (a syntax error never typed).
    opened = _exnet_sql(settings, "-- sites, by node\nSELECT 1 AS one", "--format", "TSV")
    assert opened.returncode == 0 and opened.stdout == "1\n", opened.stderr
    closed = _exnet_sql(settings, "SELECT 2 AS two\nFORMAT CSVWithNames\n-- end of report\n")
    assert closed.returncode == 0 and closed.stdout == '"two"\n2\n', closed.stderr


def test_a_query_naming_another_missing_database_is_told_so(route: str, settings: Settings) -> None:
    # Until 2026-12-05 the direct route answered "run `exnet init`" for any unknown
    # database, exnet's own being there (an outside reviewer's find).
    with pytest.raises(UserError) as failed:
        run_query(settings, "SELECT * FROM no_such_database.x", "TSV")
    assert "no_such_database" in str(failed.value)
    assert "UNKNOWN_DATABASE" in str(failed.value)
    assert "exnet init" not in str(failed.value)


@pytest.mark.parametrize("token", [None, "", "0" * 32, "é"])
def test_the_endpoint_answers_only_its_token(
    settings: Settings, endpoint: QueryEndpoint, token: str | None
) -> None:
    served = json.loads(endpoint_file(settings).read_text())
    assert run_query(settings, "SELECT 1", "TSVRaw") == b"1\n"  # with the file's token
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Exnet-Token"] = token
    request = urllib.request.Request(  # noqa: S310  # the loopback endpoint under test
        f"http://127.0.0.1:{int(served['port'])}/",
        data=json.dumps({"query": "SELECT 1", "format": "TSVRaw"}).encode(),
        headers=headers,
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)  # noqa: S310
    assert refused.value.code == HTTPStatus.FORBIDDEN


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("SELECT file('{secret}')", "file()"),
        ("SELECT `file`('{secret}') AS x", "file()"),
        ("SELECT * FROM file('{secret}', 'LineAsString')", "file()"),
        ("DESCRIBE TABLE file('{secret}', 'TSVWithNames')", "file()"),
        ("DESCRIBE TABLE url('http://127.0.0.1:1/x.csv', 'CSVWithNames')", "url()"),
        ("SELECT * FROM s3('http://127.0.0.1:1/b/x.csv')", "s3()"),
        ("WITH (SELECT file('{secret}')) AS x SELECT x", "file()"),
        ("SELECT * FROM executable('cat {secret}', 'TSV', 'x String')", "executable()"),
        ("SELECT * FROM remote('127.0.0.1:1', system.one)", "remote()"),
    ],
)
def test_a_query_that_reaches_outside_the_database_is_refused(
    route: str, settings: Settings, victim: Path, sql: str, names: str
) -> None:
    """readonly=1 let chDB's ``file()`` through (measured: the writer process's
    environment, with the Kafka password in it, and the endpoint's token), and
    ``DESCRIBE TABLE`` of a table function fetched URLs and read files' first lines
    (an outside security review, 2026-12-05)."""
    with pytest.raises(UserError) as refused:
        run_query(settings, sql.format(secret=victim), "TSVRaw")
    assert "reads the analytics database only" in str(refused.value)
    assert f"does not run {names}" in str(refused.value)
    assert PRECIOUS not in str(refused.value)


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        ("SELECT count() FROM numbers(3)", b"3\n"),
        ("SELECT 'file(1)', `x` FROM (SELECT 1 AS x)", b"file(1)\t1\n"),
        ("SELECT count() FROM merge('system', '^one$')", b"1\n"),
        ("SELECT profile FROM (SELECT 1 AS profile)", b"1\n"),
    ],
)
def test_functions_that_stay_inside_the_database_run(
    route: str, settings: Settings, sql: str, rows: bytes
) -> None:
    assert run_query(settings, sql, "TSVRaw") == rows


def test_an_analyst_s_query_is_bounded(route: str, settings: Settings) -> None:
    """In chDB the query runs in the process that writes the database: its time and
    memory are bounded, and readonly=1 keeps the query from lifting the bounds."""
    limits = run_query(
        settings,
        "SELECT getSetting('max_execution_time'), getSetting('max_memory_usage')",
        "TSVRaw",
    )
    assert limits == f"{300}\t{4 * 1024**3}\n".encode()
    with pytest.raises(UserError, match="READONLY|readonly"):
        run_query(settings, "SELECT 1 SETTINGS max_memory_usage = 0", "TSVRaw")


def test_an_analyst_s_query_reads_as_with_final(route: str, settings: Settings) -> None:
    """Right after a drain, an analyst's `SELECT count() FROM node_summary` counted 9
    rows for 3 nodes: each row's older versions, which ClickHouse had yet to merge
    away, and a row the stream had deleted."""
    writer = connect(settings)
    try:
        writer.command(
            f"CREATE TABLE {settings.clickhouse_database}.versions (k String, version UInt64, "
            "is_deleted UInt8) ENGINE = ReplacingMergeTree(version, is_deleted) ORDER BY k"
        )
        for version in (1, 2, 3):  # a part each, as the sink's batches write them
            deleted = int(version == 3)  # noqa: PLR2004
            writer.command(
                f"INSERT INTO {settings.clickhouse_database}.versions "
                f"VALUES ('a', {version}, 0), ('b', {version}, {deleted})"
            )
    finally:
        writer.close()
    sql = "SELECT k, version FROM versions ORDER BY k"
    assert run_query(settings, sql, "TSVRaw") == b"a\t3\n"
