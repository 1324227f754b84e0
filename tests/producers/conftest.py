"""Fixtures of the producer tests (names start with ``pub_`` to stay clear of others).

``kafka_bootstrap``, ``settings_factory`` and ``topic_factory`` come from the
top-level ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from contracts import INPUT_TOPICS, NetworkRegistry, load_registry, topic_name
from contracts.registry import DEMO_REGISTRY
from exnet.settings import Settings
from producers import Simulation, SimulationConfig, generate
from producers import publisher as publisher_module

from .helpers import PUB_PARTITIONS
from .test_publisher import FakeProducer, input_topics

if TYPE_CHECKING:
    from tests.conftest import SettingsFactory, TopicFactory


@pytest.fixture(scope="session")
def pub_registry() -> NetworkRegistry:
    return load_registry(DEMO_REGISTRY)


@pytest.fixture(scope="session")
def pub_simulation(pub_registry: NetworkRegistry) -> Simulation:
    """A small network with every kind of extra message, shared by read-only tests."""
    config = SimulationConfig(
        seed=7, participants=80, invalid_share=0.05, duplicate_share=0.05, conflict_share=0.02
    )
    return generate(pub_registry, config)


@pytest.fixture
def pub_settings(settings_factory: SettingsFactory) -> Settings:
    """Settings with a unique topic prefix and var_dir, no broker needed."""
    return settings_factory()


@pytest.fixture
def pub_kafka_settings(settings_factory: SettingsFactory, topic_factory: TopicFactory) -> Settings:
    """Settings whose four input topics exist (6 partitions each) on the shared broker."""
    settings = settings_factory()
    for topic in INPUT_TOPICS:
        topic_factory(topic_name(topic, settings.topic_prefix), partitions=PUB_PARTITIONS)
    return settings


@pytest.fixture
def pub_write_lines(tmp_path: Path) -> Callable[..., Path]:
    """Write byte lines to a file under ``tmp_path``."""

    def write(lines: Iterable[bytes], name: str = "events.jsonl") -> Path:
        path = tmp_path / name
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return path

    return write


@pytest.fixture
def pub_producer(monkeypatch: pytest.MonkeyPatch) -> FakeProducer:
    """The publisher's Kafka producer, replaced by one that keeps what it is sent (for
    the command's and the publisher's own logic; the Kafka-marked tests use a broker)."""
    fake = FakeProducer()

    def connect(settings: Settings, client_id: str = "", why: Any = None) -> Any:
        return fake

    monkeypatch.setattr(publisher_module, "connect_producer", connect)
    # The fake holds every input topic (the checks ask Kafka itself otherwise).
    monkeypatch.setattr(publisher_module, "existing_topics", input_topics)
    return fake
