"""The dedup rule: new, replay, duplicate, conflict; and what the table remembers."""

from __future__ import annotations

import pytest

from contracts import Origin
from streams.dedup import Decision, Seen, decide, remember

FIRST = Seen("f" * 32, Origin("exnet.session", 2, 40))


def test_first_sight_is_new() -> None:
    assert decide(None, FIRST) is Decision.NEW


def test_the_same_source_message_again_is_a_replay_not_a_duplicate() -> None:
    assert decide(FIRST, Seen("f" * 32, Origin("exnet.session", 2, 40))) is Decision.REPLAY


@pytest.mark.parametrize(
    "other",
    [
        Origin("exnet.session", 2, 41),
        Origin("exnet.session", 3, 40),
        Origin("exnet.assay", 2, 40),
    ],
)
def test_another_message_with_the_same_content_is_a_duplicate(other: Origin) -> None:
    assert decide(FIRST, Seen("f" * 32, other)) is Decision.DUPLICATE


def test_another_message_with_other_content_is_a_conflict() -> None:
    assert decide(FIRST, Seen("e" * 32, Origin("exnet.session", 2, 99))) is Decision.CONFLICT


def test_only_the_first_accepted_copy_is_remembered() -> None:
    table: dict[bytes, bytes] = {}
    conflicting = Seen("e" * 32, Origin("exnet.session", 2, 99))
    duplicate = Seen("f" * 32, Origin("exnet.assay", 0, 7))
    assert remember(table, b"id", FIRST) == (Decision.NEW, None)
    # A conflict read again (a replay of its source message) stays a conflict: the
    # table still holds the first copy, not the conflicting one.
    assert remember(table, b"id", conflicting) == (Decision.CONFLICT, FIRST)
    assert remember(table, b"id", conflicting) == (Decision.CONFLICT, FIRST)
    assert remember(table, b"id", duplicate) == (Decision.DUPLICATE, FIRST)
    assert remember(table, b"id", duplicate) == (Decision.DUPLICATE, FIRST)
    assert table == {b"id": FIRST.encode()}
    # ... so the first copy's own replay is still told from the others.
    assert remember(table, b"id", FIRST) == (Decision.REPLAY, FIRST)


def test_seen_round_trips_through_its_table_encoding() -> None:
    seen = Seen("0123456789abcdef" * 2, Origin("pre.fix.exnet.session", 5, 123456789))
    assert Seen.decode(seen.encode()) == seen
