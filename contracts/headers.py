"""Kafka header names exnet writes (SPEC §2 names the dead-letter ones)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DETAIL",
    "EVENT_ID",
    "ORIGINAL",
    "ORIGINAL_LENGTH",
    "ORIGINAL_SHA256",
    "REASON",
    "REJECTED_AT",
    "ROUTE",
    "SOURCE_OFFSET",
    "SOURCE_PARTITION",
    "SOURCE_TIMESTAMP",
    "SOURCE_TOPIC",
    "TABLE",
]

# -- on every dead-letter message (SPEC §2)
REASON: Final = "exnet-reason"
DETAIL: Final = "exnet-detail"  # JSON: {"reason", "message", "errors": [{"path","type","message"}]}
SOURCE_TOPIC: Final = "exnet-source-topic"
SOURCE_PARTITION: Final = "exnet-source-partition"
SOURCE_OFFSET: Final = "exnet-source-offset"
# -- added by exnet
#: Kafka timestamp (ms) of the site's original message: for end-to-end latency.
SOURCE_TIMESTAMP: Final = "exnet-source-timestamp"
#: ISO-8601 UTC time the stream processor rejected the message.
REJECTED_AT: Final = "exnet-rejected-at"
#: The message's event_id, when it could be read.
EVENT_ID: Final = "exnet-event-id"
#: On a dead-letter message whose original was cut to DEADLETTER_MAX_ORIGINAL bytes (a
#: ``too_large`` message Kafka stored compressed): the original's length in bytes and
#: its SHA-256 (hex), so that ``rejected_events.payload_sha256`` stays the original's.
ORIGINAL_LENGTH: Final = "exnet-original-length"
ORIGINAL_SHA256: Final = "exnet-original-sha256"
#: What the stages after validation need of an event, in one header (internal topics
#: exnet.validated and exnet.accepted): ``contracts.wire.Route``.
ROUTE: Final = "exnet-route"
#: The site's original bytes (internal topic exnet.validated; needed if it proves a conflict).
ORIGINAL: Final = "exnet-original"
#: The ClickHouse view table a message of exnet.views is a row of.
TABLE: Final = "exnet-table"
