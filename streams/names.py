"""The stream processors' names others need: consumer group, tables, changelog topics.

Free of Faust, so that what only names the stream processors (the lag monitor,
``exnet init``, the ClickHouse writer's process) does not load it.
"""

from __future__ import annotations

from typing import Final

from contracts.topics import Topic
from exnet.settings import Settings

__all__ = [
    "CONTRIBUTIONS_TABLE",
    "DEDUP_TABLE",
    "PARTICIPANTS_TABLE",
    "TABLE_SOURCES",
    "changelog_topic",
    "changelog_topics",
    "streams_group",
]

#: Name of the dedup table; its changelog topic is ``<app id>-dedup-changelog``.
DEDUP_TABLE: Final = "dedup"
#: The aggregate stage's table: participant_id -> what the views need of their events.
PARTICIPANTS_TABLE: Final = "participants"
#: The rollup stage's table: participant_id -> their latest contribution.
CONTRIBUTIONS_TABLE: Final = "contributions"
#: Each table -> the topic its agent reads (its changelog has that topic's partitions).
TABLE_SOURCES: Final[dict[str, Topic]] = {
    DEDUP_TABLE: Topic.VALIDATED,
    PARTICIPANTS_TABLE: Topic.ACCEPTED,
    CONTRIBUTIONS_TABLE: Topic.CONTRIBUTIONS,
}


def streams_group(settings: Settings) -> str:
    """The stream workers' consumer group (also the Faust app id)."""
    return f"{settings.topic_prefix}{settings.consumer_group}-streams"


def changelog_topic(settings: Settings, table: str = DEDUP_TABLE) -> str:
    """The changelog topic of ``table`` (Faust's name: ``<app id>-<table>-changelog``)."""
    return f"{streams_group(settings)}-{table}-changelog"


def changelog_topics(settings: Settings) -> dict[str, Topic]:
    """Every table's changelog topic -> the topic the table's agent reads."""
    return {changelog_topic(settings, table): source for table, source in TABLE_SOURCES.items()}
