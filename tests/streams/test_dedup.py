"""The dedup rule: new, replay, duplicate, conflict."""

from __future__ import annotations

import pytest

from exnet.streams.dedup import Decision, Seen, decide

FIRST = Seen("f" * 32, "exnet.session", 2, 40)


def test_first_sight_is_new() -> None:
    assert decide(None, FIRST) is Decision.NEW


def test_the_same_source_message_again_is_a_replay_not_a_duplicate() -> None:
    assert decide(FIRST, Seen("f" * 32, "exnet.session", 2, 40)) is Decision.REPLAY


@pytest.mark.parametrize(
    "other",
    [
        Seen("f" * 32, "exnet.session", 2, 41),
        Seen("f" * 32, "exnet.session", 3, 40),
        Seen("f" * 32, "exnet.assay", 2, 40),
    ],
)
def test_another_message_with_the_same_content_is_a_duplicate(other: Seen) -> None:
    assert decide(FIRST, other) is Decision.DUPLICATE


def test_another_message_with_other_content_is_a_conflict() -> None:
    assert decide(FIRST, Seen("e" * 32, "exnet.session", 2, 99)) is Decision.CONFLICT


def test_a_replayed_conflict_stays_a_conflict() -> None:
    # the table keeps the first accepted copy; a conflict never replaces it
    assert decide(FIRST, Seen("e" * 32, "exnet.session", 2, 99)) is Decision.CONFLICT


def test_seen_round_trips_through_its_table_encoding() -> None:
    seen = Seen("0123456789abcdef" * 2, "pre.fix.exnet.session", 5, 123456789)
    assert Seen.decode(seen.encode()) == seen
