"""One scrape target for `exnet up` and its writer process: merging two expositions."""

from __future__ import annotations

import subprocess

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exnet.metrics import Metrics, merged_exposition


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every series of an exposition and its value; asserts none is there twice."""
    pairs = [
        ((sample.name, tuple(sorted(sample.labels.items()))), sample.value)
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    ]
    series = dict(pairs)
    assert len(series) == len(pairs), "a series is there twice"
    return series


def test_series_of_two_processes_add_up_or_take_the_larger_and_readiness_is_the_parents() -> None:
    parent, child = Metrics(), Metrics()
    for metrics in (parent, child):
        metrics.preset(["t.exnet.session"])
    parent.events_received.labels(topic="t.exnet.session").inc(3)
    child.events_received.labels(topic="t.exnet.session").inc(4)
    child.sink_rows_written.labels(table="session_events").inc(10)
    parent.sink_batch_seconds.observe(0.3)
    child.sink_batch_seconds.observe(0.02)
    parent.role.labels(role="stream").set(1)
    child.role.labels(role="sink").set(1)
    child.sink_last_write.set(1_700_000_000)
    child.view_rows_differing.labels(view="node_summary").set(2)
    for metrics in (parent, child):  # both wait for a login: the flag stays a flag
        metrics.kafka_login_waiting.set(1)
    parent.ready.set(0)
    child.ready.set(1)

    merged = merged_exposition(parent.registry, generate_latest(child.registry).decode())
    series = _samples(merged)

    assert series[("exnet_events_received_total", (("topic", "t.exnet.session"),))] == 7
    assert series[("exnet_sink_rows_written_total", (("table", "session_events"),))] == 10
    assert series[("exnet_sink_batch_seconds_count", ())] == 2
    assert series[("exnet_sink_batch_seconds_bucket", (("le", "0.025"),))] == 1
    assert series[("exnet_sink_batch_seconds_bucket", (("le", "0.5"),))] == 2
    assert series[("exnet_sink_batch_seconds_sum", ())] == 0.32
    assert series[("exnet_process_role", (("role", "stream"),))] == 1
    assert series[("exnet_process_role", (("role", "sink"),))] == 1
    assert series[("exnet_sink_last_write_timestamp_seconds", ())] == 1_700_000_000
    assert series[("exnet_view_rows_differing", (("view", "node_summary"),))] == 2
    assert series[("exnet_kafka_login_waiting", ())] == 1
    assert series[("exnet_ready", ())] == 0  # the parent's readiness includes the child's
    created = ("exnet_events_received_created", (("topic", "t.exnet.session"),))
    assert series[created] == min(
        _samples(generate_latest(r))[created] for r in (parent.registry, child.registry)
    )
    # Each family is declared once: a valid exposition.
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=merged, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
