"""``exnet.admin``: the topics' configs; a prefix's topics and consumer groups deleted,
and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import NoError
from kafka.structs import OffsetAndMetadata, TopicPartition

from exnet.admin import delete_prefixed, ensure_topics, other_pipelines, topic_configs
from streams.names import CONTRIBUTIONS_TABLE, DEDUP_TABLE, PARTICIPANTS_TABLE, changelog_topic
from tests.conftest import SettingsFactory, wait_until

pytestmark = pytest.mark.kafka

#: Seconds for the broker to show what was asked of it (a group's state after its
#: member left; a deleted topic gone from the metadata: both are asynchronous).
SETTLE_S = 60.0


def _commit_as(admin: KafkaAdminClient, group: str, topic: str) -> None:
    """Commit an offset as ``group`` (no member joins), so the broker keeps the group,
    Empty. (A consumer joining the group hung once in CI, inside kafka-python.)"""
    committed = admin.alter_group_offsets(
        group, {TopicPartition(topic, 0): OffsetAndMetadata(0, "", -1)}
    )
    assert set(committed.values()) == {NoError}, committed


def test_delete_prefixed_deletes_that_prefix_s_topics_and_groups_only(
    settings_factory: SettingsFactory, kafka_admin: KafkaAdminClient
) -> None:
    doomed, kept = settings_factory(partitions=1), settings_factory(partitions=1)
    assert ensure_topics(doomed) and ensure_topics(kept)
    topic = next(iter(topic_configs(doomed)))
    groups = [f"{doomed.topic_prefix}g", f"{kept.topic_prefix}g"]
    for group in groups:
        _commit_as(kafka_admin, group, topic)

    def states() -> dict[str, str]:
        return {g["group_id"]: g["group_state"] for g in kafka_admin.list_groups()}

    wait_until(
        lambda: all(states().get(g) == "Empty" for g in groups), "the groups Empty", SETTLE_S, 0.2
    )

    deleted_topics, deleted_groups = delete_prefixed(kafka_admin, doomed.topic_prefix)

    assert deleted_topics == sorted(topic_configs(doomed))
    assert deleted_groups == [groups[0]]
    wait_until(
        lambda: not any(t.startswith(doomed.topic_prefix) for t in kafka_admin.list_topics()),
        "the deleted topics gone from the listing",
        SETTLE_S,
        0.2,
    )
    assert set(topic_configs(kept)) <= set(kafka_admin.list_topics())
    assert groups[1] in states() and groups[0] not in states()


@pytest.mark.parametrize("prefix", ["", ".", "exnet", "t1234"])
def test_delete_prefixed_refuses_what_is_no_run_s_own_prefix(
    kafka_admin: KafkaAdminClient, prefix: str
) -> None:
    with pytest.raises(ValueError, match="a prefix ends in"):
        delete_prefixed(kafka_admin, prefix)


def _topic_configs(admin: KafkaAdminClient, topic: str) -> dict[str, str]:
    """The configs ``topic`` sets itself."""
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    return {
        key: entry["value"]
        for key, entry in described["topic"][topic].items()
        if entry["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    }


def test_changelogs_rewriting_their_keys_roll_segments_the_log_cleaner_can_compact(
    settings_factory: SettingsFactory, kafka_admin: KafkaAdminClient
) -> None:
    settings = settings_factory(partitions=1)
    ensure_topics(settings)
    participants = _topic_configs(kafka_admin, changelog_topic(settings, PARTICIPANTS_TABLE))
    dedup = _topic_configs(kafka_admin, changelog_topic(settings, DEDUP_TABLE))
    assert participants["cleanup.policy"] == dedup["cleanup.policy"] == "compact"
    assert participants["segment.bytes"] == str(16 * 2**20)
    assert participants["segment.ms"] == str(3_600_000)
    assert "segment.bytes" not in dedup and "segment.ms" not in dedup


def test_an_existing_topic_gets_the_configs_it_lacks_and_keeps_its_own(
    settings_factory: SettingsFactory, kafka_admin: KafkaAdminClient
) -> None:
    """A deployment made by an earlier version: `exnet init` (and `exnet up`) adds what
    is new, and leaves what an operator set."""
    settings = settings_factory(partitions=1)
    contributions = changelog_topic(settings, CONTRIBUTIONS_TABLE)
    kafka_admin.create_topics(
        [
            NewTopic(
                contributions,
                1,
                1,
                topic_configs={"cleanup.policy": "compact", "segment.ms": "7200000"},
            )
        ],
        wait_for_metadata=True,
    )

    ensure_topics(settings)

    configs = _topic_configs(kafka_admin, contributions)
    assert configs["segment.bytes"] == str(16 * 2**20)  # added
    assert configs["segment.ms"] == "7200000"  # the operator's, kept


def test_another_pipeline_on_the_same_prefix_is_found_while_it_has_members(
    settings_factory: SettingsFactory, topic_factory: Any
) -> None:
    settings = settings_factory()
    topic = topic_factory(f"{settings.topic_prefix}exnet.accepted")
    prefix = settings.topic_prefix
    groups = (f"{prefix}staging-sink", f"{prefix}{settings.consumer_group}-sink")
    consumers = []
    try:
        for group in groups:
            consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group)
            consumer.subscribe([topic])
            consumers.append(consumer)

        def joined() -> bool:
            # A member in its group is enough (kafka-python may join first with an empty
            # assignment): ask Kafka for the groups' states, not the consumers for partitions.
            for consumer in consumers:
                consumer.poll(timeout_ms=100)
            admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
            try:
                states = {g["group_id"]: g["group_state"] for g in admin.list_groups()}
            finally:
                admin.close()
            return all(states.get(group) == "Stable" for group in groups)

        wait_until(joined, "both groups to have a member", 60.0)
        assert other_pipelines(settings) == [f"{prefix}staging-sink"]
    finally:
        for consumer in consumers:
            consumer.close()
    # Without members (Empty), a group is another pipeline's past, not a running one.
    assert other_pipelines(settings) == []
