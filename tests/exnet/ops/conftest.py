"""Known input for the operators' and analysts' tools, written straight into migrated tables.

:func:`seeded` builds a small network (two nodes, three sites, eight
participants) whose every figure the tests know by heart; see the comments of
:data:`PARTICIPANTS` and the ``EXPECTED_*`` constants.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from contracts.registry import load_registry
from contracts.views import VIEW_KEYS
from exnet.settings import Settings
from sinks.client import connect
from sinks.migrate import apply_migrations, load_registry_tables
from sinks.rows import FACT_COLUMNS, FACT_TABLES, REJECTED_COLUMNS, REJECTED_TABLE

if TYPE_CHECKING:
    from tests.conftest import SettingsFactory

REGISTRY_YAML = """\
nodes:
  - id: N01
    name: North Medical Center
    sites:
      - {id: N01-S01, name: Downtown Clinic}
      - {id: N01-S02, name: Riverside Health}
  - id: N02
    name: South Academic Hospital
    sites:
      - {id: N02-S01, name: Harbour Clinic}
"""

#: When each site's rows were written, before "now": N01-S01 just now (inside
#: the 5-minute window), N02-S01 3 h ago, N01-S02 2 days ago (stale at 24 h).
SITE_INGESTED_AGO = {
    "N01-S01": timedelta(minutes=2),
    "N01-S02": timedelta(days=2),
    "N02-S01": timedelta(hours=3),
}
SITE_NODE = {"N01-S01": "N01", "N01-S02": "N01", "N02-S01": "N02"}

#: participant -> (site, arm or None, enrollment statuses, week of randomization)
PARTICIPANTS: dict[str, tuple[str, tuple[str, str] | None, tuple[str, ...], int]] = {
    "P-0000000001": (
        "N01-S01",
        ("aerobic", "none"),
        ("screened", "consented", "randomized", "completed"),
        0,
    ),
    "P-0000000002": ("N01-S01", ("aerobic", "none"), ("screened", "consented", "randomized"), 0),
    "P-0000000003": (
        "N01-S01",
        ("control", "none"),
        ("screened", "consented", "randomized", "withdrawn"),
        1,
    ),
    "P-0000000004": (
        "N01-S02",
        ("resistance", "psychotherapy"),
        ("screened", "consented", "randomized"),
        2,
    ),
    "P-0000000005": ("N02-S01", ("aerobic", "none"), ("screened", "consented", "randomized"), 0),
    "P-0000000006": ("N02-S01", ("combined", "none"), ("screened", "consented", "randomized"), 2),
    "P-0000000007": ("N02-S01", None, ("screened",), 0),
    "P-0000000008": ("N02-S01", None, ("screened", "consented"), 0),
}

#: participant -> sessions (status, minutes)
SESSIONS: dict[str, list[tuple[str, float | None]]] = {
    "P-0000000001": [("attended", 30.0)] * 3 + [("missed", None)],
    "P-0000000002": [("attended", 40.0)] * 2 + [("cancelled", None)],
    "P-0000000004": [("attended", 45.0)] * 2,
    "P-0000000005": [("attended", 50.0), ("missed", None)],
}

#: participant -> (analyte, unit, baseline value, post value), serum
ASSAYS: dict[str, list[tuple[str, str, float, float]]] = {
    "P-0000000001": [("BDNF", "ng/mL", 20.0, 25.0), ("IL6", "pg/mL", 2.0, 1.5)],
    "P-0000000002": [("BDNF", "pg/mL", 18000.0, 20000.0)],  # pg/mL: 18 -> 20 ng/mL
    "P-0000000003": [("BDNF", "ng/mL", 21.0, 21.5)],
    "P-0000000005": [("BDNF", "ng/mL", 22.0, 24.0)],
}
_CANONICAL = {("BDNF", "ng/mL"): 1.0, ("BDNF", "pg/mL"): 0.001, ("IL6", "pg/mL"): 1.0}

#: participant -> PHQ9 (week, score)
ASSESSMENTS: dict[str, list[tuple[int, int]]] = {
    "P-0000000001": [(0, 20), (12, 8)],  # responds (8 <= 10), no remission
    "P-0000000002": [(0, 18), (12, 4)],  # responds and remits (PHQ9 < 5)
    "P-0000000003": [(0, 20), (12, 18)],  # neither
    "P-0000000004": [(0, 16), (4, 10)],  # neither
    "P-0000000005": [(0, 22)],  # no later assessment: not evaluable
}

#: node_summary funnel: node -> screened, consented, randomized, completed, withdrawn
EXPECTED_FUNNEL = {"N01": (4, 4, 4, 1, 1), "N02": (4, 3, 2, 0, 0)}
#: network arm -> randomized, evaluable, responders, remitters
EXPECTED_ARMS = {
    ("aerobic", "none"): (3, 2, 2, 1),
    ("control", "none"): (1, 1, 0, 0),
    ("resistance", "psychotherapy"): (1, 1, 0, 0),
    ("combined", "none"): (1, 0, 0, 0),
}


@dataclass(frozen=True)
class Rejection:
    reason: str
    node_id: str | None
    site_id: str | None
    event_id: str | None
    errors: tuple[tuple[str, str, str], ...]  # (path, type, message)
    ago: timedelta
    topic: str
    partition: int
    offset: int
    payload: bytes

    @property
    def message(self) -> str:
        return "; ".join(f"{p}: {m}" if p else m for p, _, m in self.errors)


REJECTIONS = (
    Rejection(
        "invalid_field",
        "N01",
        "N01-S01",
        "6d1f8f4e-0000-4000-8000-000000000001",
        (
            ("session_number", "less_than_equal", "Input should be less than or equal to 500"),
            ("duration_min", "missing", "required when status is attended"),
        ),
        timedelta(minutes=50),
        "exnet.session",
        0,
        5,
        b'{"schema":"session/1","session_number":900}',
    ),
    Rejection(
        "unknown_site",
        "N01",
        "N01-S09",
        "6d1f8f4e-0000-4000-8000-000000000002",
        (("site_id", "unknown_site", "site 'N01-S09' is not registered"),),
        timedelta(hours=2),
        "exnet.enrollment",
        1,
        7,
        b'{"schema":"enrollment/1","site_id":"N01-S09"}',
    ),
    Rejection(
        "malformed_json",
        None,
        None,
        None,
        (("", "json_invalid", "not JSON: unexpected character"),),
        timedelta(days=3),
        "exnet.assay",
        0,
        2,
        b"{not json \xff",
    ),
    Rejection(
        "invalid_field",
        "N02",
        "N02-S01",
        "6d1f8f4e-0000-4000-8000-000000000004",
        (("score", "less_than_equal", "PHQ9 scores lie in 0..27"),),
        timedelta(minutes=30),
        "exnet.assessment",
        2,
        11,
        b'{"schema":"assessment/1","score":99}',
    ),
)


@dataclass(frozen=True)
class Seeded:
    settings: Settings
    now: datetime
    #: site -> accepted rows written for it (all tables)
    rows_per_site: dict[str, int]
    #: table -> rows written within the last 5 minutes / hour
    rows_5m: dict[str, int]
    rows_1h: dict[str, int]


def _event_id() -> str:
    return str(uuid.uuid4())


def _fact_rows(now: datetime) -> dict[str, list[dict[str, Any]]]:
    start = now - timedelta(weeks=20)  # a Monday is not needed: weeks are relative
    start = start - timedelta(days=start.weekday())  # ... but aligned, so weeks are exact
    start = start.replace(hour=9, minute=0, second=0, microsecond=0)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in FACT_TABLES}
    offset = 0

    def base(event_type: str, pid: str, at: datetime) -> dict[str, Any]:
        nonlocal offset
        site = PARTICIPANTS[pid][0]
        offset += 1
        return {
            "event_id": _event_id(),
            "schema": f"{event_type}/1",
            "occurred_at": at,
            "node_id": SITE_NODE[site],
            "site_id": site,
            "participant_id": pid,
            "utc_offset_min": 0,
            "local_date": at.date(),
            "source_topic": f"exnet.{event_type}",
            "source_partition": 0,
            "source_offset": offset,
            "ingested_at": now - SITE_INGESTED_AGO[site],
        }

    for pid, (_site, arm, statuses, week) in PARTICIPANTS.items():
        randomized_at = start + timedelta(weeks=week, days=1)
        for index, status in enumerate(statuses):
            at = randomized_at + timedelta(hours=index - 2 if status != "completed" else 24 * 90)
            if status == "withdrawn":
                at = randomized_at + timedelta(days=20)
            row = base("enrollment", pid, at)
            randomized = status == "randomized"
            row.update(
                status=status,
                modality=arm[0] if randomized and arm else None,
                adjunct=arm[1] if randomized and arm else "none",
                age_band="25-34",
                sex="female",
                reason="participant_choice" if status == "withdrawn" else None,
            )
            rows["enrollment"].append(row)
        for number, (status, minutes) in enumerate(SESSIONS.get(pid, []), start=1):
            row = base("session", pid, randomized_at + timedelta(days=2 * number))
            row.update(
                session_number=number,
                status=status,
                modality=arm[0] if arm and arm[0] != "control" else "aerobic",
                supervised=True,
                duration_min=minutes,
                mean_hr_pct_max=70.0 if minutes else None,
                rpe=13 if minutes else None,
                adverse_event=None,
            )
            rows["session"].append(row)
        for analyte, unit, baseline, post in ASSAYS.get(pid, []):
            for timepoint, value, days in (("baseline", baseline, 0), ("post", post, 84)):
                row = base("assay", pid, randomized_at + timedelta(days=days))
                factor = _CANONICAL[(analyte, unit)]
                row.update(
                    specimen_id=f"S-{pid[-4:]}-{timepoint}",
                    specimen_type="serum",
                    timepoint=timepoint,
                    analyte=analyte,
                    value=value,
                    unit=unit,
                    lab_id="LAB-1",
                    batch_id=None,
                    below_lloq=False,
                    value_canonical=value * factor,
                    unit_canonical="ng/mL" if analyte == "BDNF" else "pg/mL",
                )
                rows["assay"].append(row)
        for week_number, score in ASSESSMENTS.get(pid, []):
            row = base("assessment", pid, randomized_at + timedelta(weeks=week_number))
            row.update(instrument="PHQ9", score=score, week=week_number)
            rows["assessment"].append(row)
    return rows


def seed(settings: Settings, now: datetime) -> Seeded:
    """Migrate the database of ``settings`` and write the known rows; the client is closed."""
    registry_path = settings.registry_path
    client = connect(settings, create_database=True)
    db = settings.clickhouse_database
    try:
        apply_migrations(client, db)
        load_registry_tables(client, db, load_registry(registry_path))
        facts = _fact_rows(now)
        for event_type, table in FACT_TABLES.items():
            columns = FACT_COLUMNS[event_type]
            data = [[row[c] for c in columns] for row in facts[event_type]]
            if data:
                client.insert(
                    f"{db}.{table}", data, column_names=list(columns), settings={"async_insert": 0}
                )
        rejected = [
            [
                r.reason,
                _detail(r),
                r.message,
                r.topic,
                r.partition,
                r.offset,
                r.event_id,
                r.node_id,
                r.site_id,
                r.payload,
                hashlib.sha256(r.payload).hexdigest(),
                now - r.ago,
                now - r.ago,
            ]
            for r in REJECTIONS
        ]
        client.insert(
            f"{db}.{REJECTED_TABLE}",
            rejected,
            column_names=list(REJECTED_COLUMNS),
            settings={"async_insert": 0},
        )
        _seed_views(client, db, now)
    finally:
        client.close()
    per_site: dict[str, int] = dict.fromkeys(SITE_NODE, 0)
    for rows in facts.values():
        for row in rows:
            per_site[row["site_id"]] += 1
    rows_5m = {FACT_TABLES[t]: 0 for t in FACT_TABLES}
    rows_1h = dict(rows_5m)
    for event_type, rows in facts.items():
        for row in rows:
            ago = now - row["ingested_at"]
            rows_5m[FACT_TABLES[event_type]] += ago <= timedelta(minutes=5)
            rows_1h[FACT_TABLES[event_type]] += ago <= timedelta(hours=1)
    rows_5m[REJECTED_TABLE] = sum(r.ago <= timedelta(minutes=5) for r in REJECTIONS)
    rows_1h[REJECTED_TABLE] = sum(r.ago <= timedelta(hours=1) for r in REJECTIONS)
    return Seeded(settings, now, per_site, rows_5m, rows_1h)


#: What the stream-written summaries hold after :func:`seed` (the highest versions):
#: the figures of the facts, as the stream computes them (EXPECTED_FUNNEL).
VIEW_RANDOMIZED: Final = {"N01": 4, "N02": 2, "": 6}


def _seed_views(client: Any, db: str, now: datetime) -> None:
    """The four stream-written views as the stream would have written them: their
    reference's rows, version 2; and an older version 1 of N01's node_summary row (the
    higher version wins under FINAL)."""
    from contracts.views import SUMMARY_COLUMNS

    stale = [0 if c != "randomized" else 1 for c in SUMMARY_COLUMNS]
    client.insert(
        f"{db}.node_summary",
        [["N01", "North Medical Center", *stale, now, 1, 0]],
        column_names=[
            "node_id",
            "node_name",
            *SUMMARY_COLUMNS,
            "updated_at",
            "version",
            "is_deleted",
        ],
        settings={"async_insert": 0},
    )
    for view in VIEW_KEYS:
        client.command(
            f"INSERT INTO {db}.{view} SELECT *, 2, 0 FROM {db}.{view}_reference",
            settings={"async_insert": 0},
        )


def _detail(r: Rejection) -> str:
    import json

    return json.dumps(
        {
            "reason": r.reason,
            "message": r.message,
            "errors": [{"path": p, "type": t, "message": m} for p, t, m in r.errors],
        }
    )


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY_YAML, encoding="utf-8")
    return path


@pytest.fixture
def seeded(settings_factory: SettingsFactory, registry_file: Path) -> Iterator[Seeded]:
    """A migrated embedded database holding the known network, and its settings."""
    settings = settings_factory(registry=registry_file)
    now = datetime.now(UTC).replace(microsecond=0)
    yield seed(settings, now)
