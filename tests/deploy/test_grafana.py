"""The Grafana dashboard and the alert rules refer only to exnet's declared metrics.

STYLE point 14: metrics are declared once, as a closed set with fixed label
names (``exnet/metrics.py``); dashboards and alerts use only those. Every
PromQL expression of ``deploy/grafana/dashboards/exnet.json`` and
``deploy/prometheus/alerts.yml`` is checked against a :class:`Metrics`
instance's registry: metric names (with the ``_total``, ``_bucket``, ``_sum``,
``_count`` samples of counters and histograms) and label names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from exnet.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "exnet.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "exnet.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
#: The dashboard's rows (ops issue: what operators look at).
ROWS = ("Pipeline health", "Nodes and sites", "Rejects and duplicates", "Latency")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"(?<![\w:$])(exnet[_:][A-Za-z0-9_:]*)")
_SELECTOR = re.compile(r"(exnet_[A-Za-z0-9_]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Declared:
    """Sample name -> the label names its series carry (target labels aside)."""

    samples: dict[str, frozenset[str]]
    families: dict[str, frozenset[str]]  # family name -> its sample names

    @property
    def labels(self) -> frozenset[str]:
        return frozenset().union(*self.samples.values())


def _declared() -> Declared:
    metrics = Metrics()
    samples: dict[str, frozenset[str]] = {}
    families: dict[str, frozenset[str]] = {}
    wrappers = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    kinds = {family.name: family.type for family in metrics.registry.collect()}
    assert {w._name for w in wrappers} == set(kinds), "every registered metric is an attribute"
    for wrapper in wrappers:
        name, labels = wrapper._name, frozenset(wrapper._labelnames)
        kind = kinds[name]
        if kind == "counter":
            names = {f"{name}_total": labels}
        elif kind == "histogram":
            names = {
                f"{name}_bucket": labels | {"le"},
                f"{name}_sum": labels,
                f"{name}_count": labels,
            }
        else:
            assert kind == "gauge", f"{name}: unexpected kind {kind}"
            names = {name: labels}
        samples.update(names)
        families[name] = frozenset(names)
    return Declared(samples, families)


DECLARED = _declared()


def _strings(node: Any, key: str) -> Iterator[str]:
    """Every string value of ``key`` anywhere in a JSON/YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from _strings(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, key)


def _problems(expr: str, recorded: frozenset[str] = frozenset()) -> list[str]:
    """What ``expr`` uses that is not declared (empty when it is clean)."""
    code = _STRING.sub('""', expr)  # label values and regexes are not names
    problems = []
    for name in _NAME.findall(code):
        if name.startswith("exnet:"):
            if name not in recorded:
                problems.append(f"{name} is not a recording rule of alerts.yml")
        elif name not in DECLARED.samples:
            problems.append(f"{name} is not declared in exnet/metrics.py")
    for name, matchers in _SELECTOR.findall(code):
        allowed = DECLARED.samples.get(name, frozenset()) | TARGET_LABELS
        for label in _MATCHER.findall(matchers):
            if label not in allowed:
                problems.append(f"{name} has no label {label!r} (it has {sorted(allowed)})")
    for grouping in _GROUPING.findall(code):
        for label in (part.strip() for part in grouping.split(",")):
            if label and label not in DECLARED.labels | TARGET_LABELS:
                problems.append(f"no exnet metric has the label {label!r} (grouping)")
    return problems


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = list(_strings(dashboard, "expr"))
    exprs += list(_strings(dashboard["templating"], "query"))  # label_values(...)
    return exprs


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_declared_set_is_what_the_spec_names() -> None:
    # SPEC §5's minimum, with its label names
    spec: dict[str, set[str]] = {
        "exnet_events_received_total": {"topic"},
        "exnet_events_accepted_total": {"type"},
        "exnet_events_rejected_total": {"reason"},
        "exnet_events_duplicate_total": {"type"},
        "exnet_sink_rows_written_total": {"table"},
        "exnet_sink_batch_seconds_bucket": {"le"},
        "exnet_consumer_lag": {"topic", "partition"},
        "exnet_site_last_event_timestamp_seconds": {"node_id", "site_id"},
    }
    # labels exnet adds to the spec's: the lag of exnet.accepted is read by two groups
    added = {"exnet_consumer_lag": {"group"}}
    for name, labels in spec.items():
        assert set(DECLARED.samples.get(name, ())) == labels | added.get(name, set()), name


