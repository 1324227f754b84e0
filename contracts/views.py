"""Column names of the analysts' views (SPEC §4), for code that reads them.

The views themselves are defined by the migrations (which, once released, never
change); these names are what readers — the demo, the simulator's
expectations, the tests — agree on.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ARM_COLUMNS", "SUMMARY_COLUMNS"]

#: The figures of ``node_summary`` and ``network_summary`` (besides keys and updated_at).
SUMMARY_COLUMNS: Final = (
    "screened",
    "consented",
    "randomized",
    "withdrawn",
    "completed",
    "sessions_attended",
    "sessions_missed",
    "sessions_cancelled",
    "exercise_minutes",
    "adverse_events",
    "specimens",
    "assays",
    "assessments",
)

#: The figures of ``arm_summary`` (besides its keys and updated_at).
ARM_COLUMNS: Final = (
    "randomized",
    "sessions_attended",
    "exercise_minutes",
    "responders",
    "remitters",
)
