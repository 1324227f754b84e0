"""``exnet report``: known data -> HTML, rendered in headless Chromium with no error.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); without it the
browser tests fail, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from contracts.errors import UserError
from contracts.registry import load_registry
from exnet.ops.report import (
    collect_report,
    render_report,
    summarise,
    t975,
    wilson_interval,
    write_report,
)
from sinks.client import connect
from sinks.migrate import load_registry_tables

from .conftest import EXPECTED_ARMS, EXPECTED_FUNNEL, Seeded
from .helpers import ops_cli

#: chart id -> marks it must draw for the seeded network (see conftest).
EXPECTED_MARKS = {
    "funnel": 2 * 5,  # two nodes x five statuses
    "enrollment": 2 + 2 * 3,  # a line per node + a point per node and week (3 weeks)
    "arm-balance": 4,  # aerobic/none, resistance/psychotherapy, combined/none, control/none
    "adherence": 2,  # the arms with sessions: aerobic, resistance + psychotherapy
    "exercise-minutes": 4,  # every randomized arm
    "biomarker-BDNF-serum": 2,  # aerobic, control
    "biomarker-IL6-serum": 1,  # aerobic
    "outcomes": 4 * 2,  # response and remission per arm
}
#: Seconds a headless Chromium run may take on a busy 2-core machine.
CHROMIUM_TIMEOUT_S = 120


def test_wilson_interval() -> None:
    low, high = wilson_interval(2, 3) or (0.0, 0.0)
    assert (round(low, 4), round(high, 4)) == (0.2077, 0.9385)
    low, high = wilson_interval(0, 1) or (0.0, 0.0)
    assert (low, round(high, 4)) == (0.0, 0.7935)
    assert wilson_interval(0, 0) is None


def test_intervals_of_small_samples_are_students_t() -> None:
    """n = 2 gets t with one degree of freedom (12.706), not z (1.96): a wide interval."""
    assert t975(1) == 12.706 and t975(29) == 2.045 and t975(1000) == pytest.approx(1.96, abs=1e-3)
    two = summarise([-20.0, 0.0])
    assert two.ci == pytest.approx((-10 - 12.706 * 10, -10 + 12.706 * 10))
    three = summarise([1.0, 2.0, 3.0], ratios=[2.0, 0.5, 1.0])
    low, high = three.ci or (0.0, 0.0)
    assert (round(low, 3), round(high, 3)) == (
        round(2 - 4.303 / 3**0.5, 3),
        round(2 + 4.303 / 3**0.5, 3),
    )
    assert three.gmr == pytest.approx(1.0)  # 2 × 0.5 × 1: the typical participant did not change
    assert three.gmr_ci is not None and three.gmr_ci[0] < 1 < three.gmr_ci[1]
    assert summarise([5.0]).ci is None and summarise([5.0], [0.0]).gmr is None


class _Marks(HTMLParser):
    """Counts ``.mark`` elements per ``svg.chart`` and collects every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.declared: dict[str, int] = {}
        self.drawn: dict[str, int] = {}
        self.marks: Counter[str] = Counter()
        self.urls: list[str] = []
        self.body: dict[str, str | None] = {}
        self._chart: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "body":
            self.body = values
        for name in ("src", "href"):
            if values.get(name):
                self.urls.append(str(values[name]))
        classes = (values.get("class") or "").split()
        if tag == "svg" and "chart" in classes:
            self._chart = str(values["data-chart"])
            self.declared[self._chart] = int(values["data-marks"] or -1)
            if values.get("data-drawn") is not None:
                self.drawn[self._chart] = int(values["data-drawn"] or -1)
        elif "mark" in classes and self._chart is not None:
            self.marks[self._chart] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None


def _parse(html: str) -> _Marks:
    parser = _Marks()
    parser.feed(html)
    return parser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "headless Chromium is needed to check the report: apt-get install -y chromium",
        pytrace=False,
    )


def _render(page: Path, tmp_path: Path, screenshot: Path) -> tuple[str, str]:
    """Load ``page`` in headless Chromium: (rendered DOM, browser log)."""
    profile = tmp_path / f"chromium-profile-{page.stem}"
    result = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            "--window-size=1400,4000",
            f"--screenshot={screenshot}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, result.stderr


def _console_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line]


