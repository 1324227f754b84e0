"""deploy/prometheus: the configuration and alert rules pass promtool, and a real
Prometheus scrapes a real ``exnet up`` and reads back what was sent.

Needs ``promtool`` and ``prometheus`` (Debian: ``apt-get install prometheus``);
without them the tests fail, saying so.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.topics import topic_name
from exnet.settings import Settings
from tests.ports import free_ports

from .helpers import (
    ExnetUp,
    SettingsFactory,
    http_get,
    ops_publish,
    ops_scenario,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
#: Seconds promtool may take for one check.
PROMTOOL_TIMEOUT_S = 60.0
#: Seconds the Prometheus server may take to be ready, and to stop.
PROMETHEUS_START_TIMEOUT_S = 30.0
PROMETHEUS_STOP_TIMEOUT_S = 10.0
#: Seconds until Prometheus has scraped the whole input's counters (and evaluated the rules).
PROMETHEUS_READBACK_TIMEOUT_S = 90.0
POLL_S = 0.5


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: it comes with Prometheus "
            "(Debian/Ubuntu: `apt-get install prometheus`)",
            pytrace=False,
        )
    return path


def _promtool(*args: str) -> str:
    result = subprocess.run(
        [_tool("promtool"), *args],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_checks_the_config_and_rules() -> None:
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in _promtool("check", "rules", "alerts.yml")


def test_promtool_unit_tests_every_alert() -> None:
    output = _promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in output
    # every alert of alerts.yml has a firing case in alerts_test.yml
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    silent = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert alerts, "no alerts in alerts.yml"
    assert firing == alerts, f"alerts without a firing test: {alerts - firing}"
    assert silent == alerts, f"alerts without a not-firing test: {alerts - silent}"


# --- a real Prometheus against a real exnet ---------------------------------------------


class _Prometheus:
    """A Prometheus server on loopback, its TSDB and log under ``workdir``."""

    def __init__(self, workdir: Path, target: str | None = None) -> None:
        self.port = free_ports()
        self.url = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        targets = [target] if target is not None else []
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DEPLOY / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "exnet", "static_configs": [{"targets": targets}]},
            ],
        }
        self._config = workdir / "prometheus.yml"
        self._config.write_text(yaml.safe_dump(config))
        self._log_path = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    _tool("prometheus"),
                    f"--config.file={self._config}",
                    f"--storage.tsdb.path={self._workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                cwd=self._workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + PROMETHEUS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if http_get(f"{self.url}/-/ready", timeout=2.0)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(POLL_S)
        self._fail(f"Prometheus was not ready in {PROMETHEUS_START_TIMEOUT_S} s")

    def wait_for_first_scrape(self) -> None:
        deadline = time.monotonic() + PROMETHEUS_START_TIMEOUT_S
        while not self.query('exnet_events_received_total{job="exnet"}'):
            self._check_alive()
            if time.monotonic() >= deadline:
                self._fail(f"Prometheus did not scrape exnet in {PROMETHEUS_START_TIMEOUT_S} s")
            time.sleep(POLL_S)

    def _fail(self, message: str) -> None:
        tail = "\n".join(self._log_path.read_text(errors="replace").splitlines()[-30:])
        pytest.fail(f"{message}\n--- prometheus log (tail) ---\n{tail}", pytrace=False)

    def _check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            self._fail(f"Prometheus exited with status {self._process.returncode}")

    def api(self, path: str, **params: str) -> Any:
        answer = self.api_answer(path, **params)
        assert answer["status"] == "success", answer
        return answer["data"]

    def api_answer(self, path: str, **params: str) -> Any:
        """The whole JSON answer, errors included."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        assert status in (200, 400, 422), f"Prometheus /api/v1/{path} answered {status}: {body!r}"
        return json.loads(body)

    def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query's vector: labels (without __name__) -> value."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return {
            tuple(sorted((k, v) for k, v in item["metric"].items() if k != "__name__")): float(
                item["value"][1]
            )
            for item in data["result"]
        }

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=PROMETHEUS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=PROMETHEUS_STOP_TIMEOUT_S)


#: Values for the Grafana variables the dashboard's queries use.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$__interval": "15s",
    "$node": "N01",
    "$site": "N01-S01",
}


