"""``exnet sql``: a query's own FORMAT clause wins over the command's format."""

from __future__ import annotations

import pytest

from sinks.query import own_format


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
    ],
)
def test_own_format_is_split_off(sql: str, expected: tuple[str, str | None]) -> None:
    assert own_format(sql) == expected