@pytest.mark.clickhouse
def test_report_from_known_data_renders_offline(seeded: Seeded, tmp_path: Path) -> None:
    data = collect_report(seeded.settings, now=seeded.now)
    # the figures behind the charts
    assert {f.node_id: f.counts for f in data.funnel} == EXPECTED_FUNNEL
    assert {
        arm: (o.randomized, o.evaluable, o.responders, o.remitters) for arm, o in data.arms.items()
    } == EXPECTED_ARMS
    aerobic = data.sessions[("aerobic", "none")]
    assert (aerobic.attended, aerobic.missed, aerobic.cancelled, aerobic.minutes) == (6, 2, 1, 220)
    bdnf = data.changes[("BDNF", "serum")]
    assert data.units[("BDNF", "serum")] == "ng/mL"
    # +5, +2 (18000 pg/mL -> 20 ng/mL, compared in canonical units), +2
    assert bdnf[("aerobic", "none")].n == 3
    assert bdnf[("aerobic", "none")].mean == pytest.approx(3.0)
    assert bdnf[("aerobic", "none")].median == pytest.approx(2.0)
    assert bdnf[("control", "none")].mean == pytest.approx(0.5)
    assert data.changes[("IL6", "serum")][("aerobic", "none")].mean == pytest.approx(-0.5)
    assert {n: dict(w) for n, w in data.weekly.items()} == {
        "N01": dict(zip(sorted(data.weekly["N01"]), (2, 1, 1), strict=True)),
        "N02": dict(zip(sorted(data.weekly["N02"]), (1, 1), strict=True)),
    }

    html = render_report(data)
    static = _parse(html)
    assert static.marks == EXPECTED_MARKS
    assert static.declared == EXPECTED_MARKS
    # The report says how responders and remitters were counted (#15 item 9).
    assert data.outcome_definition.startswith("any instrument at any later week")
    assert "counted by <strong>any instrument at any later week" in html
    assert all(url.startswith("#") for url in static.urls), static.urls  # nothing to fetch
    assert 'http-equiv="Content-Security-Policy" content="default-src \'none\'' in html
    assert "Denominator: every participant randomized to the arm" in html
    assert "66.7% (20.8–93.9)" in html  # aerobic response 2/3 with its Wilson interval
    # what a steering committee looks for: n on the charts, small arms flagged, safety,
    # every site, and the data cut-off
    assert "aerobic (n=3, small)" in html
    assert "Safety: adverse events and withdrawals" in html and "<h3>Withdrawals</h3>" in html
    assert "By site" in html and all(site in html for site in ("N01-S01", "N02-S01"))
    assert data.cutoff is not None and f"Data cut-off: {data.cutoff:%Y-%m-%d %H:%M} UTC" in html

    # the command writes it and says where
    out = tmp_path / "out" / "report.html"
    result = ops_cli(seeded.settings, "report", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert str(out.resolve()) in result.stdout.replace("\n", "")

    # a directory is refused before any work
    refused = ops_cli(seeded.settings, "report", "--out", str(out.parent))
    assert isinstance(refused.exception, UserError)  # the CLI prints it, exit 2
    assert (
        str(refused.exception) == f"cannot write {out.parent}: it is a directory; give a file name"
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]

    dom, log = _render(out, tmp_path, tmp_path / "report.png")
    rendered = _parse(dom)
    assert rendered.body.get("data-report") == "ok", re.findall(
        r'<div id="report-errors">(.*?)</div>', dom, re.S
    )
    assert rendered.body.get("data-charts") == str(len(EXPECTED_MARKS))
    assert rendered.drawn == EXPECTED_MARKS  # every mark has a box on screen
    assert _console_lines(log) == []
    assert (tmp_path / "report.png").stat().st_size > 50_000


@pytest.mark.clickhouse
def test_the_report_names_the_registrys_primary_endpoint(seeded: Seeded, tmp_path: Path) -> None:
    text = seeded.settings.registry_path.read_text(encoding="utf-8")
    registry = tmp_path / "endpoint.yaml"
    registry.write_text("primary_endpoint: {instrument: HAMD17, week: 12}\n" + text)
    client = connect(seeded.settings)
    try:
        load_registry_tables(client, seeded.settings.clickhouse_database, load_registry(registry))
    finally:
        client.close()
    data = collect_report(seeded.settings, now=seeded.now)
    assert data.outcome_definition.startswith("HAMD17 at week 12 (the registry's primary endpoint)")
    page = render_report(data)
    assert page.count("HAMD17 at week 12") == 2  # the outcomes section and the definitions
    assert "at most half of the participant" not in page


def test_the_checks_catch_a_broken_page(seeded: Seeded, tmp_path: Path) -> None:
    """Negative control: a script error and an outside fetch are both seen."""
    page = write_report(seeded.settings, tmp_path / "report.html", now=seeded.now)
    broken = tmp_path / "broken.html"
    broken.write_text(
        page.read_text(encoding="utf-8").replace(
            "</main>",
            '<img src="http://127.0.0.1:9/x.png"><script>throw new Error("boom")</script></main>',
        ),
        encoding="utf-8",
    )
    dom, log = _render(broken, tmp_path, tmp_path / "broken.png")
    assert _parse(dom).body.get("data-report") == "error"
    assert "Uncaught Error: boom" in dom
    console = "\n".join(_console_lines(log))
    assert "boom" in console
    assert "Content Security Policy" in console  # the fetch was blocked, not made


@pytest.mark.clickhouse
def test_a_report_that_cannot_be_written_leaves_nothing_behind(
    seeded: Seeded, tmp_path: Path
) -> None:
    taken = tmp_path / "written" / "taken"
    (taken / "inside").mkdir(parents=True)  # a directory the page cannot replace
    with pytest.raises(UserError, match=f"cannot write {taken}"):
        write_report(seeded.settings, taken, now=seeded.now)
    assert sorted(p.name for p in taken.parent.iterdir()) == ["taken"]
