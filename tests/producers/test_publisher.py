"""The Publisher's delivery bookkeeping, against a fake producer (no broker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from kafka.errors import KafkaTimeoutError

from contracts import INPUT_TOPICS, Accepted, Reason, Rejected, Topic, topic_name
from contracts.registry import DEMO_REGISTRY
from exnet.settings import Settings
from producers import Publisher, Simulation, flush_spool, spool_of
from producers import publisher as publisher_module
from producers.publisher import COMMIT_EVENTS


class FakeFuture:
    """Settled at once, like a kafka-python future after the broker answered."""

    def __init__(self, exception: Exception | None = None) -> None:
        self.is_done = True
        self.exception = exception

    def succeeded(self) -> bool:
        return self.exception is None

    def get(self, timeout: float | None = None) -> None:
        if self.exception is not None:
            raise self.exception


class FakeProducer:
    """Records what it is given; ``fail`` decides, per send number, whether it fails."""

    PARTITIONS = 6

    def __init__(self, fail: Callable[[int], bool] = lambda _: False) -> None:
        self.fail = fail
        self.sends = 0
        self.delivered: list[tuple[str, bytes, bytes]] = []
        self.refused: list[bytes] = []
        self.partition_of: dict[tuple[str, bytes], int] = {}
        self.closed = False

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.PARTITIONS))

    def send(
        self, topic: str, value: bytes, key: bytes, partition: int | None = None
    ) -> FakeFuture:
        number = self.sends
        self.sends += 1
        assert partition is not None and 0 <= partition < self.PARTITIONS
        assert self.partition_of.setdefault((topic, key), partition) == partition
        if self.fail(number):
            self.refused.append(value)
            return FakeFuture(KafkaTimeoutError("Batch expired"))
        self.delivered.append((topic, key, value))
        return FakeFuture()

    def values(self) -> list[bytes]:
        return [value for _topic, _key, value in self.delivered]

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def in_order_per_key(sent: list[bytes], original: list[bytes]) -> bool:
    """Whether each participant's events of one type were sent in their original order."""
    position = {value: index for index, value in enumerate(original)}
    last: dict[tuple[str, str], int] = {}
    for value in sent:
        document = orjson.loads(value)
        key = (document["schema"], document["participant_id"])
        if position[value] < last.get(key, -1):
            return False
        last[key] = position[value]
    return True


def input_topics(settings: Settings) -> set[str]:
    """The topics a Kafka that ``exnet init`` set up holds for ``settings``'s prefix."""
    return {topic_name(topic, settings.topic_prefix) for topic in INPUT_TOPICS}


@pytest.fixture
def fake_connect(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeProducer | None], None]:
    """Make ``connect_producer`` hand out the given fake (None: Kafka unreachable)."""

    def use(producer: FakeProducer | None) -> None:
        def connect(settings: Settings, client_id: str = "", why: Any = None) -> Any:
            return producer

        monkeypatch.setattr(publisher_module, "connect_producer", connect)
        # The fake holds every input topic (the checks ask Kafka itself otherwise).
        monkeypatch.setattr(publisher_module, "existing_topics", input_topics)

    return use


def _valid_values(simulation: Simulation, count: int) -> list[bytes]:
    values = [m.value for m in simulation.messages if m.kind.value == "event"]
    assert len(values) >= count
    return values[:count]


def test_every_acknowledged_event_is_sent_and_the_spool_left_empty(
    pub_settings: Settings,
    pub_simulation: Simulation,
    fake_connect: Callable[[FakeProducer | None], None],
) -> None:
    producer = FakeProducer()
    fake_connect(producer)
    values = _valid_values(pub_simulation, 2 * COMMIT_EVENTS + 17)
    with Publisher(pub_settings) as publisher:
        for value in values:
            assert isinstance(publisher.publish(value), Accepted)
    summary = publisher.summary()
    assert (summary.accepted, summary.sent, summary.spooled, summary.pending) == (
        len(values),
        len(values),
        0,
        0,
    )
    assert sorted(producer.values()) == sorted(values)  # same bytes, each once
    assert in_order_per_key(producer.values(), values)
    for topic, key, value in producer.delivered:
        document = orjson.loads(value)
        assert key == document["participant_id"].encode()
        expected_topic = Topic.for_event_type(document["schema"].split("/")[0])
        assert topic == topic_name(expected_topic, pub_settings.topic_prefix)
    assert producer.closed
    assert spool_of(pub_settings).segment_paths() == []


def test_invalid_events_are_neither_sent_nor_spooled(
    pub_settings: Settings, fake_connect: Callable[[FakeProducer | None], None]
) -> None:
    producer = FakeProducer()
    fake_connect(producer)
    with Publisher(pub_settings) as publisher:
        outcome = publisher.publish(b'{"schema": "session/1"}')
        assert isinstance(outcome, Rejected)
        assert outcome.reason is Reason.INVALID_FIELD
        assert isinstance(publisher.publish(b"not json"), Rejected)
    summary = publisher.summary()
    assert (summary.accepted, summary.invalid, summary.sent, summary.spooled) == (0, 2, 0, 0)
    assert summary.invalid_by_reason == {Reason.INVALID_FIELD: 1, Reason.MALFORMED_JSON: 1}
    assert producer.sends == 0
    assert spool_of(pub_settings).segment_paths() == []


