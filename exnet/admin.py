"""Kafka topics: created idempotently by ``exnet init``."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from contracts.catalog import TOPICS
from contracts.errors import RecoverableError, UserError
from contracts.topics import topic_name
from exnet.settings import Settings, silent_broker_hint
from streams.names import (
    CONTRIBUTIONS_TABLE,
    PARTICIPANTS_TABLE,
    TABLE_SOURCES,
    changelog_topic,
    changelog_topics,
)

__all__ = [
    "admin_client",
    "delete_prefixed",
    "ensure_topics",
    "other_pipelines",
    "replication_factor",
    "topic_configs",
    "topic_partitions",
]

log = logging.getLogger(__name__)

_COMPACT: Final = {"cleanup.policy": "compact"}
#: The changelogs of tables that write each key again and again (a participant's
#: state, and their contribution, after every batch that touched them): segments
#: that roll at 16 MiB or after an hour, so that Kafka's log cleaner compacts them
#: while the pipeline runs. Kafka never compacts a topic's active segment (1 GiB,
#: 7 days by default): after a million events those two changelogs held 1.7 GB,
#: every version of every key, which each restart read back in full; 96 MB once
#: compacted. The dedup table writes each key once (an event_id): compacting its
#: changelog would only copy it again, so it keeps Kafka's segments.
_ROLLING_COMPACT: Final = {
    **_COMPACT,
    "segment.bytes": str(16 * 2**20),
    "segment.ms": str(60 * 60 * 1000),
}
_CHANGELOG_CONFIGS: Final = {
    PARTICIPANTS_TABLE: _ROLLING_COMPACT,
    CONTRIBUTIONS_TABLE: _ROLLING_COMPACT,
}


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Every topic exnet needs (physical name -> config), the tables' changelogs included."""
    configs = {topic_name(spec.topic, settings.topic_prefix): dict(spec.config) for spec in TOPICS}
    for table in TABLE_SOURCES:
        configs[changelog_topic(settings, table)] = dict(_CHANGELOG_CONFIGS.get(table, _COMPACT))
    return configs


def topic_partitions(settings: Settings) -> dict[str, int]:
    """Every topic exnet needs (physical name -> partitions): ``EXNET_PARTITIONS`` unless
    the catalog fixes a number (a table's changelog has its input's partitions)."""
    fixed = {
        topic_name(spec.topic, settings.topic_prefix): spec.partitions
        for spec in TOPICS
        if spec.partitions is not None
    }
    partitions = {name: fixed.get(name, settings.partitions) for name in topic_configs(settings)}
    for changelog, source in changelog_topics(settings).items():
        partitions[changelog] = partitions[topic_name(source, settings.topic_prefix)]
    return partitions


#: Seconds :func:`tls_listener` waits for a broker's answer.
TLS_PROBE_S: Final = 2.0
#: An ApiVersions request, as a plaintext client opens a connection: its size (10), API
#: key 18, version 0, correlation id 1, no client id. A TLS listener answers with an alert.
_API_VERSIONS_V0: Final = bytes.fromhex("0000000a 0012 0000 00000001 ffff")
#: A TLS record of type alert (21), version 3.x: what a TLS listener sends back.
_TLS_ALERT: Final = b"\x15\x03"


def tls_listener(bootstrap: str) -> str | None:
    """The first address of ``bootstrap`` whose listener answers a plaintext Kafka request
    with a TLS alert, or None (none does, or none answers within :data:`TLS_PROBE_S`).

    Why: a plaintext client against a SASL_SSL broker waited out kafka-python's 30 s
    bootstrap, its log filled with "Invalid frame length: 352518912" (0x15030300: the
    alert read as a length), then said that no broker answers (an outside check)."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), TLS_PROBE_S) as sock:
                sock.settimeout(TLS_PROBE_S)
                sock.sendall(_API_VERSIONS_V0)
                if sock.recv(2) == _TLS_ALERT:
                    return address.strip()
        except (OSError, ValueError):
            continue
    return None


@contextmanager
def admin_client(settings: Settings) -> Iterator[KafkaAdminClient]:
    if settings.kafka_security_protocol == "PLAINTEXT" and (
        address := tls_listener(settings.kafka_bootstrap)
    ):
        raise UserError(
            f"the Kafka broker at {address} speaks TLS, and this process connects in "
            "plaintext: point EXNET_ENV_FILE at your login's env file (or set "
            "EXNET_KAFKA_SECURITY_PROTOCOL=SASL_SSL and the login's settings)"
        )
    try:
        admin = KafkaAdminClient(
            **settings.kafka_client_config(),
            client_id="exnet-admin",
            request_timeout_ms=30_000,
        )
    except KafkaError as exc:
        raise UserError(
            f"no Kafka broker answers at {settings.kafka_bootstrap} ({exc}): start the local one "
            "with `exnet broker start`, or point EXNET_KAFKA_BOOTSTRAP at yours"
            + (f"; {hint}" if (hint := silent_broker_hint(settings)) else "")
        ) from None
    try:
        yield admin
    finally:
        admin.close()


#: The states of a consumer group with members (the classic protocol's; KIP-848's).
_ACTIVE_GROUP_STATES: Final = frozenset(
    ("Stable", "PreparingRebalance", "CompletingRebalance", "Assigning", "Reconciling")
)


def other_pipelines(settings: Settings) -> list[str]:
    """The consumer groups with members now of another pipeline on these topics:
    ``<prefix><name>-streams`` or ``<prefix><name>-sink`` with another name than
    ``EXNET_CONSUMER_GROUP``. Such a pipeline writes the same internal topics
    (``exnet.validated``, ``exnet.accepted``, ``exnet.views``...) and its sink writes
    this one's outputs too: the two mix. Empty when the cluster does not list its
    groups to this login.
    """
    named = re.compile(
        re.escape(settings.topic_prefix) + r"([A-Za-z_][A-Za-z0-9_]*)-(?:streams|sink)"
    )
    try:
        with admin_client(settings) as admin:
            groups = admin.list_groups()
    except (KafkaError, UserError) as exc:
        log.debug("could not list the consumer groups: %r", exc)
        return []
    found = []
    for group in groups:
        match = named.fullmatch(group["group_id"])
        if (
            match is not None
            and match.group(1) != settings.consumer_group
            and group.get("group_state") in _ACTIVE_GROUP_STATES
        ):
            found.append(group["group_id"])
    return sorted(found)


def replication_factor(settings: Settings, admin: KafkaAdminClient | None = None) -> int:
    """``EXNET_REPLICATION_FACTOR``, or else the cluster's brokers up to 3."""
    if settings.replication_factor is not None:
        return settings.replication_factor
    if admin is None:
        with admin_client(settings) as own:
            return replication_factor(settings, own)
    try:
        brokers = len(admin.describe_cluster()["brokers"])
    except KafkaError as exc:  # asked of a broker that just died, say (its peers answer)
        raise RecoverableError(f"could not count the Kafka cluster's brokers: {exc}") from exc
    return max(1, min(3, brokers))


