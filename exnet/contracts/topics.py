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
    #: Internal: deduplicated, accepted events, read by the ClickHouse sink.
    ACCEPTED = "exnet.accepted"

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
    """What the topic registry says of one topic (exported for sites and operators)."""

    topic: Topic
    owner: str
    schemas: tuple[str, ...]
    key: str
    config: tuple[tuple[str, str], ...]
    description: str


def topic_name(topic: Topic, prefix: str) -> str:
    """The physical Kafka topic name of ``topic`` under ``prefix``."""
    return f"{prefix}{topic.value}"