def test_a_dict_is_serialised_once(
    pub_settings: Settings,
    pub_simulation: Simulation,
    fake_connect: Callable[[FakeProducer | None], None],
) -> None:
    producer = FakeProducer()
    fake_connect(producer)
    document = orjson.loads(_valid_values(pub_simulation, 1)[0])
    with Publisher(pub_settings) as publisher:
        assert isinstance(publisher.publish(document), Accepted)
    assert producer.delivered[0][2] == orjson.dumps(document)


def test_unacknowledged_events_are_spooled_then_flushed_exactly_once(
    pub_settings: Settings,
    pub_simulation: Simulation,
    fake_connect: Callable[[FakeProducer | None], None],
) -> None:
    values = _valid_values(pub_simulation, 2500)
    # Kafka acknowledges the first 1500 sends, then stops.
    first = FakeProducer(fail=lambda number: number >= 1500)
    fake_connect(first)
    with Publisher(pub_settings) as publisher:
        for value in values:
            publisher.publish(value)
    summary = publisher.summary()
    assert summary.sent == 1500
    assert summary.spooled == 1000
    # kafka-python's error names its class itself: told once, not "KafkaTimeoutError:
    # KafkaTimeoutError: ..." as a site read it (an outside check).
    assert summary.problem == "KafkaTimeoutError: Batch expired"
    assert spool_of(pub_settings).status().pending == 1000

    healthy = FakeProducer()
    flushed = flush_spool(pub_settings, producer=healthy)
    assert (flushed.sent, flushed.remaining) == (1000, 0)
    refused = set(values) - set(first.values())
    assert sorted(healthy.values()) == sorted(refused)  # exactly those, once
    assert spool_of(pub_settings).segment_paths() == []
    # Nothing is left to send twice.
    assert flush_spool(pub_settings, producer=FakeProducer()).sent == 0


def test_with_kafka_unreachable_every_accepted_event_is_spooled(
    pub_settings: Settings,
    pub_simulation: Simulation,
    fake_connect: Callable[[FakeProducer | None], None],
) -> None:
    fake_connect(None)
    values = _valid_values(pub_simulation, 300)
    with Publisher(pub_settings) as publisher:
        for value in values:
            publisher.publish(value)
        publisher.publish(b"{}")
    summary = publisher.summary()
    assert (summary.accepted, summary.sent, summary.spooled, summary.invalid) == (300, 0, 300, 1)
    assert spool_of(pub_settings).status().pending == 300

    # Still down: a flush keeps everything.
    assert flush_spool(pub_settings).remaining == 300
    # A later publisher run resends the old events first, through its producer.
    producer = FakeProducer()
    fake_connect(producer)
    with Publisher(pub_settings) as publisher:
        resent = publisher.resend_spool()
        publisher.publish(values[0])
    assert (resent.sent, resent.remaining) == (300, 0)
    assert sorted(producer.values()[:300]) == sorted(values)  # the old events first
    assert producer.values()[300:] == [values[0]]
    assert publisher.summary().sent == 1  # the resent ones are counted apart
    assert spool_of(pub_settings).segment_paths() == []


def test_a_failure_within_a_flush_keeps_the_rest_for_later(
    pub_settings: Settings,
    pub_simulation: Simulation,
    fake_connect: Callable[[FakeProducer | None], None],
) -> None:
    fake_connect(None)
    values = _valid_values(pub_simulation, 50)
    with Publisher(pub_settings) as publisher:
        for value in values:
            publisher.publish(value)
    flaky = FakeProducer(fail=lambda number: number in (10, 11, 30))
    flushed = flush_spool(pub_settings, producer=flaky)
    assert flushed.sent == 47
    assert flushed.remaining == 3
    again = FakeProducer()
    assert flush_spool(pub_settings, producer=again).sent == 3
    assert sorted(again.values()) == sorted(flaky.refused)


def test_a_closed_publisher_refuses_events(
    pub_settings: Settings, fake_connect: Callable[[FakeProducer | None], None]
) -> None:
    fake_connect(FakeProducer())
    publisher = Publisher(pub_settings)
    publisher.close()
    with pytest.raises(ValueError, match="closed"):
        publisher.publish(b"{}")


def test_the_registry_is_checked_only_when_the_site_names_one(
    pub_settings: Settings,
    pub_simulation: Simulation,
    fake_connect: Callable[[FakeProducer | None], None],
) -> None:
    fake_connect(FakeProducer())
    document = orjson.loads(_valid_values(pub_simulation, 1)[0])
    stranger = orjson.dumps(document | {"node_id": "N09", "site_id": "N09-S01"})
    with Publisher(pub_settings) as publisher:
        assert isinstance(publisher.publish(stranger), Accepted)
    with_registry = pub_settings.model_copy(update={"registry": DEMO_REGISTRY})
    with Publisher(with_registry) as publisher:
        outcome = publisher.publish(stranger)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is Reason.UNKNOWN_SITE
