"""The ClickHouse side against real embedded ClickHouse (chDB): migrations, writer, views."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import ClickHouseError

from contracts.registry import DEMO_REGISTRY, load_registry
from exnet.settings import Settings
from sinks.client import connect
from sinks.consumer import SINK_TABLES
from sinks.errors import DatabaseLocked
from sinks.migrate import MIGRATIONS, apply_migrations, load_registry_tables
from sinks.writer import ClickHouseWriter
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.clickhouse


@pytest.fixture
def settings(settings_factory: SettingsFactory) -> Settings:
    return settings_factory()


@pytest.fixture
def client(settings: Settings) -> Iterator[Any]:
    client = connect(settings, create_database=True)
    apply_migrations(client, settings.clickhouse_database)
    load_registry_tables(client, settings.clickhouse_database, load_registry(DEMO_REGISTRY))
    yield client
    client.close()


def test_migrations_are_recorded_and_idempotent(client: Any, settings: Settings) -> None:
    database = settings.clickhouse_database
    assert apply_migrations(client, database) == []
    recorded = client.query(f"SELECT id FROM {database}.exnet_migrations FINAL ORDER BY id")
    assert [row[0] for row in recorded.result_rows] == sorted(MIGRATIONS)


def test_insert_columns_match_the_migrated_tables(client: Any, settings: Settings) -> None:
    for table, columns in SINK_TABLES.items():
        described = client.query(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
            parameters={"db": settings.clickhouse_database, "t": table},
        )
        assert {row[0] for row in described.result_rows} == set(columns), table


def _row(event_id: str, score: int) -> list[Any]:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    return [
        event_id,
        "assessment/1",
        now,
        "N01",
        "N01-S01",
        "P-0123456789",
        "PHQ9",
        score,
        0,
        60,
        now.date(),
        "exnet.assessment",
        0,
        1,
        now,
    ]


def test_a_replayed_batch_is_a_no_op_and_replays_collapse(client: Any) -> None:
    writer = ClickHouseWriter(client, client.database)
    writer.setup({"assessment_events": SINK_TABLES["assessment_events"]})
    columns = SINK_TABLES["assessment_events"]
    writer.write("assessment_events", columns, [_row("e1", 5), _row("e2", 6)], token="t:1-2")
    writer.write("assessment_events", columns, [_row("e1", 5), _row("e2", 6)], token="t:1-2")
    assert client.query("SELECT count() FROM assessment_events").result_rows == [(2,)]
    # The same events in another batch (other boundaries after a crash): one row each with FINAL.
    writer.write("assessment_events", columns, [_row("e2", 6), _row("e3", 7)], token="t:2-3")
    assert client.query("SELECT count() FROM assessment_events FINAL").result_rows == [(3,)]


def test_a_readonly_client_cannot_write(settings: Settings, client: Any) -> None:
    client.close()
    reader = connect(settings, readonly=True)
    try:
        with pytest.raises(Exception, match="readonly"):
            reader.command("INSERT INTO nodes (node_id, name, loaded_at) VALUES ('X', 'x', now())")
        assert reader.query("SELECT count() FROM nodes FINAL").result_rows == [(3,)]
    finally:
        reader.close()


def test_reference_views_of_an_empty_network_count_zero_never_null(client: Any) -> None:
    nodes = client.query(
        "SELECT node_id, screened, exercise_minutes, assays FROM node_summary_reference "
        "ORDER BY node_id"
    ).result_rows
    assert nodes == [("N01", 0, 0.0, 0), ("N02", 0, 0.0, 0), ("N03", 0, 0.0, 0)]
    network = client.query(
        "SELECT randomized, sessions_attended, specimens FROM network_summary_reference"
    )
    assert network.result_rows == [(0, 0, 0)]
    assert client.query("SELECT count() FROM arm_summary_reference").result_rows == [(0,)]
    assert client.query("SELECT count() FROM node_daily_reference").result_rows == [(0,)]


PRECISE = 5.91153435001304e-06


def _assay_json(value: float, unit: str) -> bytes:
    from contracts.validation import Accepted, Origin, Validator
    from contracts.wire import validated_message

    raw = (
        '{"schema":"assay/1","event_id":"9a4b5c6d-7e8f-4091-9253-1a2b3c4d5e6f",'
        '"occurred_at":"2025-03-17T07:12:00.250001+02:00","node_id":"N01","site_id":"N01-S01",'
        '"participant_id":"P-3f9c2a7b1e","specimen_id":"SP-1","specimen_type":"serum",'
        f'"timepoint":"baseline","analyte":"IL6","value":{value!r},"unit":"{unit}",'
        '"lab_id":"L1","below_lloq":false}'
    ).encode()
    outcome = Validator(load_registry(DEMO_REGISTRY)).validate_message(
        raw, b"P-3f9c2a7b1e", Origin("exnet.assay", 2, 7), datetime(2026, 6, 1, tzinfo=UTC)
    )
    assert isinstance(outcome, Accepted), outcome
    return validated_message(outcome, raw, None)[1]


def test_json_rows_keep_every_value_as_the_stream_wrote_it(client: Any) -> None:
    writer = ClickHouseWriter(client, client.database)
    # ClickHouse's fast float parser reads 5.91153435001304e-6 one bit off (as it does
    # about one in sixteen random doubles). (A value its unit's factor would overflow,
    # 1e306 ng/mL, is refused by the contract since 2026-12-02: it was stored as inf.)
    writer.write_json("assay_events", [_assay_json(PRECISE, "pg/mL")], token="j:1")
    rows = client.query(
        "SELECT event_id, occurred_at, value, value_canonical, unit_canonical, source_topic, "
        "source_partition, source_offset, ingested_at > now64() - 60 "
        "FROM assay_events ORDER BY event_id"
    ).result_rows
    (precise,) = rows
    assert precise[2] == precise[3] == PRECISE
    assert precise[1] == datetime(2025, 3, 17, 5, 12, 0, 250001)  # UTC, to the microsecond
    assert precise[4:] == ("pg/mL", "exnet.assay", 2, 7, True)


_WRITER_WITHOUT_PANDAS = """
import sys
from datetime import UTC, datetime
from pathlib import Path

