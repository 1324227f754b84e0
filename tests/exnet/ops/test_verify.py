"""`exnet verify` on the known network: the stream-written views against their reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from contracts.registry import load_registry
from sinks.client import connect
from sinks.migrate import apply_migrations, load_registry_tables

from .conftest import Seeded
from .helpers import exnet_subprocess, ops_cli

pytestmark = pytest.mark.clickhouse

if TYPE_CHECKING:
    from tests.conftest import SettingsFactory


def test_equal_views_exit_0(seeded: Seeded) -> None:
    result = ops_cli(seeded.settings, "verify")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("no differences: "), lines
    assert "(node_summary 2, network_summary 1, arm_summary 9, node_daily 15)" in lines[0]


def test_a_changed_row_exits_1_naming_the_row_and_the_column(
    seeded: Seeded, tmp_path: Path
) -> None:
    settings = seeded.settings
    client = connect(settings)
    try:
        # A later version of N02's row that says 9 participants were screened there (4 were).
        client.command(
            "INSERT INTO node_summary SELECT * REPLACE (9 AS screened, 3 AS version) "
            "FROM node_summary FINAL WHERE node_id = 'N02'"
        )
    finally:
        client.close()
    result = ops_cli(settings, "verify")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "node_summary node_id=N02: screened: stream 9, reference 4",
        "1 of 27 rows differ (node_summary 1); the stream-written views do not match the reference",
    ]
    # The installed command, as an operator runs it.
    process = exnet_subprocess(settings, "verify", cwd=tmp_path)
    assert process.returncode == 1, process.stderr
    assert (
        process.stdout.splitlines()[0]
        == "node_summary node_id=N02: screened: stream 9, reference 4"
    )


def test_before_the_streams_first_start_one_line_says_so(
    settings_factory: SettingsFactory, registry_file: Path
) -> None:
    # The database as `exnet init` leaves it: the reference has a row per registered
    # node and the network's, the stream has written none yet. Until 2026-12-05 each
    # was listed as "missing in the stream table" (an outside reviewer's find).
    settings = settings_factory(registry=registry_file)
    client = connect(settings, create_database=True)
    try:
        apply_migrations(client, settings.clickhouse_database)
        registry = load_registry(settings.registry_path)
        load_registry_tables(client, settings.clickhouse_database, registry)
    finally:
        client.close()
    result = ops_cli(settings, "verify")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "the stream-written views hold no rows yet (the reference has 3): the stream "
        "writes them from its first start (`exnet up`); verify after it"
    ]
