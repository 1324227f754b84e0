"""The stream processors: a Faust app that validates and deduplicates the sites' events.

Built by :func:`create_app` from settings; the application package (``exnet``)
decides which processes run it. Pure stages (:mod:`streams.dedup`,
:mod:`streams.guard`) test without a broker.
"""

from streams.dedup import Decision, Seen, SeenTable, decide, remember
from streams.guard import InvalidRatioExceeded, InvalidRatioGuard
from streams.names import DEDUP_TABLE, changelog_topic, streams_group

# The Faust app itself (``streams.app``: create_app, WorkerFailed) is imported where a
# stream worker runs, not here: the ClickHouse writer's process names the stream
# processors but never runs them, and Faust would cost it 20 MB.

__all__ = [
    "DEDUP_TABLE",
    "Decision",
    "InvalidRatioExceeded",
    "InvalidRatioGuard",
    "Seen",
    "SeenTable",
    "changelog_topic",
    "decide",
    "remember",
    "streams_group",
]
