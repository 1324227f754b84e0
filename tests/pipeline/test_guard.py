"""The invalid-ratio guard against real traffic: one site's flood of bad data is rejected
and alerted on while every other site's events flow; a registry that matches no site
still stops the worker before it commits anything."""

from __future__ import annotations

import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from contracts import load_registry
from contracts.registry import DEMO_REGISTRY
from contracts.topics import Topic
from tests.pipeline.events import EventMaker
from tests.pipeline.harness import Pipeline
from tests.ports import free_ports

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
FLOOD_SITE = "N01-S01"
FLOOD = 20_000
#: Valid sessions per other site.
NORMAL = 150


class Scraper(threading.Thread):
    """Reads ``/metrics`` every 0.2 s while the process runs; keeps the last answer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.last = ""
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:  # noqa: S310
                    self.last = answer.read().decode()
            except OSError:
                continue

    def site_counters(self) -> dict[str, dict[tuple[str, str], float]]:
        """metric name -> (node_id, site_id) -> value, summed over other labels."""
        counters: dict[str, dict[tuple[str, str], float]] = {}
        for family in text_string_to_metric_families(self.last):
            for sample in family.samples:
                if sample.name in (
                    "exnet_site_events_received_total",
                    "exnet_site_events_rejected_total",
                ):
                    site = (sample.labels["node_id"], sample.labels["site_id"])
                    by_site = counters.setdefault(sample.name, {})
                    by_site[site] = by_site.get(site, 0.0) + sample.value
        return counters


def _alert_expression(name: str) -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    [rule] = [r for g in groups for r in g["rules"] if r.get("alert") == name]
    return str(rule["expr"])


def _promtool_fires_for(counters: dict[str, dict[tuple[str, str], float]], tmp: Path) -> str:
    """Evaluate ExnetSiteRejectingMost's expression with promtool over exnet's own counters
    (each series 0 for 10 minutes, then its final value): the sites it is true for."""
    series = [
        {
            "series": f'{name}{{job="exnet", instance="a", node_id="{node}", site_id="{site}"}}',
            "values": f"0x10 {value:g}x10",
        }
        for name, by_site in counters.items()
        for (node, site), value in by_site.items()
    ]
    case = {
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": _alert_expression("ExnetSiteRejectingMost"),
                        "eval_time": "12m",
                        "exp_samples": [
                            {"labels": f'{{node_id="N01", site_id="{FLOOD_SITE}"}}', "value": 1}
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp / "site_alert_test.yml"
    path.write_text(yaml.safe_dump(case))
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed (apt-get install prometheus)"
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    return done.stdout + done.stderr if done.returncode else ""


def test_one_sites_flood_is_rejected_while_every_other_site_flows(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    make = EventMaker(seed=41)
    others = [s.id for _, s in load_registry(DEMO_REGISTRY).sites() if s.id != FLOOD_SITE]
    valid: set[str] = set()
    flood: set[str] = set()
    normal = [
        make.session(f"P-{n:010x}", site, number % 500 + 1, rpe=13, day=number % 90)
        for n, site in enumerate(others)
        for number in range(NORMAL)
    ]
    pipeline.init()
    # A backfill: the flood's first 4,000 alone (they fill a whole guard window at
    # start-up), then the rest among the network's normal traffic.
    for index in range(FLOOD):
        bad = make.session(f"P-f{index % 400:09x}", FLOOD_SITE, index % 500 + 1, rpe=99)
        pipeline.send(Topic.SESSION, bad)
        flood.add(bad["event_id"])
        if index >= 4_000 and index % 16 == 0 and normal:
            event = normal.pop()
            pipeline.send(Topic.SESSION, event)
            valid.add(event["event_id"])
    for event in normal:
        pipeline.send(Topic.SESSION, event)
        valid.add(event["event_id"])
    pipeline.flush()

    port = free_ports()
    scraper = Scraper(port)
    scraper.start()
    try:
        pipeline.drain(timeout=400, env={"EXNET_METRICS_PORT": str(port)})
    finally:
        scraper.stopped.set()
        scraper.join()

    accepted = {r["event_id"] for r in pipeline.rows("SELECT event_id FROM session_events FINAL")}
    assert accepted == valid  # every other site's events, exactly
    rejected = pipeline.rows("SELECT event_id, reason, site_id, message FROM rejected_events FINAL")
    assert {r["event_id"] for r in rejected} == flood
    assert {(r["reason"], r["site_id"], r["message"]) for r in rejected} == {
        (
            "invalid_field",
            FLOOD_SITE,
            "rpe: Input should be less than or equal to 20: "
            "the Borg rating of perceived exertion, a whole number from 6 to 20",
        )
    }

    counters = scraper.site_counters()
    received = counters["exnet_site_events_received_total"]
    assert received[("N01", FLOOD_SITE)] == FLOOD
    assert sum(received.values()) == FLOOD + len(valid)  # the last scrape saw every message
    # Every registered site's series is there from the start (at 0 here but the flood's).
    rejected_by_site = counters["exnet_site_events_rejected_total"]
    assert {site for site, count in rejected_by_site.items() if count} == {("N01", FLOOD_SITE)}
    assert rejected_by_site[("N01", FLOOD_SITE)] == FLOOD
    assert rejected_by_site.keys() == received.keys()
    failure = _promtool_fires_for(counters, tmp_path)
    assert not failure, failure


def test_a_registry_that_matches_no_site_stops_the_worker_before_committing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    make = EventMaker(seed=42)
    sites = ["N01-S02", "N02-S01", "N03-S01", "N03-S02"]
    events = [
        make.enrollment(f"P-{n:010x}", sites[n % len(sites)], "screened", day=n) for n in range(60)
    ]
    pipeline.init()
    for event in events:
        pipeline.send(Topic.ENROLLMENT, event)
    pipeline.flush()
    wrong = tmp_path / "registry.yaml"
    wrong.write_text(
        yaml.safe_dump(
            {
                "nodes": [
                    {
                        "id": "N09",
                        "name": "Elsewhere",
                        "sites": [{"id": "N09-S01", "name": "Nowhere"}],
                    }
                ]
            }
        )  # fmt: skip
    )
    small_window = {"EXNET_DLQ_WINDOW": "10", "EXNET_STREAM_BATCH_MAX": "20"}
    done = pipeline.run(
        "up", "--drain", timeout=180, env={**small_window, "EXNET_REGISTRY": str(wrong)}
    )
    assert done.returncode == 78, done.stderr[-3000:]
    assert "sites sending have more than 90% of their messages rejected" in done.stderr
    # Nothing was committed: with the right registry every event is there to accept.
    pipeline.drain(env=small_window)
    accepted = pipeline.rows("SELECT event_id FROM enrollment_events FINAL")
    assert {r["event_id"] for r in accepted} == {e["event_id"] for e in events}
    assert pipeline.scalar("SELECT count() FROM rejected_events FINAL") == 0