def test_dashboard_has_a_valid_shape() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "exnet-overview"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert tuple(rows) == ROWS
    graphs = [p for p in panels if p["type"] != "row"]
    assert graphs
    for panel in graphs:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title"), where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        targets = panel["targets"]
        assert targets, f"{where} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in targets:
            assert target["expr"].strip(), where
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where


def test_panels_coloured_by_thresholds_define_them() -> None:
    """A panel coloured by thresholds (or drawing them as a line) without steps of its
    own gets Grafana's default, red from 80: the freshness panels turned red at 80
    hours, not past the 6 h alert window, and the latency's target line sat at 80 s."""
    undefined = []
    for panel in _panels(_dashboard()):
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        custom = defaults.get("custom", {})
        coloured = (
            defaults.get("color", {}).get("mode") == "thresholds"
            or custom.get("thresholdsStyle", {}).get("mode", "off") != "off"
            or custom.get("cellOptions", {}).get("type") == "color-background"
        )
        steps = defaults.get("thresholds", {}).get("steps", [])
        if coloured and len(steps) < 2:
            undefined.append(panel["title"])
    assert not undefined


def test_the_latency_panel_draws_the_goal() -> None:
    (panel,) = (p for p in _panels(_dashboard()) if p["title"] == "End-to-end latency (p50, p99)")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    # seconds: the p99 goal (docs/architecture.md, "Known limits")
    assert [step["value"] for step in steps] == [None, 1]


def test_dashboard_uses_only_declared_metrics_and_labels() -> None:
    exprs = _dashboard_exprs(_dashboard())
    assert len(exprs) > 20
    problems = {expr: p for expr in exprs if (p := _problems(expr))}
    assert not problems, json.dumps(problems, indent=2)


def test_dashboard_shows_every_declared_metric() -> None:
    used = set()
    for expr in _dashboard_exprs(_dashboard()):
        used.update(_NAME.findall(_STRING.sub('""', expr)))
    missing = [family for family, names in DECLARED.families.items() if not names & used]
    assert not missing, f"declared metrics without a panel: {missing}"


def test_alert_rules_use_only_declared_metrics_and_labels() -> None:
    rules = _alert_rules()
    recorded = frozenset(r["record"] for r in rules if "record" in r)
    assert all(name.startswith("exnet:") for name in recorded)
    problems = {r["expr"]: p for r in rules if (p := _problems(r["expr"], recorded))}
    assert not problems, json.dumps(problems, indent=2)
    for rule in rules:
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            annotations = rule["annotations"]
            assert annotations["summary"] and annotations["description"], rule["alert"]
            assert annotations["runbook"] == f"deploy/README.md#{rule['alert'].lower()}"


def test_runbook_anchors_exist_in_the_readme() -> None:
    readme = (DEPLOY / "README.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in readme.splitlines()
        if line.startswith("#")
    }
    for rule in _alert_rules():
        if "alert" in rule:
            assert rule["alert"].lower() in headings, f"README has no section {rule['alert']}"


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"].startswith("http")
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "${EXNET_GRAFANA_DASHBOARDS}"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(exnet_events_recieved_total[5m])", "exnet_events_recieved_total is not declared"),
        ("exnet_consumer_lag_total", "exnet_consumer_lag_total is not declared"),
        ('exnet_consumer_lag{site_id="x"}', "exnet_consumer_lag has no label 'site_id'"),
        ("sum by (region) (exnet_ready)", "no exnet metric has the label 'region'"),
        ("exnet:nope", "exnet:nope is not a recording rule"),
    ],
)
def test_the_checker_catches_undeclared_names(expr: str, problem: str) -> None:
    assert any(problem in p for p in _problems(expr)), _problems(expr)


def test_the_checker_ignores_label_values() -> None:
    assert _problems('exnet_consumer_lag{topic=~".*exnet_accepted|exnet:foo"}') == []
