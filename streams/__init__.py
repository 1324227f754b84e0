"""The stream processors: a Faust app that validates and deduplicates the sites' events.

Built by :func:`create_app` from settings; the application package (``exnet``)
decides which processes run it. Pure stages (:mod:`streams.dedup`,
:mod:`streams.guard`) test without a broker.
"""

from streams.app import DEDUP_TABLE, WorkerFailed, changelog_topic, create_app, streams_group
from streams.dedup import Decision, Seen, SeenTable, decide, remember
from streams.guard import InvalidRatioExceeded, InvalidRatioGuard

__all__ = [
    "DEDUP_TABLE",
    "Decision",
    "InvalidRatioExceeded",
    "InvalidRatioGuard",
    "Seen",
    "SeenTable",
    "WorkerFailed",
    "changelog_topic",
    "create_app",
    "decide",
    "remember",
    "streams_group",
]
