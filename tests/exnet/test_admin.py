"""``exnet.admin``: topics created by ``exnet init``, and a prefix's topics and groups deleted."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer

from exnet.admin import delete_prefixed, ensure_topics, topic_configs
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.kafka


def _join_and_leave(bootstrap: str, group: str, topic: str) -> None:
    """Commit an offset as ``group``, so the broker keeps the group (state Empty after)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group)
    try:
        while not consumer.assignment():
            consumer.poll(timeout_ms=200)
        consumer.commit()
    finally:
        consumer.close()


def test_delete_prefixed_deletes_that_prefix_s_topics_and_groups_only(
    settings_factory: SettingsFactory, kafka_admin: KafkaAdminClient
) -> None:
    doomed, kept = settings_factory(partitions=1), settings_factory(partitions=1)
    assert ensure_topics(doomed) and ensure_topics(kept)
    topic = next(iter(topic_configs(doomed)))
    _join_and_leave(doomed.kafka_bootstrap, f"{doomed.topic_prefix}g", topic)
    _join_and_leave(doomed.kafka_bootstrap, f"{kept.topic_prefix}g", topic)

    topics, groups = delete_prefixed(kafka_admin, doomed.topic_prefix)

    assert topics == sorted(topic_configs(doomed)) and groups == [f"{doomed.topic_prefix}g"]
    left = set(kafka_admin.list_topics())
    assert not {t for t in left if t.startswith(doomed.topic_prefix)}
    assert set(topic_configs(kept)) <= left
    assert f"{kept.topic_prefix}g" in {g["group_id"] for g in kafka_admin.list_groups()}


@pytest.mark.parametrize("prefix", ["", ".", "exnet", "t1234"])
def test_delete_prefixed_refuses_what_is_no_run_s_own_prefix(
    kafka_admin: KafkaAdminClient, prefix: str
) -> None:
    with pytest.raises(ValueError, match="a prefix ends in"):
        delete_prefixed(kafka_admin, prefix)