from contracts import headers as H
from contracts.registry import DEMO_REGISTRY, load_registry
from exnet.settings import load_settings
from sinks.client import connect
from sinks.consumer import ROW_TABLES
from sinks.migrate import apply_migrations, load_registry_tables
from sinks.rows import rejected_row
from sinks.writer import ClickHouseWriter

settings = load_settings(var_dir=Path(sys.argv[1]))
client = connect(settings, create_database=True)
apply_migrations(client, settings.clickhouse_database)
load_registry_tables(client, settings.clickhouse_database, load_registry(DEMO_REGISTRY))
writer = ClickHouseWriter(client, settings.clickhouse_database)
writer.setup(ROW_TABLES)
headers = {
    H.REASON: b"invalid_json",
    H.SOURCE_TOPIC: b"exnet.session",
    H.SOURCE_PARTITION: b"0",
    H.SOURCE_OFFSET: b"7",
    H.REJECTED_AT: b"2026-06-01T08:00:00.123456+00:00",
}
row = rejected_row(b"{nope", headers, datetime.now(UTC))
writer.write("rejected_events", ROW_TABLES["rejected_events"], [row], token="t:7")
written = client.query(
    "SELECT reason, source_offset, rejected_at FROM rejected_events"
).result_rows
print(written)
print(sorted(m for m in sys.modules if m.split(".")[0] == "pandas"))
"""


def test_the_writer_never_loads_pandas(tmp_path: Any) -> None:
    """Every insert goes as JSON: clickhouse-connect's row insert would import pandas
    (42 MB of the writer's memory) for the registry, migration and rejected rows."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _WRITER_WITHOUT_PANDAS, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    rows, modules = done.stdout.splitlines()[-2:]
    assert "('invalid_json', 7, datetime.datetime(2026, 6, 1, 8, 0, 0, 123000" in rows
    assert modules == "[]"


def test_m0007_redacts_rows_written_before_that_kept_a_failed_field_s_text(
    client: Any, settings: Settings
) -> None:
    """Rows of the earlier rule that kept a malformed field's text, or a message whose
    fields were not judged, lose their payload; rows whose failing values were well
    formed, and rows already redacted, stay as they are."""
    from sinks.migrations import m0007_rejected_failed_text
    from sinks.rows import REJECTED_COLUMNS

    def rejected(offset: int, reason: str, payload: bytes, failed: list[str]) -> list[Any]:
        errors = [
            {"path": path, "type": kind, "message": "x"}
            for path, _, kind in (f.partition(":") for f in failed)
        ]
        detail = json.dumps({"reason": reason, "message": "x", "errors": errors})
        now = datetime.now(UTC)
        return [
            reason, detail, "x", "exnet.session", 0, offset, None, "N01", "N01-S01",
            payload, "digest", now, now,
        ]  # fmt: skip

    texts = b'{"schema":"session/1","status":"Jane Doe DOB 1970","rpe":99}'
    numbers = b'{"schema":"session/1","status":"attended","rpe":99}'
    listed = b'{"schema":"session/1","adverse_event":["Jane"],"rpe":3}'
    done = b'{"schema":"session/1","participant_id":"<redacted>","rpe":3}'
    whole = b'{"schema":"session/1","rpe":3}'
    future = b'{"schema":"session/1","occurred_at":"2099-01-01T00:00:00Z"}'
    ruled = b'{"schema":"enrollment/1","status":"screened","reason":"participant_choice"}'
    other_topic = b'{"schema":"enrollment/1","status":"Jane Doe"}'
    writer = ClickHouseWriter(client, client.database)
    writer.setup({"rejected_events": REJECTED_COLUMNS})
    rows = [
        rejected(1, "invalid_field", texts, ["status:enum", "rpe:less_than_equal"]),
        rejected(2, "invalid_field", numbers, ["rpe:less_than_equal"]),
        rejected(3, "invalid_field", listed, ["adverse_event.0:model_type"]),
        rejected(4, "invalid_field", done, ["participant_id:string_pattern_mismatch"]),
        rejected(5, "invalid_field", whole, [":value_error"]),
        rejected(6, "future_timestamp", future, ["occurred_at:future_timestamp"]),
        rejected(7, "invalid_field", future, ["occurred_at:before_earliest_date"]),
        rejected(8, "invalid_field", ruled, ["reason:cross_field"]),
        rejected(9, "unknown_schema", other_topic, ["schema:unknown_schema"]),
    ]
    writer.write("rejected_events", REJECTED_COLUMNS, rows, token="m0007")

    for statement in m0007_rejected_failed_text.statements(settings.clickhouse_database):
        client.command(statement)

    stored = client.query("SELECT source_offset, payload FROM rejected_events FINAL ORDER BY 1")
    redacted = b'"<redacted>"'
    assert [(o, p.encode()) for o, p in stored.result_rows] == [
        (1, redacted),
        (2, numbers),
        (3, redacted),
        (4, done),
        (5, whole),
        (6, future),
        (7, future),
        (8, ruled),
        (9, redacted),
    ]


def test_m0009_withholds_rows_written_before_that_named_an_unknown_field(
    client: Any, settings: Settings
) -> None:
    """Rows that kept an unknown field's name or a time before the earliest date lose
    payload, message and detail's errors; other rows stay as they are."""
    from sinks.migrations import m0009_rejected_unknown_names
    from sinks.rows import REJECTED_COLUMNS

    def rejected(offset: int, reason: str, payload: bytes, kind: str) -> list[Any]:
        errors = [{"path": "Ann Smith", "type": kind, "message": "x"}]
        detail = json.dumps({"reason": reason, "message": "Ann Smith: x", "errors": errors})
        now = datetime.now(UTC)
        return [
            reason, detail, "Ann Smith: x", "exnet.session", 0, offset, None, "N01",
            "N01-S01", payload, "digest", now, now,
        ]  # fmt: skip

    named = b'{"schema":"session/1","Ann Smith":"<redacted>","rpe":3}'
    plain = b'{"schema":"session/1","rpe":99}'
    writer = ClickHouseWriter(client, client.database)
    writer.setup({"rejected_events": REJECTED_COLUMNS})
    rows = [
        rejected(1, "invalid_field", named, "extra_forbidden"),
        rejected(2, "too_large", named, "too_large"),  # the name in the payload only
        rejected(3, "invalid_field", plain, "before_earliest_date"),
        rejected(4, "invalid_field", plain, "less_than_equal"),
    ]
    writer.write("rejected_events", REJECTED_COLUMNS, rows, token="m0009")

    for _ in range(2):  # applied again after an interruption: the same
        for statement in m0009_rejected_unknown_names.statements(settings.clickhouse_database):
            client.command(statement)

    stored = client.query(
        "SELECT source_offset, reason, payload, message, detail FROM rejected_events FINAL "
        "ORDER BY 1"
    ).result_rows
    for offset, reason, payload, message, detail in stored[:3]:
        assert payload == '"<redacted>"' and "Ann" not in message + detail, offset
        assert json.loads(detail) == {"reason": reason, "message": message, "errors": []}
    assert stored[3][2:4] == (plain.decode(), "Ann Smith: x")


# --- another process holds the embedded database ----------------------------------------

#: Holds ``EXNET_VAR_DIR``'s embedded database until its standard input closes.
_HOLD = (
    "import sys\n"
    "from exnet.settings import load_settings\n"
    "from sinks.client import connect\n"
    "client = connect(load_settings(), create_database=True)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)
#: Opens it: what a standby writer does every few seconds.
_OPEN = (
    "import sys\n"
    "from exnet.settings import load_settings\n"
    "from sinks.client import connect\n"
    "from sinks.errors import DatabaseLocked\n"
    "try:\n"
    "    connect(load_settings())\n"
    "except DatabaseLocked as exc:\n"
    "    print('refused:', exc, file=sys.stderr)\n"
)


@pytest.fixture
def held(settings: Settings) -> Iterator[dict[str, str]]:
    """The environment of ``settings``, its embedded database held by another process."""
    env = {
        **os.environ,
        "EXNET_VAR_DIR": str(settings.var_dir),
        "EXNET_TOPIC_PREFIX": settings.topic_prefix,
        "EXNET_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
    }
    holder = subprocess.Popen(  # noqa: S603  # this interpreter, our own code
        [sys.executable, "-c", _HOLD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdin is not None and holder.stdout is not None  # noqa: S101  # PIPE
    try:
        assert holder.stdout.readline() == b"held\n"
        yield env
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0


def test_a_held_database_is_refused_in_exnets_words_only(held: dict[str, str]) -> None:
    """chDB writes its own exception to descriptor 2 before raising it: a standby
    writer's log had that line every few seconds."""
    tried = subprocess.run(  # noqa: S603  # this interpreter, our own code
        [sys.executable, "-c", _OPEN], env=held, capture_output=True, timeout=120, check=True
    )
    err = tried.stderr.decode()
    assert "refused: the embedded database" in err
    assert "Cannot lock file" not in err
    assert "\x1b" not in err


def test_a_query_waits_for_a_database_held_a_moment_then_says_who_may_hold_it(
    settings: Settings,
) -> None:
    """`exnet sql` beside an `exnet status` (which holds the embedded database while it
    reads, and serves no queries) failed at once, told to use `exnet sql` (an outside
    operator's find): it waits for the database, 10 s at most, then names who holds it."""
    env = {**os.environ, "EXNET_VAR_DIR": str(settings.var_dir)}
    exnet = str(Path(sys.executable).with_name("exnet"))
    for released_after in (2.0, None):
        holder = subprocess.Popen(  # noqa: S603  # this interpreter, our own code
            [sys.executable, "-c", _HOLD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert holder.stdin is not None and holder.stdout is not None  # noqa: S101  # PIPE
        try:
            assert holder.stdout.readline() == b"held\n"
            query = subprocess.Popen(  # noqa: S603  # our own command
                [exnet, "sql", "SELECT 41 + 1"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            if released_after is not None:
                time.sleep(released_after)
                holder.stdin.close()
            out, err = query.communicate(timeout=120)
        finally:
            if not holder.stdin.closed:
                holder.stdin.close()
            assert holder.wait(timeout=60) == 0
        said = " ".join(err.decode().split())
        if released_after is not None:
            assert query.returncode == 0, said
            assert out.decode().split()[-1] == "42"
        else:
            assert query.returncode != 0
            assert "held by another process that answers no queries, for over 10 s" in said
            assert "an `exnet status`, `report` or `verify` still running" in said


@pytest.mark.kafka
def test_init_while_up_holds_the_database_creates_the_topics_and_says_so(
    held: dict[str, str],
) -> None:
    """`exnet init` is idempotent: a deploy may run it beside a running `exnet up`,
    whose writer migrates the database it holds."""
    tried = subprocess.run(  # noqa: S603  # our own command
        [str(Path(sys.executable).with_name("exnet")), "init"],
        env=held,
        capture_output=True,
        timeout=120,
    )
    out = " ".join((tried.stdout.decode() + tried.stderr.decode()).split())  # unwrapped
    assert tried.returncode == 0, out
    assert "topics: 12 created" in out
    assert "not checked, the embedded database" in out and "is held by another process" in out
    assert "Cannot lock file" not in out


def test_other_output_while_chdb_opens_is_passed_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Only chDB's lock message is dropped: whatever else reaches descriptor 2 while
    the database opens (another thread's log line) is written out after."""

    def refused(**kwargs: Any) -> None:
        os.write(2, b"before\nCode: 76. DB::Exception: Cannot lock file /x/status. ")
        os.write(2, b"Another server instance in same directory is already running.\n")
        os.write(2, b"another thread's line\n")
        raise ClickHouseError("Cannot lock file")

    monkeypatch.setattr(clickhouse_connect, "get_client", refused)
    with pytest.raises(DatabaseLocked):
        connect(settings)
    assert capfd.readouterr().err == "before\nanother thread's line\n"
