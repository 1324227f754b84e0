"""Every Kafka topic exnet knows, in one place (no topic name is a literal elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["INPUT_TOPICS", "Topic", "TopicSpec", "topic_name"]


class Topic(StrEnum):
    """Logical topic names; the physical name adds ``EXNET_TOPIC_PREFIX``."""

    ENROLLMENT = "exnet.enrollment"
    SESSION = "exnet.session"
    ASSAY = "exnet.assay"
    ASSESSMENT = "exnet.assessment"
    #: Original bytes of every rejected message, with origin headers (SPEC §2).
    DEADLETTER = "exnet.deadletter"
    #: Internal: validated events re-keyed by ``event_id`` for deduplication.
    VALIDATED = "exnet.validated"
    #: Internal: deduplicated, accepted events, read by the ClickHouse sink and the
    #: aggregate stage.
    ACCEPTED = "exnet.accepted"
    #: Internal: each participant's whole, versioned contribution to the views (one
    #: partition: the rollup sees every participant).
    CONTRIBUTIONS = "exnet.contributions"
    #: The stream-written views' rows (compacted; key = table and row key), read by the
    #: ClickHouse sink into the SPEC §4 view tables.
    VIEWS = "exnet.views"

    @property
    def event_type(self) -> str | None:
        """``enrollment`` for ``exnet.enrollment`` etc.; None for other topics."""
        return _EVENT_TYPE_OF.get(self)

    @classmethod
    def for_event_type(cls, event_type: str) -> Topic:
        return _TOPIC_OF[event_type]


_TOPIC_OF = {
    "enrollment": Topic.ENROLLMENT,
    "session": Topic.SESSION,
    "assay": Topic.ASSAY,
    "assessment": Topic.ASSESSMENT,
}
_EVENT_TYPE_OF = {topic: event_type for event_type, topic in _TOPIC_OF.items()}

#: The topics sites publish to.
INPUT_TOPICS: tuple[Topic, ...] = (Topic.ENROLLMENT, Topic.SESSION, Topic.ASSAY, Topic.ASSESSMENT)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What the topic registry says of one topic (exported for sites and operators).

    The registry itself is :data:`contracts.catalog.TOPICS`.
    """

    topic: Topic
    #: Who writes the topic and answers for what is on it.
    owner: str
    #: The ``schema`` values its messages carry, oldest first (empty: not exnet events).
    schemas: tuple[str, ...]
    #: What the message key is.
    key: str
    #: Recommended Kafka topic configuration (name, value).
    config: tuple[tuple[str, str], ...]
    description: str
    #: How a new schema version may differ from the previous one: ``backward``
    #: (consumers of the new version read every older one), or ``none``.
    compatibility: str = "backward"
    #: Partitions, when the topic needs a fixed number (None: ``EXNET_PARTITIONS``).
    partitions: int | None = None


def topic_name(topic: Topic, prefix: str) -> str:
    """The physical Kafka topic name of ``topic`` under ``prefix``."""
    return f"{prefix}{topic.value}"
