"""Fixtures shared by every test module.

Tests marked ``kafka`` need a real broker at ``EXNET_KAFKA_BOOTSTRAP``
(default ``127.0.0.1:9092``, started by ``exnet broker start``). A missing
broker fails them with a message saying so; it never skips them.

Each test gets its own names: topics ``test-<uuid>`` from :func:`topic_factory`,
and settings with a unique topic prefix and a temporary ``var_dir`` from
:func:`settings_factory`, so tests run side by side on the shared broker.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, UnknownTopicOrPartitionError

from exnet.admin import delete_prefixed
from exnet.broker import broker_answers
from exnet.settings import Settings, load_settings

#: Seconds to wait for the shared broker to answer once, at session start.
BROKER_PROBE_TIMEOUT_S = 5.0
#: Seconds a new topic may take until every partition has a leader.
TOPIC_READY_TIMEOUT_S = 15.0


class TopicFactory(Protocol):
    def __call__(
        self,
        name: str | None = None,
        *,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> str: ...


SettingsFactory = Callable[..., Settings]


def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float, interval_s: float = 0.1
) -> None:
    """Poll ``condition`` every ``interval_s`` until it holds; fail the test naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The bootstrap of a broker that answers metadata requests; fails the test otherwise."""
    bootstrap = load_settings().kafka_bootstrap
    if not broker_answers(bootstrap, timeout_s=BROKER_PROBE_TIMEOUT_S):
        pytest.fail(
            f"no Kafka broker answers at {bootstrap} (EXNET_KAFKA_BOOTSTRAP): "
            "start it with `exnet broker start`",
            pytrace=False,
        )
    return bootstrap


@pytest.fixture(autouse=True)
def _kafka_marker_needs_broker(request: pytest.FixtureRequest) -> None:
    """A test marked ``kafka`` fails at once without a broker, whatever fixtures it uses."""
    if request.node.get_closest_marker("kafka") is not None:
        request.getfixturevalue("kafka_bootstrap")


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    """One admin client for the session (creating and deleting test topics)."""
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="exnet-tests")
    yield admin
    admin.close()


@pytest.fixture
def topic_factory(kafka_admin: KafkaAdminClient) -> Iterator[TopicFactory]:
    """Create topics for one test and delete them after it.

    ``topic_factory()`` makes a unique ``test-<uuid>`` topic;
    ``topic_factory(name)`` creates exactly ``name`` (make it unique, e.g. with a
    ``settings_factory`` prefix). It returns once every partition has a leader.
    """
    created: list[str] = []

    def create(
        name: str | None = None,
        *,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> str:
        topic = name if name is not None else f"test-{uuid4().hex}"
        kafka_admin.create_topics(
            [NewTopic(topic, partitions, 1, topic_configs=dict(config or {}))]
        )
        created.append(topic)
        _wait_for_leaders(kafka_admin, topic, partitions)
        return topic

    yield create
    if created:
        # a test may have deleted one itself; the others are deleted anyway
        with contextlib.suppress(UnknownTopicOrPartitionError):
            kafka_admin.delete_topics(created)


@pytest.fixture
def settings_factory(request: pytest.FixtureRequest, tmp_path: Path) -> SettingsFactory:
    """``Settings`` for one test: a unique topic prefix, ``var_dir`` under
    ``tmp_path``, the tested broker's bootstrap; keyword arguments override.

    The broker is checked (through ``kafka_bootstrap``) only for tests marked
    ``kafka``, so tests without a broker can use settings too.
    """
    made: list[Settings] = []  # with a prefix of the factory's own
    if request.node.get_closest_marker("kafka") is not None:
        bootstrap: str = request.getfixturevalue("kafka_bootstrap")
        admin: KafkaAdminClient = request.getfixturevalue("kafka_admin")
        request.addfinalizer(lambda: _delete_prefixes(admin, bootstrap, made))
    else:
        bootstrap = load_settings().kafka_bootstrap

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "topic_prefix": f"t{uuid4().hex[:8]}.",
            "var_dir": tmp_path,
            "kafka_bootstrap": bootstrap,
        }
        values.update(overrides)
        settings = Settings(**values)
        if "topic_prefix" not in overrides:
            made.append(settings)
        return settings

    return make


def _delete_prefixes(admin: KafkaAdminClient, bootstrap: str, made: list[Settings]) -> None:
    """After a test, the topics and consumer groups under each prefix the factory made for
    it on the session's broker (a test's own cluster goes with it), so that runs do not
    pile up on a developer's broker."""
    for prefix in {s.topic_prefix for s in made if s.kafka_bootstrap == bootstrap}:
        delete_prefixed(admin, prefix)


def _wait_for_leaders(admin: KafkaAdminClient, topic: str, partitions: int) -> None:
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    while True:
        try:
            (described,) = admin.describe_topics([topic])
            leaders = [p["leader_id"] for p in described.get("partitions", [])]
            ready = described.get("error_code") == 0 and len(leaders) == partitions
            if ready and all(leader >= 0 for leader in leaders):
                return
        except KafkaError:
            pass  # not known to the broker's metadata yet
        if time.monotonic() >= deadline:
            pytest.fail(f"topic {topic} got no leaders within {TOPIC_READY_TIMEOUT_S} s")
        time.sleep(0.1)
