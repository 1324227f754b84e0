"""A real ``exnet up`` counts a known input exactly (SPEC §5's metrics).

One subprocess, one input with every outcome of SPEC §2; every counter's
expected value is derived from the input (:func:`helpers.ops_scenario`).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from contracts.catalog import topic_spec
from contracts.reasons import Reason
from contracts.registry import load_registry
from contracts.topics import INPUT_TOPICS, Topic, topic_name
from exnet.metrics import EVENT_TYPES, VIEW_REFUSALS
from exnet.settings import Settings
from sinks.consumer import sink_group
from sinks.rows import VIEW_COLUMNS
from streams.names import streams_group

from .helpers import (
    OPS_SIGTERM_EXIT_S,
    ExnetUp,
    Families,
    OpsScenario,
    SettingsFactory,
    http_get,
    ops_publish,
    ops_scenario,
    sample_value,
    samples_named,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


@pytest.fixture
def ops_settings(settings_factory: SettingsFactory) -> Settings:
    return settings_factory(partitions=2)


def _rows_written(families: Families, table: str) -> float:
    return sample_value(families, "exnet_sink_rows_written_total", {"table": table}) or 0.0


def _outcomes(families: Families) -> float:
    """accepted + duplicate + rejected, all labels."""
    return sum(
        s.value
        for name in (
            "exnet_events_accepted_total",
            "exnet_events_duplicate_total",
            "exnet_events_rejected_total",
        )
        for s in samples_named(families, name)
    )


def _every_lag_zero(families: Families, settings: Settings) -> bool:
    lags = samples_named(families, "exnet_consumer_lag")
    topics = {s.labels["topic"] for s in lags}
    needed = {topic_name(t, settings.topic_prefix) for t in Topic}
    return needed <= topics and all(s.value == 0 for s in lags)


def test_metrics_count_a_known_input_exactly(
    ops_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = ops_settings
    scenario: OpsScenario = ops_scenario()
    up = ExnetUp(settings, tmp_path / "exnet-up.log")
    try:
        up.start()
        up.wait_healthy()  # /healthz answers once `up` has created the topics
        ops_publish(kafka_bootstrap, settings, scenario.messages)

        expected_rows = scenario.rows_by_table
        up.wait_for(
            lambda f: all(_rows_written(f, t) >= n for t, n in expected_rows.items()),
            f"the sink to write {expected_rows}",
        )
        # Duplicates leave no row to wait for: wait until every message has an outcome
        # (at least; the exact values are asserted below) and the lag reads 0.
        sent = len(scenario.messages)
        families = up.wait_for(
            lambda f: _outcomes(f) >= sent and _every_lag_zero(f, settings),
            f"{sent} outcomes and exnet_consumer_lag to read 0 everywhere",
        )
        _assert_counters(families, scenario, settings)
        _assert_sink(families, scenario, settings)

        assert http_get(f"{up.base_url}/healthz")[0] == 200
        assert http_get(f"{up.base_url}/readyz")[0] == 200

        status, seconds = up.terminate()
        assert status == 0, f"exit status {status} after SIGTERM\n{up.log_tail()}"
        assert seconds < OPS_SIGTERM_EXIT_S
    finally:
        up.close()
    _assert_sites(families, scenario, settings)


def _assert_counters(families: Families, scenario: OpsScenario, settings: Settings) -> None:
    received = {
        s.labels["topic"]: s.value for s in samples_named(families, "exnet_events_received_total")
    }
    assert received == {
        topic_name(topic, settings.topic_prefix): float(n)
        for topic, n in scenario.received_by_topic.items()
    }

    accepted = {
        s.labels["type"]: s.value for s in samples_named(families, "exnet_events_accepted_total")
    }
    assert accepted == {t: float(scenario.accepted_by_type[t]) for t in EVENT_TYPES}

    duplicate = {
        s.labels["type"]: s.value for s in samples_named(families, "exnet_events_duplicate_total")
    }
    assert duplicate == {t: float(scenario.duplicate_by_type[t]) for t in EVENT_TYPES}

    rejected = {
        s.labels["reason"]: s.value for s in samples_named(families, "exnet_events_rejected_total")
    }
    # every reason code, each sent exactly once
    assert rejected == {reason.value: 1.0 for reason in Reason}
    assert rejected == {r.value: float(scenario.rejected_by_reason[r.value]) for r in Reason}

    # received = accepted + duplicate + rejected (SPEC §2: none is lost)
    assert sum(received.values()) == sum(accepted.values()) + sum(duplicate.values()) + sum(
        rejected.values()
    )


def _assert_sink(families: Families, scenario: OpsScenario, settings: Settings) -> None:
    written = {
        s.labels["table"]: s.value for s in samples_named(families, "exnet_sink_rows_written_total")
    }
    # The stream-written views: how many versions of each row the stream sends depends
    # on how its batches fall; every view has rows (the input has every event type).
    views = {table: written.pop(table, 0.0) for table in VIEW_COLUMNS}
    assert written == {table: float(n) for table, n in scenario.rows_by_table.items()}
    assert all(n >= 1 for n in views.values()), views
    refused = samples_named(families, "exnet_sink_view_rows_refused_total")
    assert {s.labels["reason"]: s.value for s in refused} == dict.fromkeys(VIEW_REFUSALS, 0.0)

    count = sample_value(families, "exnet_sink_batch_seconds_count")
    assert count is not None and count >= 1
    assert sample_value(families, "exnet_sink_batch_seconds_bucket", {"le": "+Inf"}) == count
    batch_sum = sample_value(families, "exnet_sink_batch_seconds_sum")
    assert batch_sum is not None and batch_sum > 0
    rows_per_batch = sample_value(families, "exnet_sink_batch_rows_sum")
    assert rows_per_batch == float(sum(scenario.rows_by_table.values()) + sum(views.values()))
    # the accepted events' latency, one observation per fact row
    latency = sample_value(families, "exnet_end_to_end_latency_seconds_count")
    assert latency == float(sum(scenario.accepted_by_type.values()))
    last_write = sample_value(families, "exnet_sink_last_write_timestamp_seconds")
    assert last_write is not None and last_write > 0

    lags = samples_named(families, "exnet_consumer_lag")
    assert all(s.labels.keys() == {"group", "topic", "partition"} for s in lags)
    assert all(s.value == 0 for s in lags)
    # one series per consumer group and partition of the topics it reads: the stream
    # workers read the inputs, validated, accepted and contributions (one partition);
    # the writer accepted, deadletter and views. exnet.accepted has a series per group,
    # so a writer that stopped shows even while the views keep up.
    read_by = {
        streams_group(settings): [
            *INPUT_TOPICS,
            Topic.VALIDATED,
            Topic.ACCEPTED,
            Topic.CONTRIBUTIONS,
        ],
        sink_group(settings): [Topic.ACCEPTED, Topic.DEADLETTER, Topic.VIEWS],
    }
    assert {(s.labels["group"], s.labels["topic"], s.labels["partition"]) for s in lags} == {
        (group, topic_name(t, settings.topic_prefix), str(p))
        for group, topics in read_by.items()
        for t in topics
        for p in range(topic_spec(t).partitions or settings.partitions)
    }

    assert sample_value(families, "exnet_ready") == 1.0
    assert sample_value(families, "exnet_process_role", {"role": "stream"}) == 1.0
    assert sample_value(families, "exnet_process_role", {"role": "sink"}) == 1.0


def _assert_sites(families: Families, scenario: OpsScenario, settings: Settings) -> None:
    """Per site: the newest occurred_at of an *accepted* event (the gauge's documented
    meaning); the conflicting duplicate, newer but rejected, must not move it."""
    sites = {
        (s.labels["node_id"], s.labels["site_id"]): s.value
        for s in samples_named(families, "exnet_site_last_event_timestamp_seconds")
    }
    newest = scenario.newest_by_site
    assert sites.keys() == newest.keys()  # rejected messages make no site series
    received_at = samples_named(families, "exnet_site_last_received_timestamp_seconds")
    assert {(s.labels["node_id"], s.labels["site_id"]) for s in received_at} == newest.keys()
    wrong = {
        site: (sites[site], occurred)
        for site, occurred in newest.items()
        if not math.isclose(sites[site], occurred, abs_tol=1e-3)
    }
    assert not wrong, (
        "exnet_site_last_event_timestamp_seconds (read, expected) differ: "
        f"{wrong}; a rejected (conflicting_duplicate) event must not move the gauge"
    )
    # Every rejection is counted against the site it names (site_id "" when none), the
    # conflicting duplicate (rejected by deduplication, not validation) too: the
    # per-site counters add up to the network's.
    per_site: Counter[str] = Counter()
    for s in samples_named(families, "exnet_site_events_rejected_total"):
        per_site[s.labels["reason"]] += int(s.value)
    assert +per_site == scenario.rejected_by_reason
    # Every registered site's series (and the no-site one) are there from the start, at
    # 0 where nothing was counted: Prometheus's increase() reads nothing from a series'
    # first sample, so one born at a site's first burst would miss the alert on it.
    sites_registered = [(n, s.id) for n, s in load_registry(settings.registry_path).sites()]
    rejected_series = {
        (s.labels["node_id"], s.labels["site_id"], s.labels["reason"])
        for s in samples_named(families, "exnet_site_events_rejected_total")
    }
    assert rejected_series == {
        (node_id, site_id, reason.value)
        for node_id, site_id in [*sites_registered, ("", "")]
        for reason in Reason
    }
    received_series = {
        (s.labels["node_id"], s.labels["site_id"])
        for s in samples_named(families, "exnet_site_events_received_total")
    }
    assert received_series == {*sites_registered, ("", "")}
    (conflict,) = [m for m in scenario.messages if m.outcome == "conflicting_duplicate"]
    named = json.loads(conflict.value)
    assert {
        (s.labels["node_id"], s.labels["site_id"])
        for s in samples_named(families, "exnet_site_events_rejected_total")
        if s.labels["reason"] == "conflicting_duplicate" and s.value
    } == {(named["node_id"], named["site_id"])}


def test_a_start_with_a_backlog_counts_each_message_once(
    ops_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Sites published while no worker ran: once its tables are recovered, Faust resumes
    # the stream partitions before it seeks them to where the group stands, and what
    # the worker read in between was read, and counted, twice (every input, measured).
    settings = ops_settings
    for run, scenario in enumerate((ops_scenario(), ops_scenario())):
        up = ExnetUp(settings, tmp_path / f"exnet-up-{run}.log")
        try:
            if run == 0:
                up.start()  # the first run fills the tables: the second recovers them
                up.wait_healthy()
                ops_publish(kafka_bootstrap, settings, scenario.messages)
            else:
                ops_publish(kafka_bootstrap, settings, scenario.messages)
                up.start()
                up.wait_healthy()
            sent = len(scenario.messages)

            def all_out(families: Families, sent: int = sent) -> bool:
                return _outcomes(families) >= sent and _every_lag_zero(families, settings)

            up.wait_for(all_out, f"{sent} outcomes and exnet_consumer_lag to read 0 everywhere")
            time.sleep(2)  # a second reading of the backlog would count on meanwhile
            families = up.wait_for(lambda f: _every_lag_zero(f, settings), "lag 0")
            _assert_counters(families, scenario, settings)
            status, _ = up.terminate()
            assert status == 0, up.log_tail()
        finally:
            up.close()
