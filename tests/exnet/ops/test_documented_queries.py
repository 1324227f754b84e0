"""Every query docs/analytics.md shows analysts runs, on a database holding the known network."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import pytest

from exnet.ops._sql import query_rows

from .conftest import Seeded

ANALYTICS: Final = Path(__file__).resolve().parents[3] / "docs" / "analytics.md"
QUERIES: Final = re.findall(r"```sql\n(.*?)```", ANALYTICS.read_text(encoding="utf-8"), re.S)


def test_the_page_shows_queries() -> None:
    assert len(QUERIES) >= 5


@pytest.mark.clickhouse
@pytest.mark.parametrize("query", QUERIES, ids=[f"query{n + 1}" for n in range(len(QUERIES))])
def test_each_documented_query_runs(seeded: Seeded, query: str) -> None:
    rows = query_rows(seeded.settings, query)
    assert rows, "every documented query has something to show on the known network"


@pytest.mark.clickhouse
def test_the_biomarker_query_gives_a_geometric_mean_ratio(seeded: Seeded) -> None:
    [query] = [q for q in QUERIES if "geometric_mean_ratio" in q]
    rows = query_rows(seeded.settings, query)
    for row in rows:
        ratio, baseline, post = row["geometric_mean_ratio"], row["mean_baseline"], row["mean_post"]
        assert ratio is None or ratio > 0
        # One participant per arm: the ratio is then exactly post / baseline.
        if row["participants"] == 1 and baseline:
            assert ratio == pytest.approx(post / baseline, rel=1e-3)
