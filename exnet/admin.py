"""Kafka topics: created idempotently by ``exnet init``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from exnet.contracts.topics import Topic, topic_name
from exnet.errors import UserError
from exnet.settings import Settings
from exnet.streams.app import changelog_topic

__all__ = ["admin_client", "ensure_topics", "topic_configs"]

log = logging.getLogger(__name__)

_DAY_MS = 24 * 3600 * 1000

#: Per-topic configuration (what the topic catalog exports to operators).
_CONFIGS: dict[Topic, dict[str, str]] = {
    # Sites' events: kept a month for replays; ClickHouse is the system of record.
    Topic.ENROLLMENT: {"retention.ms": str(30 * _DAY_MS), "max.message.bytes": str(1024 * 1024)},
    Topic.SESSION: {"retention.ms": str(30 * _DAY_MS), "max.message.bytes": str(1024 * 1024)},
    Topic.ASSAY: {"retention.ms": str(30 * _DAY_MS), "max.message.bytes": str(1024 * 1024)},
    Topic.ASSESSMENT: {"retention.ms": str(30 * _DAY_MS), "max.message.bytes": str(1024 * 1024)},
    # Rejections: kept long enough for sites to fix and resend.
    Topic.DEADLETTER: {
        "retention.ms": str(90 * _DAY_MS),
        "max.message.bytes": str(2 * 1024 * 1024),
    },
    # Internal hops: a week covers any outage of the downstream stage.
    Topic.VALIDATED: {"retention.ms": str(7 * _DAY_MS), "max.message.bytes": str(2 * 1024 * 1024)},
    Topic.ACCEPTED: {"retention.ms": str(7 * _DAY_MS), "max.message.bytes": str(1024 * 1024)},
}


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Every topic exnet needs (physical name -> config), the dedup changelog included."""
    configs = {topic_name(t, settings.topic_prefix): dict(c) for t, c in _CONFIGS.items()}
    configs[changelog_topic(settings)] = {"cleanup.policy": "compact"}
    return configs


@contextmanager
def admin_client(settings: Settings) -> Iterator[KafkaAdminClient]:
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            client_id="exnet-admin",
            request_timeout_ms=30_000,
        )
    except KafkaError as exc:
        raise UserError(
            f"no Kafka broker answers at {settings.kafka_bootstrap} ({exc}): start the local one "
            "with `exnet broker start`, or point EXNET_KAFKA_BOOTSTRAP at yours"
        ) from None
    try:
        yield admin
    finally:
        admin.close()


def ensure_topics(settings: Settings) -> list[str]:
    """Create the topics that are missing; return the names created. Idempotent."""
    wanted = topic_configs(settings)
    with admin_client(settings) as admin:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=config,
            )
            for name, config in wanted.items()
            if name not in existing
        ]
        if not missing:
            return []
        try:
            admin.create_topics(missing, timeout_ms=30_000)
        except TopicAlreadyExistsError:
            pass  # another process created them between our look and our create
        except KafkaError as exc:
            raise UserError(f"could not create topics: {exc}") from exc
    created = [topic.name for topic in missing]
    log.info("created topics %s", ", ".join(created))
    return created
