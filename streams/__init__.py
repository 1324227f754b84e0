"""The stream processors: a Faust app that validates and deduplicates the sites' events
and aggregates the accepted ones into the per-node and network-wide views.

Built by :func:`create_app` from settings; the application package (``exnet``)
decides which processes run it. The stages are pure (:mod:`streams.validate`,
:mod:`streams.dedup`, :mod:`streams.aggregate`, :mod:`streams.rollup`, and the
dead-letter guard, :mod:`streams.guard`) and test without a broker.
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
