"""Right comments on the columns named ``randomized`` and ``randomized_at``.

``m0006`` gave every view's ``randomized`` column the meaning of
``arm_summary``'s ("participants randomized to the arm, by their latest
randomization"), though ``site_summary``, ``node_facts`` and the summaries'
references count the distinct participants that reached status randomized;
and ``participant_arms.randomized_at`` read "null if none", though that view
holds randomized participants only and the column is never null. Comments
only: no data changes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["statements"]

_REACHED: Final = "distinct participants that reached status randomized"
#: view -> column -> its comment.
_COMMENTS: Final[dict[str, dict[str, str]]] = {
    "site_summary": {"randomized": _REACHED},
    "node_facts": {"randomized": _REACHED},
    "node_summary_reference": {"randomized": _REACHED},
    "network_summary_reference": {"randomized": _REACHED},
    "participant_arms": {"randomized_at": "their first randomization (occurred_at, UTC)"},
}


def statements(database: str) -> list[str]:
    return [
        f"ALTER TABLE {database}.{view} COMMENT COLUMN {column} '{comment}'"
        for view, columns in _COMMENTS.items()
        for column, comment in columns.items()
    ]
