"""``exnet sql``: a query's own FORMAT clause wins over the command's format."""

from __future__ import annotations

import pytest

from sinks.query import clickhouse_message, own_format


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1 AS x FORMAT JSONEachRow", ("SELECT 1 AS x", "JSONEachRow")),
        ("select 1 format CSV;", ("select 1", "CSV")),
        ("SELECT 1\n  FORMAT  Pretty ;  \n", ("SELECT 1", "Pretty")),
        ("SELECT 1;", ("SELECT 1", None)),
        ("SELECT 1", ("SELECT 1", None)),
        ("SELECT 'FORMAT' AS f", ("SELECT 'FORMAT' AS f", None)),
        (
            "SELECT formatDateTime(now(), '%F') AS d",
            ("SELECT formatDateTime(now(), '%F') AS d", None),
        ),
        # Comments after the clause (a saved query's last line) do not hide it.
        (
            "SELECT node_id\nFROM node_summary\nFORMAT CSVWithNames\n-- end of report\n",
            ("SELECT node_id\nFROM node_summary", "CSVWithNames"),
        ),
        ("SELECT 1 AS a FORMAT CSV; /* c /* nested */ c */", ("SELECT 1 AS a", "CSV")),
        ("SELECT 1; -- done", ("SELECT 1", None)),
        # Comment marks in quotes are code.
        ("SELECT '-- FORMAT CSV'", ("SELECT '-- FORMAT CSV'", None)),
        ("SELECT 'a' AS `x /* y` FORMAT TSV", ("SELECT 'a' AS `x /* y`", "TSV")),
        ("SELECT 'it''s -- no' FORMAT TSV -- yes", ("SELECT 'it''s -- no'", "TSV")),
        ("SELECT $$--$$ FORMAT TSV", ("SELECT $$--$$", "TSV")),
        # A SETTINGS clause after it stays (to be refused as any other, read-only).
        (
            "SELECT 1 FORMAT JSONEachRow SETTINGS max_threads = 1",
            ("SELECT 1 SETTINGS max_threads = 1", "JSONEachRow"),
        ),
        (
            "SELECT 1 SETTINGS max_threads = 1 FORMAT CSV",
            ("SELECT 1 SETTINGS max_threads = 1", "CSV"),
        ),
    ],
)
def test_own_format_is_split_off(sql: str, expected: tuple[str, str | None]) -> None:
    assert own_format(sql) == expected


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        (
            "Code: 164. DB::Exception: Code: 164. DB::Exception: Cannot modify 'join_use_nulls' "
            "setting in readonly mode. (READONLY) (version 26.9.2.1). (READONLY)",
            "Code: 164. DB::Exception: Cannot modify 'join_use_nulls' setting in readonly "
            "mode. (READONLY)",
        ),
        (
            "Code: 73. DB::Exception: Code: 73. DB::Exception: Code: 73. DB::Exception: Unknown "
            "format Nope. Maybe you meant: ['One','Npy']. (UNKNOWN_FORMAT) (version 26.9.2.1). "
            "(UNKNOWN_FORMAT) (version 26.9.2.1). (UNKNOWN_FORMAT)",
            "Code: 73. DB::Exception: Unknown format Nope. Maybe you meant: ['One','Npy']. "
            "(UNKNOWN_FORMAT)",
        ),
        (  # said once already (a server over HTTP): unchanged
            "Code: 47. DB::Exception: Unknown expression identifier `x`. (UNKNOWN_IDENTIFIER)",
            "Code: 47. DB::Exception: Unknown expression identifier `x`. (UNKNOWN_IDENTIFIER)",
        ),
    ],
)
def test_a_clickhouse_error_is_said_once(raised: str, said: str) -> None:
    assert clickhouse_message(RuntimeError(raised)) == said
