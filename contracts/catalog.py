"""The topic registry: every topic exnet knows, its owner, what it carries, how to configure it.

Exported for sites and operators by ``exnet contracts export`` (``topics.json``)
next to the JSON Schemas of the events, like sentry-kafka-schemas' topic files.
"""

from __future__ import annotations

from typing import Final

from contracts import headers as H
from contracts.topics import Topic, TopicSpec
from contracts.validation import EVENT_MODELS

__all__ = ["TOPICS", "topic_spec"]

_DAY_MS: Final = 24 * 3600 * 1000
_MIB: Final = 1024 * 1024

#: Sites' events: kept a month for replays; ClickHouse is the system of record.
_INPUT_CONFIG: Final = (
    ("cleanup.policy", "delete"),
    ("retention.ms", str(30 * _DAY_MS)),
    # Above the 64 KiB contract limit, so that too-large messages reach the
    # validator and are rejected with a reason rather than refused by the broker.
    ("max.message.bytes", str(_MIB)),
)
#: Rejections: kept long enough for sites to fix and resend; they carry the original bytes.
_DEADLETTER_CONFIG: Final = (
    ("cleanup.policy", "delete"),
    ("retention.ms", str(90 * _DAY_MS)),
    ("max.message.bytes", str(2 * _MIB)),
)
#: Internal hops: a week covers any outage of the downstream stage.
_VALIDATED_CONFIG: Final = (
    ("cleanup.policy", "delete"),
    ("retention.ms", str(7 * _DAY_MS)),
    ("max.message.bytes", str(2 * _MIB)),
)
_ACCEPTED_CONFIG: Final = (
    ("cleanup.policy", "delete"),
    ("retention.ms", str(7 * _DAY_MS)),
    ("max.message.bytes", str(_MIB)),
)

#: The views' rows: compacted, the latest row per key is all a reader needs.
_VIEWS_CONFIG: Final = (
    ("cleanup.policy", "compact"),
    ("max.message.bytes", str(_MIB)),
)

_ALL_SCHEMAS: Final = tuple(model.SCHEMA for models in EVENT_MODELS.values() for model in models)


def _input(topic: Topic, what: str) -> TopicSpec:
    return TopicSpec(
        topic=topic,
        owner="clinical sites (producers); exnet validates",
        schemas=tuple(model.SCHEMA for model in EVENT_MODELS[topic]),
        key="participant_id as UTF-8 bytes (all of a participant's events share a partition)",
        config=_INPUT_CONFIG,
        description=(
            f"{what}. One JSON event per message, at most 64 KiB, checked against the "
            "contract's JSON Schema and the network registry; failures go to the dead "
            "letter topic with a reason."
        ),
        compatibility="backward",
    )


#: Every topic of :class:`Topic`, in the order data flows.
TOPICS: Final[tuple[TopicSpec, ...]] = (
    _input(Topic.ENROLLMENT, "Participants screened, consented, randomized, withdrawn, completed"),
    _input(Topic.SESSION, "Exercise sessions attended, missed or cancelled"),
    _input(Topic.ASSAY, "One analyte measured in one specimen by a node's lab"),
    _input(Topic.ASSESSMENT, "Depression ratings (PHQ9, HAMD17, MADRS, BDI2)"),
    TopicSpec(
        topic=Topic.VALIDATED,
        owner="exnet stream workers (validate stage)",
        schemas=_ALL_SCHEMAS,
        key="event_id; partition = CRC-32 of event_id (every copy of an event meets the "
        "dedup state in one partition)",
        config=_VALIDATED_CONFIG,
        description=(
            "Internal: one message per validated event. Value: its fact-table row as JSON "
            "(canonical event, canonical assay units, source topic/partition/offset); "
            "headers exnet-route (content digest, type, participant, node, site, "
            "occurred_at, origin, publish time) and exnet-original (the site's bytes); "
            "read by the dedup stage."
        ),
    ),
    TopicSpec(
        topic=Topic.ACCEPTED,
        owner="exnet stream workers (dedup stage)",
        schemas=_ALL_SCHEMAS,
        key="participant_id (all of a participant's events in one partition)",
        config=_ACCEPTED_CONFIG,
        description=(
            "Internal: one message per deduplicated event (once per event_id, again after "
            "a replay): the fact-table row as JSON and the exnet-route header, as "
            "exnet.validated carried them; read by the ClickHouse sink (JSONEachRow)."
        ),
    ),
    TopicSpec(
        topic=Topic.CONTRIBUTIONS,
        owner="exnet stream workers (aggregate stage)",
        schemas=(),
        key="participant_id",
        config=_ACCEPTED_CONFIG,
        description=(
            "Internal: a participant's whole contribution to the views (JSON, with a "
            "version that grows with the participant's events), sent whenever it changes; "
            "read by the rollup stage, which keeps the latest per participant. One "
            "partition, so that one rollup sees the whole network."
        ),
        compatibility="none",
        partitions=1,
    ),
    TopicSpec(
        topic=Topic.VIEWS,
        owner="exnet stream workers (rollup stage)",
        schemas=(),
        key="the view table and the row's key, '|'-separated (e.g. node_summary|N01)",
        config=_VIEWS_CONFIG,
        description=(
            f"The stream-written views' rows: one JSON object per row, every column of "
            f"the table named by the {H.TABLE} header (version and is_deleted included); "
            "read by the ClickHouse sink into node_summary, network_summary, arm_summary "
            "and node_daily (ReplacingMergeTree: the highest version of a key wins)."
        ),
        compatibility="none",
    ),
    TopicSpec(
        topic=Topic.DEADLETTER,
        owner="exnet stream workers (validate and dedup stages)",
        schemas=(),
        key="the original message key",
        config=_DEADLETTER_CONFIG,
        description=(
            "The original bytes of every rejected message, with headers "
            f"{H.REASON} (a SPEC §2 reason code), {H.DETAIL} (JSON naming every failing "
            f"field path), {H.SOURCE_TOPIC}, {H.SOURCE_PARTITION} and {H.SOURCE_OFFSET}; "
            "read by the ClickHouse sink into rejected_events."
        ),
        # The values are whatever sites sent: no schema to evolve.
        compatibility="none",
    ),
)


def topic_spec(topic: Topic) -> TopicSpec:
    """The registry's entry for ``topic``."""
    return _BY_TOPIC[topic]


_BY_TOPIC: Final = {spec.topic: spec for spec in TOPICS}