def test_every_dashboard_query_parses_in_prometheus(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY.parent / "grafana" / "dashboards" / "exnet.json").read_text())
    exprs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    exprs.append(value)
                else:
                    collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(dashboard)
    assert exprs
    prometheus = _Prometheus(tmp_path)
    try:
        prometheus.start()
        errors = {}
        for expr in exprs:
            query = expr
            for variable, value in GRAFANA_VARIABLES.items():
                query = query.replace(variable, value)
            assert "$" not in query, f"unknown Grafana variable in {expr}"
            answer = prometheus.api_answer("query", query=query)
            if answer["status"] != "success":
                errors[expr] = answer.get("error")
        assert not errors, json.dumps(errors, indent=2)
    finally:
        prometheus.stop()


@pytest.fixture
def prom_settings(settings_factory: SettingsFactory) -> Settings:
    return settings_factory(partitions=2)


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_a_real_prometheus_reads_exnets_counters_back(
    prom_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = prom_settings
    _tool("prometheus")  # fail before starting anything
    scenario = ops_scenario()
    received = {
        (("topic", topic_name(topic, settings.topic_prefix)),): float(n)
        for topic, n in scenario.received_by_topic.items()
    }
    accepted = {(("type", t),): float(n) for t, n in scenario.accepted_by_type.items()}
    rejected_total = float(sum(scenario.rejected_by_reason.values()))

    up = ExnetUp(settings, tmp_path / "exnet-up.log")
    prometheus = _Prometheus(tmp_path, f"127.0.0.1:{up.metrics_port}")
    try:
        up.start()
        up.wait_healthy()
        prometheus.start()
        # Publish only once Prometheus has scraped the counters at 0 (its first scrape
        # comes a few seconds after start), so that rates and alerts see them rise.
        prometheus.wait_for_first_scrape()
        ops_publish(kafka_bootstrap, settings, scenario.messages)

        def strip(vector: dict[tuple[tuple[str, str], ...], float]) -> dict[Any, float]:
            # drop the target labels Prometheus adds (job, instance)
            return {
                tuple((k, v) for k, v in labels if k not in ("job", "instance")): value
                for labels, value in vector.items()
            }

        deadline = time.monotonic() + PROMETHEUS_READBACK_TIMEOUT_S
        seen: dict[str, Any] = {}
        while True:
            seen = {
                "received": strip(prometheus.query("exnet_events_received_total")),
                "accepted": strip(prometheus.query('exnet_events_accepted_total{job="exnet"} > 0')),
                "rejected": prometheus.query('sum(exnet_events_rejected_total{job="exnet"})'),
                "up": strip(prometheus.query('up{job="exnet"}')),
            }
            if (
                seen["received"] == received
                and seen["accepted"] == accepted
                and seen["rejected"] == {(): rejected_total}
                and seen["up"] == {(): 1.0}
            ):
                break
            if time.monotonic() >= deadline:
                up.fail(
                    f"Prometheus did not read back the input within "
                    f"{PROMETHEUS_READBACK_TIMEOUT_S} s: last read {seen}, expected "
                    f"received={received} accepted={accepted} rejected={rejected_total}"
                )
            time.sleep(POLL_S)

        # The alert rules run against real series: every rule evaluates without error,
        # and 8 rejections in 20 messages put ExnetDeadLetterRatioHigh in its `for` period.
        while True:
            groups = prometheus.api("rules")["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            errors = [r for r in rules if r.get("health") != "ok"]
            alerts = {
                a["labels"]["alertname"]: a["state"] for a in prometheus.api("alerts")["alerts"]
            }
            if rules and not errors and "ExnetDeadLetterRatioHigh" in alerts:
                break
            if time.monotonic() >= deadline:
                pytest.fail(f"rules unhealthy or no dead-letter alert: {errors or rules}, {alerts}")
            time.sleep(POLL_S)
        assert alerts["ExnetDeadLetterRatioHigh"] in ("pending", "firing")
        # a process that consumes and writes, logged in: none of the process alerts
        assert not {"ExnetProcessDown", "ExnetNotReady", "ExnetKafkaLoginRefused"} & alerts.keys()

        status, _ = up.terminate()
        assert status == 0, f"exit status {status} after SIGTERM\n{up.log_tail()}"
    finally:
        prometheus.stop()
        up.close()