def ensure_topics(settings: Settings) -> list[str]:
    """Create the topics that are missing; return the names created. Idempotent.

    Replicated as :func:`replication_factor` says, with ``min.insync.replicas``
    of 2 when there are 2 replicas or more: with ``acks=all`` a write then
    survives the loss of any one broker. A topic that exists already gets the
    configs of :func:`topic_configs` it does not set itself (those a later
    version of exnet added); what a topic sets is left as it is (an operator's
    choice).
    """
    wanted = topic_configs(settings)
    partitions = topic_partitions(settings)
    with admin_client(settings) as admin:
        replicas = replication_factor(settings, admin)
        in_sync = {"min.insync.replicas": str(min(2, replicas))}
        existing = set(admin.list_topics())
        _add_missing_configs(admin, {n: c for n, c in wanted.items() if n in existing})
        missing = [
            NewTopic(
                name,
                num_partitions=partitions[name],
                replication_factor=replicas,
                topic_configs={**config, **in_sync},
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


def _add_missing_configs(admin: KafkaAdminClient, wanted: dict[str, dict[str, str]]) -> None:
    """Set on each existing topic of ``wanted`` (name -> config) the keys it does not set
    at topic level, as :func:`ensure_topics` would at creation (a broker-wide default is
    overridden, as there). A cluster that refuses (no DESCRIBE_CONFIGS or ALTER_CONFIGS
    right) gets a warning, not an error: the pipeline runs on the topics as they are."""
    if not wanted:
        return
    try:
        described: dict[str, dict[str, Any]] = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
        )["topic"]
        unset = {}
        for name, config in wanted.items():
            own = described.get(name)
            if not own:
                # Every topic exnet (or Faust) makes sets a config of its own: nothing
                # described is a describe that failed for this topic (kafka-python
                # drops a resource's error), and setting every key would overwrite
                # what an operator set.
                log.warning("could not read the configs of topic %s; left as it is", name)
                continue
            unset[name] = {
                key: value
                for key, value in config.items()
                if own.get(key, {}).get("config_source") != "DYNAMIC_TOPIC_CONFIG"
            }
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs=configs)
            for name, configs in unset.items()
            if configs
        ]
        if not resources:
            return
        answers = admin.alter_configs(resources, raise_on_unknown=False)["topic"]
    except KafkaError as exc:
        log.warning("could not read or set the configs of existing topics: %s", exc)
        return
    for resource in resources:
        answer = answers.get(resource.name)
        if answer == "OK":
            log.info("set %s on topic %s", _shown(resource.configs), resource.name)
        else:
            log.warning(
                "could not set %s on topic %s: %s", _shown(resource.configs), resource.name, answer
            )


def _shown(configs: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(configs.items()))


def delete_prefixed(admin: KafkaAdminClient, prefix: str) -> tuple[list[str], list[str]]:
    """Delete every topic and every consumer group whose name starts with ``prefix``: a
    pipeline's inputs, internal topics, Faust's changelogs and its groups, for runs that
    made them under a prefix of their own (``make bench``, the tests). Returns the topics
    and groups deleted. A group that still has members is left (Kafka refuses it).

    Raises ``ValueError`` for a prefix that is not one whole name part ending in ``.``
    (``""`` would be every topic of the cluster, ``"exnet"`` a deployment's) and
    ``kafka.errors.KafkaError`` when the broker does not answer. A topic being
    deleted already (by the run itself) is no error.
    """
    if not prefix.endswith(".") or prefix == ".":
        raise ValueError(f"refusing to delete under {prefix!r}: a prefix ends in '.'")
    topics = sorted(t for t in admin.list_topics() if t.startswith(prefix))
    if topics:
        admin.delete_topics(topics, timeout_ms=30_000, raise_errors=False)
    groups = sorted(
        g["group_id"]
        for g in admin.list_groups()
        if g["group_id"].startswith(prefix) and g["group_state"] in ("Empty", "Dead")
    )
    if not groups:
        return topics, []
    # {group: "OK" or the error's name} (kafka-python 3.0; its docstring says tuples)
    answers: dict[str, str] = admin.delete_groups(groups)
    return topics, sorted(group for group, answer in answers.items() if answer == "OK")
