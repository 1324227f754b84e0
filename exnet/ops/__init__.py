"""Tools for operators and analysts: ``exnet status``, ``exnet rejects``, ``exnet report``.

All of them read ClickHouse read-only through :func:`sinks.query.run_query`
(so they work while ``exnet up`` holds the embedded database) and Kafka with
plain metadata and offset requests (no group membership).
"""

from exnet.ops.rejects import (
    RejectFilter,
    RejectsResult,
    find_rejects,
    parse_moment,
    rejects_as_dict,
    render_rejects,
    write_worklist,
)
from exnet.ops.report import build_report, collect_report, render_report, write_report
from exnet.ops.status import StatusReport, collect_status, render_status

__all__ = [
    "RejectFilter",
    "RejectsResult",
    "StatusReport",
    "build_report",
    "collect_report",
    "collect_status",
    "find_rejects",
    "parse_moment",
    "render_rejects",
    "render_report",
    "render_status",
    "rejects_as_dict",
    "write_report",
    "write_worklist",
]
