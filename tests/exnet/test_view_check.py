"""The sink role's scheduled check of the views, as `exnet up` runs it: a real broker, the
embedded database, the check reading through the SQL endpoint's read-only session."""

from __future__ import annotations

import orjson
import pytest
from kafka import KafkaProducer

from contracts import headers as H
from contracts.registry import load_registry
from contracts.topics import Topic, topic_name
from contracts.views import VIEW_KEYS
from exnet.metrics import Metrics
from exnet.runner import _SinkRole
from sinks.query import run_query
from sinks.rows import VIEW_COLUMNS
from tests.conftest import SettingsFactory, TopicFactory, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

#: Seconds for the sink to start, write, and check twice.
TIMEOUT_S = 60.0


def test_the_sink_role_counts_settled_differences(
    settings_factory: SettingsFactory, topic_factory: TopicFactory
) -> None:
    settings = settings_factory(verify_interval_s=0.3, sink_batch_seconds=0.05)
    for topic in (Topic.ACCEPTED, Topic.DEADLETTER, Topic.VIEWS):
        topic_factory(topic_name(topic, settings.topic_prefix))
    metrics = Metrics()
    metrics.preset([])
    errors: list[str] = []
    role = _SinkRole(settings, metrics, standby=False, on_error=lambda: errors.append("sink"))
    registry = metrics.registry

    def differing(view: str) -> float | None:
        return registry.get_sample_value("exnet_view_rows_differing", {"view": view})

    def checked() -> float:
        return registry.get_sample_value("exnet_view_check_last_timestamp_seconds") or 0.0

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)

    def send(view: str, key: str, **figures: object) -> None:
        row: dict[str, object] = dict.fromkeys(VIEW_COLUMNS[view], 0)
        row |= {"updated_at": "2026-11-30T17:50:01.123+00:00", "version": 0, **figures}
        topic = topic_name(Topic.VIEWS, settings.topic_prefix)
        headers = [(H.TABLE, view.encode())]
        producer.send(topic, key=key.encode(), value=orjson.dumps(row), headers=headers)
        producer.flush()

    role.start()
    try:
        # An empty network: the rows of zeros the stream sends first, as the reference.
        nodes = load_registry(settings.registry_path).nodes
        for node in nodes:
            send("node_summary", f"node_summary|{node.id}", node_id=node.id, node_name=node.name)
        send("network_summary", "network_summary")
        wait_until(lambda: checked() > 0, "a first check", TIMEOUT_S)
        wait_until(
            lambda: all(differing(view) == 0.0 for view in VIEW_KEYS), "no difference", TIMEOUT_S
        )

        # The stream says 7 assays for the network; the facts hold none.
        send("network_summary", "network_summary", assays=7, version=1)
        producer.close()
        wait_until(lambda: differing("network_summary") == 1.0, "the settled difference", TIMEOUT_S)
        assert differing("node_summary") == 0.0
        # Analysts' queries share the endpoint's session with the check, one at a time.
        assert run_query(settings, "SELECT assays FROM network_summary FINAL", "TSV") == b"7\n"
        assert registry.get_sample_value("exnet_view_check_errors_total") == 0.0
    finally:
        role.stop()
        role.join(timeout=TIMEOUT_S)
    assert not role.is_alive() and role.error is None and not errors
